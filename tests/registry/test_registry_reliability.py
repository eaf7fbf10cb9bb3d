"""Registry reliability (issue 29): S3 folder placeholders in the ledger, a corrupt record in the middle of the
ledger, gc and the rollback target, restoring a corrupt champion pointer from the ledger (`tl registry repair`),
and the local cache shared by two registries.

Real parts only: a moto S3 server over HTTP (tests/conftest.py), file stores, tiny real model files
(tests/registry_fixtures.py), the `tl` CLI entry point.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from registry_fixtures import MODEL, evidence_of, fake_run, make_spec
from tl_core.cli import main as tl_main
from tl_core.errors import LedgerCorrupt
from tl_core.registry import MetadataError, Registry
from tl_core.store import ObjectStore

POINTER = f"registry/{MODEL}/champion.json"
LEDGER = f"registry/{MODEL}/ledger"


@pytest.fixture()
def runs_uri(tmp_path: Path) -> str:
    return (tmp_path / "runs").as_uri()


@pytest.fixture()
def freg(tmp_path: Path) -> Registry:
    return Registry((tmp_path / "reg").as_uri(), MODEL, cache_dir=tmp_path / "cache")


@pytest.fixture()
def spec_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A spec whose (file) store holds the registry the CLI opens; the local cache under tmp_path."""
    for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("tl_core.registry.CACHE_DIR", tmp_path / "cache")
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(make_spec((tmp_path / "reg").as_uri()).model_dump(mode="json")))
    return path


