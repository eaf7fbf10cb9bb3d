"""`tl` on bad input: a one-line error naming the command and the value, exit 1 (or 2 for a bad flag),
never a traceback (issue 13, section 5, item 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tl_core.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _spec(tmp_path: Path, name: str = "s.yaml", **changes: Any) -> str:
    raw = yaml.safe_load((CONFIGS / "support-tickets.yaml").read_text())
    raw.update(store=(tmp_path / "store").as_uri(), registry=None)
    raw["data"]["root"] = (tmp_path / "data").as_uri()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _bad_flag(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_validate_spec_checks_the_backbone_this_machine_would_load(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate-spec", _spec(tmp_path)]) == 0
    assert "OK (model 'support-tickets'" in capsys.readouterr().out
    missing = _spec(tmp_path, "p.yaml", backbone__package=None, backbone__path=str(tmp_path / "no-weights"))
    err = _fails(["validate-spec", missing], capsys)
    assert err == (f"tl validate-spec: error: {missing}: the spec is valid but cannot run on this machine:\n"
                   f"  backbone.path: {str(tmp_path / 'no-weights')!r} does not exist (weights='local'); point it "
                   "at the weights file or folder\n")
    no_pkg = _spec(tmp_path, "k.yaml", backbone__package="not_installed_weights")
    assert "backbone.package: 'not_installed_weights' is not installed" in _fails(["validate-spec", no_pkg], capsys)
    bad_uri = _spec(tmp_path, "u.yaml", backbone__weights="store", backbone__package=None,
                    backbone__path="s3://weights-bucket")
    assert "weights='store' needs backbone.path to be s3://bucket/key" in _fails(["validate-spec", bad_uri], capsys)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"store": "file://"}, "store: must name a directory: file:///abs/path or file://rel/path, got 'file://'"),
        ({"data__window_days": 1e9}, "data.window_days: must be a whole number (e.g. 14, not true or 14.0), "
                                     "got 1000000000.0"),
        ({"data__window_days": 10**9}, "data.window_days: must be at most 3660 days (10 years), got 1000000000"),
    ],
)
def test_spec_values_that_used_to_crash_a_step(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               changes: dict[str, Any], message: str) -> None:
    path = _spec(tmp_path, **changes)
    err = _fails(["snapshot", "--spec", path, "--run", "r1", "--date", "2026-11-01"], capsys)
    assert err.startswith(f"tl snapshot: error: {path}: invalid model spec:\n  {message}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["snapshot", "--run", "..", "--date", "2026-11-01"],
         "tl snapshot: error: argument --run: run id '..' must not contain '/', '\\', '..' or control characters"),
        (["split", "--run", "a/b"], "tl split: error: argument --run: run id 'a/b' must not contain '/'"),
        (["audit", "--run", "r" * 201], "tl audit: error: argument --run: run id is 201 bytes long (UTF-8), at most"),
        (["snapshot", "--run", "r1", "--date", "2026-02-30"],
         "tl snapshot: error: argument --date: expected a calendar date YYYY-MM-DD, got '2026-02-30'"),
        (["snapshot", "--run", "r1", "--date", "yesterday"],
         "tl snapshot: error: argument --date: expected a calendar date YYYY-MM-DD, got 'yesterday'"),
        (["demo-data", "--end-date", "2026-13-01"],
         "tl demo-data: error: argument --end-date: expected a calendar date YYYY-MM-DD, got '2026-13-01'"),
        (["demo-data", "--end-date", "2026-11-01", "--days", "0"],
         "tl demo-data: error: argument --days: expected an integer >= 1, got '0'"),
        (["demo-data", "--end-date", "2026-11-01", "--drift-from", "20261101"],
         "tl demo-data: error: argument --drift-from: expected a calendar date YYYY-MM-DD, got '20261101'"),
        (["pretrain-source", "--epochs", "-1"],
         "tl pretrain-source: error: argument --epochs: expected an integer >= 1, got '-1'"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                 message: str) -> None:
    err = _bad_flag([argv[0], "--spec", _spec(tmp_path), *argv[1:]], capsys)
    assert message in err
    assert not (tmp_path / "store").exists()


def test_unexpected_value_and_os_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _spec(tmp_path)
    argv = ["demo-data", "--spec", path, "--end-date", "2026-11-01", "--days", "1", "--seed", "-1"]
    err = _fails(argv, capsys)  # numpy refuses the seed
    assert err == ("tl demo-data: error: ValueError: expected non-negative integer "
                   "(run with -v for the traceback)\n")
    assert main(["-v", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.endswith("tl demo-data: error: ValueError: expected non-negative integer\n")

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    blocked = _spec(tmp_path, "b.yaml", store=(a_file / "store").as_uri())
    err = _fails(["snapshot", "--spec", blocked, "--run", "r1", "--date", "2026-11-01"], capsys)
    assert err.startswith("tl snapshot: error: NotADirectoryError: [Errno 20] Not a directory: ")
    assert err.count("\n") == 1

    err = _fails(["train", "--spec", path, "--run", "r1", "--strategy", "magic"], capsys)
    assert err.startswith("tl train: error: ValueError: --strategy 'magic' is not a transfer strategy: expected one "
                          "of ('frozen', 'lora', 'partial', 'full', 'scratch')")


def test_the_installed_command_prints_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cases = [(["snapshot", "--spec", _spec(tmp_path), "--run", "..", "--date", "2026-11-01"], 2, "argument --run"),
             (["validate-spec", _spec(tmp_path, "w.yaml", data__window_days=True)], 1,
              "data.window_days: must be a whole number (e.g. 14, not true or 14.0), got True")]
    for argv, code, message in cases:
        proc = subprocess.run([sys.executable, "-m", "tl_core.cli", *argv], capture_output=True, text=True,
                              timeout=120, env=env, check=False)
        assert proc.returncode == code, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr


def test_plan_prints_the_planned_models_and_names_a_strategy_the_spec_lacks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(tmp_path, train__strategies=["frozen", "lora", "full"])
    assert main(["plan", "--spec", spec, "--run", "r1", "--strategy", "full", "--strategy", "frozen"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("run r1: frozen ['frozen'], fine-tuned ['full'] (") and out.rstrip().endswith("plan.json)")
    assert main(["plan", "--spec", spec, "--run", "r2", "--json"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["tuned"] == ["lora", "full"]
    err = _fails(["plan", "--spec", spec, "--run", "r3", "--strategy", "partial"], capsys)
    assert "params.strategies: 'partial' is not trained by spec 'support-tickets': expected names from " \
           "['frozen', 'lora', 'full']" in err


def test_validate_spec_warns_about_relative_store_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 30: `file://.tl/store` names another folder from every working directory ("champion none" elsewhere)."""
    import json

    monkeypatch.chdir(tmp_path)
    absolute = _spec(tmp_path, "abs.yaml", monitor={"scoring_root": (tmp_path / "scoring").as_uri()})
    assert main(["validate-spec", absolute, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warnings"] == [] and "warning" not in err
    relative = _spec(tmp_path, "rel.yaml", store="file://.tl/store", monitor={"scoring_root": "file://scoring"})
    assert main(["validate-spec", relative]) == 0  # valid, with a warning naming each relative field
    err = capsys.readouterr().err
    assert (f"{relative}: warning: store: file://.tl/store is relative: it resolves against the working directory "
            f"(here {(tmp_path / '.tl' / 'store').as_uri()})") in err
    assert "monitor.scoring_root: file://scoring is relative" in err and "data.root" not in err
