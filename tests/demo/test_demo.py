"""`make demo` checks its own story: run 1 promotes v0001, run 2 is gated against it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tl_core.demo import local_airflow
from tl_core.demo.local_airflow import LocalAirflow
from tl_core.demo.run import PACKAGED_SPEC, check_backfill, check_story, demo_spec, main, packaged_spec_text
from tl_core.errors import DemoSetupError

ROOT = Path(__file__).resolve().parents[2]

TABLE = "| candidate minus | metric | slice |\n| --- | --- | --- |\n| champion | macro_f1 | overall |"


def _run(champion: str | None, promote: str = "success", passed: bool = True, against: str | None = None,
         table: str = "", state: str = "success") -> dict[str, Any]:
    return {"run_id": "r", "state": state, "champion": champion,
            "tasks": {"approval": "success", "promote": promote},
            "decision": {"passed": passed, "champion_version": against, "summary_markdown": table, "reasons": []}}


def test_the_story_holds() -> None:
    assert check_story(_run("v0001"), _run("v0001", promote="skipped", passed=False, against="v0001",
                                           table=TABLE)) == []


def test_a_lost_first_promotion_is_named() -> None:
    problems = check_story({**_run(None, promote="upstream_failed"), "tasks": {"approval": "failed",
                                                                              "promote": "upstream_failed"}}, None)
    assert problems == ["run 1 did not promote v0001: champion None, approval 'failed', promote 'upstream_failed'"]


def test_a_second_run_without_champion_rows_is_named() -> None:
    problems = check_story(_run("v0001"), _run("v0001", against=None, table="| majority-class | macro_f1 |"))
    assert problems == ["run 2 was not gated against v0001: champion_version None, no champion rows in its gate "
                        "table"]
    assert check_story(_run("v0001"), {**_run("v0001"), "decision": None})[0].startswith(
        "run 2 (r) wrote no gate decision")


def _backfill(shadow: tuple[bool, ...] = (True, True), after: str = "v0001", states: tuple[str, ...] = (
        "success", "success")) -> dict[str, Any]:
    runs = {f"backfill__2026-11-0{i + 2}": s for i, s in enumerate(states)}
    ledger = [{"action": "register", "shadow": sh, "run_id": r, "version": f"v000{i + 2}"}
              for i, (r, sh) in enumerate(zip(runs, shadow, strict=False))]
    return {"runs": runs, "tasks": {r: {"approval": "skipped", "shadow_recorded": "success"} for r in runs},
            "ledger": ledger, "champion_before": "v0001", "champion_after": after}


def test_the_backfill_story_holds() -> None:
    assert check_backfill(_backfill()) == []


def test_a_backfill_that_registered_no_shadow_versions_or_moved_the_champion_is_named() -> None:
    rejected = _backfill(shadow=(True,))
    rejected["ledger"].append({"action": "reject", "run_id": "backfill__2026-11-03", "reason": "gate FAIL: x"})
    assert check_backfill(rejected) == ["expected 2 shadow versions registered, got 1 (rejected: ['gate FAIL: x'])"]
    assert check_backfill(_backfill(shadow=(False, True))) == ["expected 2 shadow versions registered, got 1"]
    moved = check_backfill(_backfill(after="v0003"))
    assert moved == ["the backfill changed the champion: v0001 -> v0003 (0 promote records)"]
    failed = check_backfill(_backfill(states=("success", "failed"), shadow=(True,)))
    assert failed[0] == "backfill runs did not succeed: {'backfill__2026-11-03': 'failed'}"
    one = _backfill(states=("success",), shadow=(True,))
    assert "expected 2 backfill runs, found ['backfill__2026-11-02']" in check_backfill(one)
    approved = _backfill()
    approved["tasks"]["backfill__2026-11-02"]["approval"] = "success"
    assert check_backfill(approved) == ["backfill run backfill__2026-11-02 reached the approval (success)"]


def test_the_packaged_demo_spec_is_the_example_in_configs() -> None:
    """The demo ships its spec as package data (it must run from an installed package); configs/ stays the copy
    users read. The two must not drift apart, and pyproject.toml must ship the packaged one."""
    example = (ROOT / "configs" / "support-tickets.yaml").read_text()
    assert packaged_spec_text() == example, f"tl_core/demo/{PACKAGED_SPEC} differs from configs/support-tickets.yaml"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(Path(PACKAGED_SPEC).match(p) for p in patterns["tl_core.demo"])


def test_the_demo_spec_is_the_packaged_one_on_the_demo_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TL_DEMO_EPOCHS", "2")
    raw = yaml.safe_load(demo_spec(tmp_path).read_text())
    example = yaml.safe_load(packaged_spec_text())
    assert raw["data"]["root"] == (tmp_path / "data").as_uri() and raw["store"] == (tmp_path / "store").as_uri()
    # the periodic schedule is kept: Airflow refuses backfills of a DAG without one
    assert raw["schedule"] == example["schedule"] == "@daily" and raw["train"]["epochs"] == 2
    assert {k: v for k, v in raw.items() if k not in ("data", "store", "train")} == {
        k: v for k, v in example.items() if k not in ("data", "store", "train")}


def test_airflow_folders_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plugins = tmp_path / "my-plugins"
    plugins.mkdir()
    (plugins / "tl_plugin.py").write_text("")
    monkeypatch.setenv("TL_PLUGINS_DIR", str(plugins))
    monkeypatch.delenv("TL_DAGS_DIR", raising=False)
    af = LocalAirflow(tmp_path / "airflow", tmp_path / "configs")
    assert af.env["AIRFLOW__CORE__PLUGINS_FOLDER"] == str(plugins.resolve())
    assert af.env["AIRFLOW__CORE__DAGS_FOLDER"] == str(ROOT / "dags")  # the source checkout's, as fallback


def test_a_missing_airflow_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TL_DAGS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DemoSetupError, match=r"no Airflow dags folder: TL_DAGS_DIR=.*nowhere \(expected "
                                             r".*nowhere/tl_dags.py\); set TL_DAGS_DIR to the dags/ folder"):
        LocalAirflow(tmp_path / "airflow", tmp_path / "configs")
    # an installed package, no checkout around it and no variable: says both
    monkeypatch.delenv("TL_DAGS_DIR")
    monkeypatch.delenv("TL_PLUGINS_DIR", raising=False)
    monkeypatch.setattr(local_airflow, "REPO", tmp_path / "site-packages")
    with pytest.raises(DemoSetupError, match=r"no Airflow dags folder: TL_DAGS_DIR is not set and there is no source "
                                             r"checkout at .*site-packages"):
        LocalAirflow(tmp_path / "airflow", tmp_path / "configs")


def test_the_demo_fails_naming_a_missing_dags_folder_before_generating_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TL_DEMO_ROOT", str(tmp_path / "demo"))
    monkeypatch.setenv("TL_DAGS_DIR", str(tmp_path / "nowhere"))
    assert main() == 1
    assert "make demo: FAILED: no Airflow dags folder: TL_DAGS_DIR=" in capsys.readouterr().err
    assert (tmp_path / "demo" / "demo-configs" / "support-tickets.yaml").is_file()
    assert not (tmp_path / "demo" / "data").exists()


def test_demo_knobs_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TL_DEMO_STRATEGIES", "frozen")
    assert yaml.safe_load(demo_spec(tmp_path).read_text())["train"]["strategies"] == ["frozen"]
    monkeypatch.setenv("TL_DEMO_STRATEGIES", "frozen,full")
    with pytest.raises(DemoSetupError, match=r"TL_DEMO_STRATEGIES names strategies the spec does not train: "
                                             r"\['full'\] \(spec: \['frozen', 'lora'\]\)"):
        demo_spec(tmp_path)
    monkeypatch.delenv("TL_DEMO_STRATEGIES")
    monkeypatch.setenv("TL_DEMO_EPOCHS", "0")
    with pytest.raises(DemoSetupError, match=r"TL_DEMO_EPOCHS must be a whole number >= 1, got '0'"):
        demo_spec(tmp_path)
