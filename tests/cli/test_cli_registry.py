"""`tl registry list|show|history|register|promote|rollback|gc`: --json on each, a readable history table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from registry_fixtures import MODEL, evidence_of, fake_run, make_spec
from tl_core.cli import main as tl_main
from tl_core.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Registry]:
    """A spec file whose store holds two runs; the registry lives in the same (file) store."""
    for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("tl_core.registry.CACHE_DIR", tmp_path / "cache")
    store_uri = (tmp_path / "store").as_uri()
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(make_spec(store_uri).model_dump(mode="json")))
    fake_run(store_uri, "r1")
    fake_run(store_uri, "r2", seed=1, minimal=True)
    return spec_file, Registry(store_uri, MODEL, cache_dir=tmp_path / "cache")


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert tl_main(["registry", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_full_cycle_with_json(env: tuple[Path, Registry], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec_file, reg = env
    spec = ("--spec", str(spec_file))
    assert run_json(capsys, "register", "--run", "r1", "--actor", "ci", *spec) == {"version": "v0001",
                                                                                   "run_id": "r1"}
    assert run_json(capsys, "register", "--run", "r2", *spec)["version"] == "v0002"  # type: ignore[index]
    shown = run_json(capsys, "show", "v0001", *spec)
    assert shown == reg.show("v0001")
    approval = tmp_path / "approval.json"
    approval.write_text(json.dumps({"approver": "alice", "comment": "looks good",
                                    "evidence_hash": evidence_of("r1")}))
    promoted = run_json(capsys, "promote", "v0001", "--expect-champion", "none", "--approval", str(approval),
                        "--actor", "alice", *spec)
    assert promoted["version"] == "v0001" and promoted["previous"] is None  # type: ignore[index]
    assert (promoted["evidence_hash"], promoted["reason"]) == (evidence_of("r1"), "looks good")  # type: ignore
    run_json(capsys, "promote", "v0002", "--expect-champion", "v0001", "--approval", str(approval),
             "--evidence-hash", evidence_of("r2"), "--reason", "newer", "--actor", "bob", *spec)
    rolled = run_json(capsys, "rollback", "--reason", "latency regression", "--actor", "carol", *spec)
    assert (rolled["version"], rolled["previous"], rolled["actor"]) == ("v0001", "v0002", "carol")  # type: ignore
    rows = run_json(capsys, "list", *spec)
    assert [(r["version"], r["champion"], r["run_id"]) for r in rows] == [  # type: ignore[union-attr,index]
        ("v0001", True, "r1"), ("v0002", False, "r2")]
    history = run_json(capsys, "history", *spec)
    assert [r["action"] for r in history] == ["register", "register", "promote", "promote",  # type: ignore
                                              "rollback"]
    assert history == reg.history()
    plan = run_json(capsys, "gc", "--keep", "1", "--dry-run", *spec)
    assert plan == {"would_delete": ["v0002"], "kept": ["v0001"]}
    assert run_json(capsys, "gc", "--keep", "1", *spec) == {"deleted": ["v0002"], "kept": ["v0001"]}
    assert reg.list_versions() == ["v0001"]


def test_cli_history_table_and_registry_uri(env: tuple[Path, Registry], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec_file, reg = env
    v1 = reg.register(fake_run(reg.store.uri, "r1"))
    reg.promote(v1, None, {"approver": "alice"}, "alice", "first model in production", evidence_of("r1"))
    reg.record_rejection("r2", ["gate FAIL: accuracy"], "gate")
    # By model name and registry URI, without a spec (flag or $TL_REGISTRY_URI).
    assert tl_main(["registry", "history", MODEL, "--registry", reg.store.uri]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["seq", "time", "action", "version", "previous", "actor", "evidence", "reason"]
    assert set(table[1]) == {"-"}
    rows = [line.split() for line in table[2:]]
    assert [(r[0], r[2], r[3]) for r in rows[:2]] == [("1", "register", v1), ("2", "promote", v1)]
    assert rows[1][4:7] == ["alice", evidence_of("r1")[:12], "first"] and "first model in production" in table[3]
    assert rows[2][2] == "reject" and "gate FAIL: accuracy (run r2)" in table[4]
    monkeypatch.setenv("TL_REGISTRY_URI", reg.store.uri)
    assert run_json(capsys, "list", MODEL)[0]["champion"] is True  # type: ignore[index]
    assert tl_main(["registry", "list", MODEL]) == 0
    assert capsys.readouterr().out.startswith(f"* {v1}  frozen")


def test_cli_errors_are_clear(env: tuple[Path, Registry], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    spec_file, reg = env
    spec = ["--spec", str(spec_file)]
    v1 = reg.register(fake_run(reg.store.uri, "r1"))
    approval = tmp_path / "approval.json"
    approval.write_text("{}")
    assert tl_main(["registry", "promote", v1, "--expect-champion", "none", "--approval", str(approval), *spec]) == 0
    capsys.readouterr()
    cases = [
        (["promote", v1, "--expect-champion", "v0009", "--approval", str(approval)],
         "expected champion v0009, but the current champion is v0001"),
        (["promote", "../v1", "--expect-champion", "v0001", "--approval", str(approval)], "invalid version '../v1'"),
        (["promote", v1, "--expect-champion", "v0001", "--approval", str(tmp_path / "nope.json")],
         "nope.json: file not found"),
        (["rollback", "--reason", "x"], "no earlier champion to roll back to; pass --to VERSION"),
        (["show", "v0042"], "version v0042 does not exist"),
        (["gc", "--keep", "0"], "at least 1, got 0"),
        (["list", "other"], "model 'other' does not match the spec's model 'reg-test'"),
    ]
    for argv, message in cases:
        assert tl_main(["registry", *argv, *spec]) == 1, argv
        assert message in capsys.readouterr().err, argv
    approval.write_text("[1, 2]")
    assert tl_main(["registry", "promote", v1, "--expect-champion", "v0001", "--approval", str(approval), *spec]) == 1
    assert "expected a JSON object, got list" in capsys.readouterr().err
    monkeypatch.delenv("TL_REGISTRY_URI", raising=False)
    assert tl_main(["registry", "history", MODEL]) == 1
    assert "pass --spec FILE, or a model name and --registry URI" in capsys.readouterr().err
    assert tl_main(["registry", "history", "Bad/Name", "--registry", reg.store.uri]) == 1
    assert "invalid model name 'Bad/Name'" in capsys.readouterr().err


def test_eight_concurrent_identical_promotions_only_the_winner_says_it_won(env: tuple[Path, Registry],
                                                                           tmp_path: Path) -> None:
    spec_file, reg = env
    v1 = reg.register(fake_run(reg.store.uri, "r1"))
    approval = tmp_path / "approval.json"
    approval.write_text(json.dumps({"approver": "alice", "comment": "go", "evidence_hash": evidence_of("r1")}))
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("TL_")}
    env_vars["TL_CACHE_DIR"] = str(tmp_path / "cache")
    procs = [subprocess.Popen([sys.executable, "-m", "tl_core.cli", "registry", "promote", v1, "--expect-champion",
                               "none", "--approval", str(approval), "--actor", f"caller-{i}", "--spec",
                               str(spec_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env_vars, cwd=ROOT) for i in range(8)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _, err in outputs]
    lines = [out.strip() for out, _ in outputs]
    promotions = [r for r in reg.history() if r["action"] == "promote"]
    assert len(promotions) == 1
    seq, winner = promotions[0]["seq"], promotions[0]["actor"]
    assert lines.count(f"champion is now {v1} (was none)") == 1
    already = [line for line in lines if line != f"champion is now {v1} (was none)"]
    assert len(already) == 7 and all(re.fullmatch(rf"{v1} was already promoted \(from none\) by ledger record "
                                                  rf"{seq} \({winner} at \S+\); this call changed nothing", line)
                                     for line in already), already


def test_cli_list_reports_an_unreadable_version_and_lists_the_rest(env: tuple[Path, Registry],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec_file, reg = env
    v1, v2 = reg.register(fake_run(reg.store.uri, "r1")), reg.register(fake_run(reg.store.uri, "r2", seed=1))
    reg.promote(v1, None, {}, "a")
    reg.store.put_bytes(f"registry/{MODEL}/versions/{v2}/manifest.json", b"{truncated")
    assert tl_main(["registry", "list", "--spec", str(spec_file)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"* {v1}  frozen") and len(lines) == 2
    assert re.fullmatch(rf"  {v2}  UNREADABLE: {MODEL}: registry/{MODEL}/versions/{v2}/manifest.json is "
                        r"not valid JSON .*; expected a VersionManifest", lines[1])
    assert f"tl registry list: error: {v2} unreadable: {MODEL}: registry/{MODEL}/versions/{v2}/manifest.json" in err
    assert tl_main(["registry", "list", "--json", "--spec", str(spec_file)]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [r["version"] for r in rows] == [v1, v2] and rows[0]["champion"] is True
    assert "manifest.json is not valid JSON" in rows[1]["unreadable"]


def test_cli_refuses_a_hand_edited_champion_pointer(env: tuple[Path, Registry], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    spec_file, reg = env
    v1, v2 = reg.register(fake_run(reg.store.uri, "r1")), reg.register(fake_run(reg.store.uri, "r2", seed=1))
    reg.promote(v1, None, {}, "a")
    pointer = json.loads(reg.store.get_bytes(f"registry/{MODEL}/champion.json"))
    reg.store.put_bytes(f"registry/{MODEL}/champion.json", json.dumps({**pointer, "version": v2}).encode())
    ledger = reg.ledger()
    for argv in (["history"], ["rollback", "--to", v1, "--reason", "x"], ["list"]):
        assert tl_main(["registry", *argv, "--spec", str(spec_file)]) == 1, argv
        assert (f"registry/{MODEL}/champion.json (champion {v2}, record {pointer['record_id']}) differs from its "
                "ledger record 3 in version") in capsys.readouterr().err, argv
    assert reg.ledger() == ledger


def test_cli_register_keeps_the_run_bound_to_its_spec(env: tuple[Path, Registry], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`tl registry register` goes through the run's spec binding like the DAG's register task."""
    spec_file, reg = env
    changed = json.loads(spec_file.read_text())
    changed["labels"] = ["a", "b", "c", "d"]
    other = tmp_path / "changed.yaml"
    other.write_text(json.dumps(changed))
    assert tl_main(["registry", "register", "--run", "r1", "--spec", str(other)]) == 1
    err = capsys.readouterr().err
    assert "run r1 was started with spec fingerprint" in err and "changed: labels" in err, err
    assert reg.list_versions() == []
    assert run_json(capsys, "register", "--run", "r1", "--spec", str(spec_file))["version"] == "v0001"  # type: ignore