def cli(capsys: pytest.CaptureFixture[str], spec_file: Path, *argv: str) -> tuple[int, str, str]:
    """`tl registry ARGV --spec SPEC`: (exit code, stdout, stderr)."""
    code = tl_main(["registry", *argv, "--spec", str(spec_file)])
    out, err = capsys.readouterr()
    return code, out, err


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------ 29.8 folder placeholders
def test_s3_folder_placeholder_in_the_ledger_is_ignored(s3_bucket: str, runs_uri: str, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import boto3

    uri = f"s3://{s3_bucket}/tl"
    reg = Registry(uri, MODEL, cache_dir=tmp_path / "cache")
    v1, v2 = (reg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(2))
    reg.promote(v1, None, {}, "alice")
    s3 = boto3.client("s3")
    # What the S3 console's "Create folder" writes (a 0-byte object named like the folder), and a stray file.
    s3.put_object(Bucket=s3_bucket, Key=f"tl/{LEDGER}/", Body=b"")
    s3.put_object(Bucket=s3_bucket, Key=f"tl/{LEDGER}/README.txt", Body=b"do not touch")
    s3.put_object(Bucket=s3_bucket, Key=f"tl/registry/{MODEL}/versions/", Body=b"")
    caplog.set_level(logging.WARNING, logger="tl_core.registry")
    fresh = Registry(uri, MODEL, cache_dir=tmp_path / "cache")
    assert fresh.champion().version == v1  # type: ignore[union-attr]  # serving works
    assert fresh.promote(v2, v1, {}, "bob")["seq"] == 4
    assert fresh.rollback(None, "regression", "carol")["version"] == v1
    history = fresh.history()
    assert [r["seq"] for r in history] == [1, 2, 3, 4, 5] and fresh.list_versions() == [v1, v2]
    ignored = [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()]
    assert len(ignored) == 1 and f"{LEDGER}/README.txt" in ignored[0], ignored  # logged once, placeholder silent


def test_stray_file_in_a_file_store_ledger_is_ignored(freg: Registry, runs_uri: str) -> None:
    v1 = freg.register(fake_run(runs_uri, "r1", minimal=True))
    freg.promote(v1, None, {}, "alice")
    freg.store.put_bytes(f"{LEDGER}/.DS_Store", b"\x00\x01")
    assert freg.champion().version == v1  # type: ignore[union-attr]
    assert freg.record_rejection("r9", ["gate FAIL"], "gate") == 3


# ------------------------------------------------------------------------------------ 29.9 corrupt middle record
def test_corrupt_record_in_the_middle_of_the_ledger_refuses_appends(freg: Registry, runs_uri: str) -> None:
    v1, v2 = (freg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(2))
    freg.promote(v1, None, {}, "alice")
    freg.promote(v2, v1, {}, "bob")
    pointer = freg.store.get_bytes(POINTER)
    first, second, third = (f"{LEDGER}/0000000{i}.json" for i in (1, 2, 3))
    good = freg.store.get_bytes(first)
    freg.store.put_bytes(first, b"\x00garbage")
    with pytest.raises(LedgerCorrupt, match=rf"refusing to append to the ledger of {MODEL} behind an unreadable "
                                            rf"record: .*{first} is unreadable: not valid JSON.*; restore {first} "
                                            rf"from a backup .*sha256 is {sha(good)}, as {second} recorded"):
        Registry(freg.store, MODEL).rollback(v1, "incident", "carol")
    assert freg.store.get_bytes(POINTER) == pointer  # the champion did not move without its ledger record
    assert len(freg.store.list(f"{LEDGER}/")) == 4  # nothing appended behind it
    freg.store.put_bytes(first, good)  # restored: appends work again
    assert Registry(freg.store, MODEL).rollback(v1, "incident", "carol")["seq"] == 5
    # A record edited into other valid JSON is caught by the next record's link (sha256 of the stored bytes).
    before = freg.store.get_bytes(second)
    edited = json.dumps({**json.loads(before), "reason": "nothing to see"}, sort_keys=True).encode()
    freg.store.put_bytes(second, edited)
    with pytest.raises(LedgerCorrupt, match=rf"{second} changed after {third} was appended: its sha256 is "
                                            rf"{sha(edited)}, {third} recorded {sha(before)}; restore {second}"):
        Registry(freg.store, MODEL).record_rejection("run-9", ["x"], "gate")
    assert len(freg.store.list(f"{LEDGER}/")) == 5
    assert isinstance(LedgerCorrupt("x"), MetadataError)


# ------------------------------------------------------------------------------------ 29.17 gc and rollback target
def test_gc_keep_1_keeps_the_rollback_target_and_says_so(spec_file: Path, freg: Registry, runs_uri: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    v1, v2, v3 = (freg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(3))
    freg.promote(v1, None, {}, "alice")
    freg.promote(v2, v1, {}, "bob")
    assert freg.default_rollback_target() == v1
    code, out, _ = cli(capsys, spec_file, "gc", "--keep", "1", "--dry-run")
    assert code == 0 and out.strip() == f"would delete: {v3}; kept: {v1}, {v2}; kept {v1}: rollback target"
    code, out, _ = cli(capsys, spec_file, "gc", "--keep", "1", "--json")
    assert code == 0 and json.loads(out) == {"deleted": [v3], "kept": [v1, v2], "rollback_target": v1}
    assert freg.list_versions() == [v1, v2] and freg.history()[-1]["rollback_target"] == v1
    code, out, _ = cli(capsys, spec_file, "rollback", "--reason", "v2 misbehaves", "--actor", "carol")
    assert code == 0 and out.strip() == f"rolled back: champion is now {v1} (was {v2})"
    # v2 was rolled back from: no rollback target any more, and the champion is kept as before.
    code, out, _ = cli(capsys, spec_file, "gc", "--keep", "1")
    assert code == 0 and out.strip() == f"deleted: {v2}; kept: {v1}"


# ------------------------------------------------------------------------------------ 29.19 repair the pointer
def _predict_champion(spec_file: Path, tmp_path: Path) -> int:
    """`tl predict --model NAME@champion` on 0 rows (the serving path: champion, verified copy, ONNX session)."""
    pd.DataFrame({"image": pd.Series([], dtype=object)}).to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    out.unlink(missing_ok=True)
    return tl_main(["predict", "--spec", str(spec_file), "--model", f"{MODEL}@champion", "--input",
                    str(tmp_path / "in.parquet"), "--output", str(out)])


def test_repair_restores_a_corrupt_forged_or_deleted_pointer_from_the_ledger(
        spec_file: Path, freg: Registry, runs_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = (freg.register(fake_run(runs_uri, f"r{i}", seed=i)) for i in range(2))
    freg.promote(v1, None, {}, "alice", "first", evidence_of("r0"))
    freg.promote(v2, v1, {}, "bob", "better", evidence_of("r1"))
    good = freg.store.get_bytes(POINTER)
    pointer = json.loads(good)
    monkeypatch.setenv("USER", "night-ops")
    for name, bad in (("corrupt", b'{"version": "v00'), ("forged", json.dumps({**pointer, "version": v1}).encode()),
                      ("deleted", None)):
        if bad is None:
            freg.store.delete(POINTER)
        else:
            freg.store.put_bytes(POINTER, bad)
        ledger = freg.ledger()
        code, _, err = cli(capsys, spec_file, "rollback", "--to", v1, "--reason", "incident")
        assert code == 1 and "tl registry repair --from-ledger" in err, (name, err)  # the refusal names the fix
        code, out, _ = cli(capsys, spec_file, "repair", "--from-ledger")  # a dry run: prints, writes nothing
        assert code == 0 and f"would write {POINTER} from ledger record 4 (champion {v2})" in out, (name, out)
        assert good.decode() in out and "--apply" in out, (name, out)
        assert freg.ledger() == ledger, name
        assert (freg.store.get_bytes(POINTER) if bad is not None else freg.store.exists(POINTER)) == (bad or False)
        code, out, _ = cli(capsys, spec_file, "repair", "--from-ledger", "--apply", *(
            ("--actor", "ops") if name == "corrupt" else ()))
        assert code == 0 and f"repaired {POINTER}: champion is {v2} again, as ledger record 4 says" in out, out
        assert freg.store.get_bytes(POINTER) == good, name  # exactly the ledger's record, as the mover wrote it
        record = freg.ledger()[-1]
        assert (record["action"], record["actor"], record["previous_pointer_sha256"], record["restored_seq"]) == (
            "repair", "ops" if name == "corrupt" else "night-ops", sha(bad) if bad is not None else None, 4), name
        assert freg.champion().version == v2  # type: ignore[union-attr]
    # Everything works again: rollback, promote, serving the champion.
    code, out, err = cli(capsys, spec_file, "rollback", "--reason", "incident", "--actor", "carol")
    assert code == 0 and out.strip() == f"rolled back: champion is now {v1} (was {v2})", err
    freg.promote(v2, v1, {}, "bob", "fixed", evidence_of("r1"))
    assert _predict_champion(spec_file, tmp_path) == 0, capsys.readouterr().err
    assert pd.read_parquet(tmp_path / "out.parquet").empty


def test_repair_of_a_consistent_pointer_says_nothing_to_repair(spec_file: Path, freg: Registry, runs_uri: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    v1 = freg.register(fake_run(runs_uri, "r1", minimal=True))
    freg.promote(v1, None, {}, "alice")
    good, ledger = freg.store.get_bytes(POINTER), freg.ledger()
    for extra in ((), ("--apply",)):
        code, out, _ = cli(capsys, spec_file, "repair", "--from-ledger", *extra)
        assert code == 0 and out.strip() == (f"{MODEL}: {POINTER} agrees with ledger record 2 (champion {v1}); "
                                             "nothing to repair"), out
    assert freg.store.get_bytes(POINTER) == good and freg.ledger() == ledger
    code, out, _ = cli(capsys, spec_file, "repair", "--from-ledger", "--json")
    assert code == 0 and json.loads(out)["status"] == "consistent"


def test_repair_without_a_promotion_in_the_ledger_refuses(spec_file: Path, freg: Registry, runs_uri: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    freg.register(fake_run(runs_uri, "r1", minimal=True))
    code, out, _ = cli(capsys, spec_file, "repair", "--from-ledger")
    assert code == 0 and "nothing to repair" in out  # no champion yet, no pointer: consistent
    freg.store.put_bytes(POINTER, b"{}")
    with pytest.raises(MetadataError, match="is not a valid champion pointer"):
        freg.champion()
    code, _, err = cli(capsys, spec_file, "repair", "--from-ledger", "--apply")
    assert code == 1 and "the ledger records no promotion, so there is no pointer to restore" in err, err
    assert freg.store.get_bytes(POINTER) == b"{}"


class Died(Exception):
    """The process 'dies' right after it wrote the champion pointer."""


class DiesAfterPointerWrite:
    """Delegates to a real store; raises Died right after a write of the champion pointer."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.uri = inner, inner.uri

    def put_bytes(self, key: str, data: bytes, **kw: Any) -> str:
        etag = self.inner.put_bytes(key, data, **kw)
        if key == POINTER:
            raise Died(f"killed after writing {key}")
        return etag

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_repair_interrupted_after_its_swap_is_recorded_by_the_next_repair(freg: Registry, runs_uri: str) -> None:
    v1 = freg.register(fake_run(runs_uri, "r1", minimal=True))
    freg.promote(v1, None, {}, "alice")
    good = freg.store.get_bytes(POINTER)
    freg.store.put_bytes(POINTER, b"garbage")
    with pytest.raises(Died):
        Registry(DiesAfterPointerWrite(freg.store), MODEL).repair_pointer(apply=True, actor="ops")  # type: ignore
    assert freg.store.get_bytes(POINTER) == good and freg.ledger()[-1]["action"] == "promote"
    assert freg.repair_pointer()["status"] == "consistent" and freg.ledger()[-1]["action"] == "promote"  # dry run
    assert freg.repair_pointer(apply=True, actor="someone else")["status"] == "consistent"
    record = freg.ledger()[-1]
    assert (record["action"], record["actor"], record["previous_pointer_sha256"]) == ("repair", "ops", sha(b"garbage"))
    freg.repair_pointer(apply=True)
    assert [r["action"] for r in freg.ledger()].count("repair") == 1  # recorded once


# ------------------------------------------------------------------------------------ 29.20 the local cache
def test_two_registries_with_the_same_version_keep_separate_caches(s3_bucket: str, runs_uri: str, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    staging = Registry(f"s3://{s3_bucket}/staging", MODEL, cache_dir=cache)
    production = Registry(f"s3://{s3_bucket}/production", MODEL, cache_dir=cache)
    assert staging.register(fake_run(runs_uri, "r-staging", seed=3)) == "v0001"
    assert production.register(fake_run(runs_uri, "r-production", seed=4, minimal=True)) == "v0001"
    caplog.set_level(logging.INFO, logger="tl_core.registry")

    def stamps(path: Path) -> dict[str, tuple[int, int]]:
        return {p.relative_to(path).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in path.rglob("*") if p.is_file()}

    def holds_its_own(reg: Registry, path: Path) -> None:
        files = reg.show("v0001")["files"]
        assert {rel: sha((path / rel).read_bytes()) for rel in stamps(path)} == {
            rel: meta["sha256"] for rel, meta in files.items()}

    first = staging.load_version("v0001")
    before = stamps(first)
    second = production.load_version("v0001")
    assert second != first
    assert staging.load_version("v0001") == first and stamps(first) == before  # reused, not fetched again
    holds_its_own(staging, first)
    holds_its_own(production, production.load_version("v0001"))
    assert not [r for r in caplog.records if "removing" in r.getMessage()]
