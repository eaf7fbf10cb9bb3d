"""Registry: immutable versions, compare-and-swap champion, gapless ledger, rollback checks, gc.

Runs with real tiny files (safetensors via safetensors.numpy, an onnx.helper MatMul+Softmax graph and its
golden predictions) on both backends: file:// and a moto S3 server over HTTP. Fake runs live on a local
file store (the registry copies from a run's store into its own), which keeps the S3 tests fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from safetensors.numpy import load as load_safetensors

from registry_fixtures import MODEL, evidence_of, fake_run, make_spec
from tl_core.artifacts import ArtifactError, Selection
from tl_core.errors import AccessDenied
from tl_core.registry import (
    Champion,
    ConflictError,
    IntegrityError,
    MetadataError,
    PromotionOverride,
    PromotionRefused,
    Registry,
    RegistryError,
    UnexplainedPointer,
    check_relpath,
    check_version,
)
from tl_core.store import ObjectStore, open_store


@pytest.fixture()
def runs_uri(tmp_path: Path) -> str:
    return (tmp_path / "runs").as_uri()


@pytest.fixture()
def reg(store_uri: str, tmp_path: Path) -> Registry:
    return Registry(store_uri, MODEL, cache_dir=tmp_path / "cache")


@pytest.fixture()
def freg(tmp_path: Path) -> Registry:
    """File backend only: for behaviour that does not depend on the store."""
    return Registry((tmp_path / "reg").as_uri(), MODEL, cache_dir=tmp_path / "cache")


def vkey(version: str, rel: str) -> str:
    return f"registry/{MODEL}/versions/{version}/{rel}"


# ------------------------------------------------------------------------------------------- register
def test_register_manifest_immutable_and_idempotent(reg: Registry, runs_uri: str) -> None:
    run = fake_run(runs_uri, "run-1")
    v1 = reg.register(run, actor="ci")
    assert v1 == "v0001" and reg.register(run) == v1  # idempotent: same run, same version
    manifest = reg.show(v1)
    assert manifest["run_id"] == "run-1" and manifest["shadow"] is False and manifest["strategy"] == "frozen"
    assert manifest["snapshot_hash"] == "hash-run-1"
    assert manifest["backbone"] == {"id": "test_resnet", "revision": "r42", "library": "timm"}
    assert manifest["seeds"]["train"] == 7 and manifest["strategy_config"]["seed"] == 0
    assert manifest["metrics"] == {"accuracy": 0.8, "macro_f1": 0.7, "n": 50} and manifest["temperature"] == 1.3
    assert manifest["gate"]["passed"] is True
    assert {"torch", "onnxruntime", "numpy"} <= set(manifest["library_versions"])
    assert "models/frozen/resume/state.pt" not in manifest["files"]
    assert set(manifest["files"]) >= {"models/frozen/model.safetensors", "models/frozen/model_config.json",
                                      "models/frozen/preprocessing/vocab.txt", "export/model.onnx",
                                      "export/golden.npz", "evaluation/report.json", "gate/decision.json",
                                      "snapshot/manifest.json", "spec.json", "candidate.json"}
    for rel, meta in manifest["files"].items():  # sha256 and size are those of the run's files
        data = run.store.get_bytes(run.key(rel))
        assert meta == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    # The ledger records the registration exactly once although register ran twice.
    assert [(r["action"], r["version"], r["actor"]) for r in reg.history()] == [("register", v1, "ci")]

    v2 = reg.register(fake_run(runs_uri, "run-2", seed=1))
    assert v2 == "v0002" and reg.list_versions() == [v1, v2]
    local = reg.load_version(v1)
    weights = load_safetensors((local / "models/frozen/model.safetensors").read_bytes())["head.weight"]
    assert np.array_equal(weights, load_safetensors(run.store.get_bytes(run.model_key("frozen",
                                                                                     "model.safetensors")))
                          ["head.weight"])
    # Immutable: a run whose files changed cannot overwrite a version's file (create-only writes).
    reg.store.delete(vkey(v2, "manifest.json"))  # as if registration of run-2 had crashed before its manifest
    run2 = fake_run(runs_uri, "run-2", seed=99)
    with pytest.raises(IntegrityError, match=r"v0002: evaluation/report.json already exists with different content"):
        reg.register(run2)
    assert reg.list_versions() == [v1]  # still incomplete, and its first-written files are unchanged
    assert reg.store.get_bytes(vkey(v2, "candidate.json")) == run2.store.get_bytes(run2.key("candidate.json"))


def test_register_refuses_unsafe_or_incomplete_runs(freg: Registry, runs_uri: str) -> None:
    run = fake_run(runs_uri, "r1", minimal=True)
    run.store.put_bytes(run.model_key("frozen", "preprocessing", "scaler.pkl"), b"\x80\x04evil")
    with pytest.raises(IntegrityError, match=r"refusing file 'models/frozen/preprocessing/scaler.pkl'"):
        freg.register(run)
    assert freg.list_versions(include_incomplete=True) == []  # refused before anything was claimed
    run.store.delete(run.model_key("frozen", "preprocessing", "scaler.pkl"))
    run.store.delete(run.model_key("frozen", "model.safetensors"))
    with pytest.raises(RegistryError, match=r"run r1: missing \['runs/reg-test/r1/models/frozen/model.safetensors'\]"):
        freg.register(run)
    run.write(run.read(Selection).model_copy(update={"selected": "../frozen"}))
    with pytest.raises(RegistryError, match=r"'selected' is '../frozen'; expected a strategy name"):
        freg.register(run)
    run.store.put_bytes(run.key("candidate.json"), b'{"selected": "frozen"}')  # written by hand: no schema
    with pytest.raises(ArtifactError, match=r"candidate.json is a Selection of schema version None; this tl_core "
                                            "reads version 1"):
        freg.register(run)


def test_check_relpath_rejects_traversal_and_unsafe_types() -> None:
    assert check_relpath("models/frozen/model.safetensors", "x") == "models/frozen/model.safetensors"
    for bad in ("../x.json", "a/../b.json", "/abs.json", "a//b.json", "a/.hidden.json", "a\\b.json", ""):
        with pytest.raises(ValueError, match="invalid file path"):
            check_relpath(bad, "here")
    for unsafe in ("model.pt", "model.bin", "prep.pkl", "code.py"):
        with pytest.raises(IntegrityError, match=f"refusing file '{unsafe}'"):
            check_relpath(unsafe, "here")


def test_load_version_refuses_crafted_manifest_and_pickled_npz(freg: Registry, runs_uri: str) -> None:
    v1 = freg.register(fake_run(runs_uri, "r1"))
    manifest = freg.show(v1)
    # The local copy is re-verified: a changed file is fetched again, a planted file is removed.
    local = freg.load_version(v1)
    (local / "models/frozen/preprocessing/evil.pkl").write_bytes(b"\x80\x04planted")
    (local / "models/frozen/model_config.json").write_text("{}")
    assert freg.load_version(v1) == local
    assert not (local / "models/frozen/preprocessing/evil.pkl").exists()
    assert hashlib.sha256((local / "models/frozen/model_config.json").read_bytes()).hexdigest() == manifest[
        "files"]["models/frozen/model_config.json"]["sha256"]
    for rel, exc, match in (("../../outside.json", ValueError, "invalid file path '../../outside.json'"),
                            ("models/frozen/evil.pkl", IntegrityError, "refusing file 'models/frozen/evil.pkl'")):
        crafted = {**manifest, "version": "v0009", "files": {**manifest["files"], rel: {"sha256": "0", "size": 0}}}
        freg.store.put_bytes(vkey("v0009", "manifest.json"), json.dumps(crafted).encode())
        with pytest.raises(exc, match=match):
            freg.load_version("v0009")
    assert not (freg.cache_dir / MODEL / "outside.json").exists()
    # An npz holding an object array needs pickle to load: refused even with a matching checksum.
    run = fake_run(runs_uri, "r2", seed=2)
    buf = io.BytesIO()
    np.savez(buf, logits=np.array([{"x": 1}], dtype=object))
    run.store.put_bytes(run.key("export/golden.npz"), buf.getvalue())
    v2 = freg.register(run)
    with pytest.raises(IntegrityError, match=r"export/golden.npz: not a pickle-free npz"):
        freg.load_version(v2)


def test_bad_names_and_versions_rejected(reg: Registry, store_uri: str) -> None:
    for bad in ("../x", "a/b", "UPPER", "", "a..b", "a b"):
        with pytest.raises(ValueError, match="invalid model name"):
            Registry(store_uri, bad)
    for bad_version in ("v1/../../x", "../v0001", "v0001/", "V0001", "latest", "v1"):
        with pytest.raises(ValueError, match="invalid version"):
            reg.show(bad_version)
        with pytest.raises(ValueError, match="invalid version"):
            reg.promote(bad_version, None, {}, "a")
        with pytest.raises(ValueError, match="invalid version"):
            reg.rollback(bad_version, "reason", "a")
    with pytest.raises(ValueError, match="invalid version '../v2'"):
        reg.promote("v0001", "../v2", {}, "a")
    # '$' matches before a trailing newline: names, versions and file paths are matched in full.
    with pytest.raises(ValueError, match=r"invalid model name 'support\\n'"):
        Registry(store_uri, "support\n")
    with pytest.raises(ValueError, match=r"invalid version 'v0001\\n'"):
        check_version("v0001\n")
    with pytest.raises(ValueError, match=r"invalid file path 'models\\n/model.json'"):
        check_relpath("models\n/model.json", "here")


# ------------------------------------------------------------------------------------------- promote/rollback
def test_promote_rollback_and_history(reg: Registry, runs_uri: str) -> None:
    v1, v2 = reg.register(fake_run(runs_uri, "r1")), reg.register(fake_run(runs_uri, "r2", seed=1))
    assert reg.champion() is None
    first = reg.promote(v1, None, {"approver": "alice"}, "alice", "first model", evidence_of("r1"))
    champ = reg.champion()
    assert isinstance(champ, Champion) and champ.version == v1 and champ.promoted_at == first["at"]
    assert champ.actor == "alice" and champ.previous is None and champ.etag == reg.store.etag(
        f"registry/{MODEL}/champion.json")
    reg.promote(v2, v1, {"approver": "bob"}, "bob", "better", evidence_of("r2"))
    with pytest.raises(ConflictError, match="expected champion v0001, but the current champion is v0002"):
        reg.promote(v1, v1, {}, "eve")
    with pytest.raises(ConflictError, match="expected champion none, but the current champion is v0002"):
        reg.promote(v1, None, {}, "eve")
    with pytest.raises(RegistryError, match="v0002 is already the champion"):
        reg.promote(v2, v2, {}, "eve")
    with pytest.raises(RegistryError, match="version v0007 does not exist"):
        reg.promote("v0007", v2, {}, "eve")
    record = reg.rollback(None, "regression in prod", "carol")
    assert record["version"] == v1 and record["previous"] == v2 and record["actor"] == "carol"
    history = reg.history()
    moves = [(r["action"], r["version"], r["previous"], r["actor"], r["reason"], r.get("evidence_hash"))
             for r in history if r["action"] in ("promote", "rollback")]
    assert moves == [("promote", v1, None, "alice", "first model", evidence_of("r1")),
                     ("promote", v2, v1, "bob", "better", evidence_of("r2")),
                     ("rollback", v1, v2, "carol", "regression in prod", None)]
    assert [r["seq"] for r in history] == list(range(1, len(history) + 1))
    assert all(r["at"] for r in history)
    with pytest.raises(ValueError, match="needs a reason"):
        reg.rollback(None, "  ", "a")


def test_default_rollback_target_skips_rolled_back_versions(freg: Registry, runs_uri: str) -> None:
    v1, v2, v3 = (freg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(3))
    with pytest.raises(RegistryError, match="there is no champion to roll back"):
        freg.rollback(None, "x", "a")
    freg.promote(v1, None, {}, "a")
    with pytest.raises(RegistryError, match="no earlier champion to roll back to; pass --to"):
        freg.rollback(None, "x", "a")
    freg.promote(v2, v1, {}, "a")
    freg.promote(v3, v2, {}, "a")
    assert freg.rollback(None, "v3 is bad", "a")["version"] == v2
    assert freg.rollback(None, "v2 is bad too", "a")["version"] == v1  # not back to v3, which was rolled back
    assert freg.rollback(v3, "v3 was fine after all", "a")["version"] == v3


def test_promote_retry_is_idempotent_and_shadow_needs_approval(freg: Registry, runs_uri: str) -> None:
    v1 = freg.register(fake_run(runs_uri, "r1", minimal=True))
    first = freg.promote(v1, None, {"approver": "a"}, "a", "ok", evidence_of("r1"))
    assert first["made_now"] is True
    assert freg.promote(v1, None, {"approver": "a"}, "a", "ok", evidence_of("r1")) == {**first, "made_now": False}
    assert len([r for r in freg.history() if r["action"] == "promote"]) == 1
    shadow = freg.register(fake_run(runs_uri, "backfill-1", seed=1, minimal=True), shadow=True)
    with pytest.raises(PromotionRefused, match=r"v0002 cannot be promoted: it is a shadow version \(registered by "
                                               r"backfill run backfill-1\)"):
        freg.promote(shadow, v1, {}, "a")
    override = PromotionOverride(actor="a", reason="backfill model verified by hand")
    assert freg.promote(shadow, v1, {}, "a", override=override)["version"] == shadow


def test_rollback_refuses_tampered_file_and_names_it(reg: Registry, runs_uri: str) -> None:
    v1, v2 = reg.register(fake_run(runs_uri, "r1")), reg.register(fake_run(runs_uri, "r2", seed=1))
    reg.promote(v1, None, {}, "a")
    reg.promote(v2, v1, {}, "a")
    before = reg.history()
    reg.load_version(v1)  # a good local copy must not hide a tampered store copy
    original = reg.store.get_bytes(vkey(v1, "models/frozen/model.safetensors"))
    reg.store.put_bytes(vkey(v1, "models/frozen/model.safetensors"), original[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match=r"v0001 is unusable: file models/frozen/model.safetensors does not "
                                             "match its manifest checksum"):
        reg.rollback(None, "incident", "a")
    reg.store.delete(vkey(v1, "export/golden.npz"))
    reg.store.put_bytes(vkey(v1, "models/frozen/model.safetensors"), original)
    with pytest.raises(IntegrityError, match="v0001 is unusable: file export/golden.npz is missing"):
        reg.rollback(v1, "incident", "a")
    assert reg.champion().version == v2  # type: ignore[union-attr]
    assert reg.history() == before


def test_rollback_checks_the_model_and_onnx_golden(freg: Registry, runs_uri: str) -> None:
    cases = {
        "golden-off": ({"input.pixel_values": np.ones((2, 4), np.float32), "logits": np.zeros((2, 3), np.float32)},
                       "ONNX logits differ from the golden predictions by"),
        "golden-nologits": ({"input.pixel_values": np.ones((2, 4), np.float32)},
                            r"expected 'logits' and 'input.<name>' arrays"),
        "golden-badinput": ({"input.wrong_name": np.ones((2, 4), np.float32), "logits": np.zeros((2, 3))},
                            "export/model.onnx does not run on export/golden.npz"),
    }
    champion = freg.register(fake_run(runs_uri, "good"))
    freg.promote(champion, None, {}, "a")
    for run_id, (arrays, match) in cases.items():
        run = fake_run(runs_uri, run_id)
        run.write_npz("export/golden.npz", **arrays)
        version = freg.register(run)
        with pytest.raises(IntegrityError, match=match):
            freg.rollback(version, "x", "a")
    run = fake_run(runs_uri, "no-tensors")
    run.store.put_bytes(run.model_key("frozen", "model.safetensors"), b"not safetensors")
    with pytest.raises(IntegrityError, match="models/frozen/model.safetensors does not load"):
        freg.rollback(freg.register(run), "x", "a")
    run = fake_run(runs_uri, "no-golden")
    run.store.delete(run.key("export/golden.npz"))
    with pytest.raises(IntegrityError, match="export/model.onnx has no export/golden.npz"):
        freg.rollback(freg.register(run), "x", "a")
    assert freg.champion().version == champion  # type: ignore[union-attr]
    # The golden check is a real onnxruntime run: the reference logits reproduce within 1e-4.
    local = freg.load_version(champion)
    with np.load(local / "export/golden.npz") as z:
        got = ort.InferenceSession(str(local / "export/model.onnx")).run(["logits"], {"pixel_values": z[
            "input.pixel_values"]})[0]
        assert np.abs(got - z["logits"]).max() < 1e-4


def test_rejection_records_are_idempotent_and_gaps_are_refused(freg: Registry) -> None:
    assert freg.record_rejection("run-1", ["gate FAIL", "accuracy below margin"], "gate") == 1
    assert freg.record_rejection("run-1", ["gate FAIL", "accuracy below margin"], "gate") == 1  # task retry
    assert freg.record_rejection("run-2", ["gate FAIL"], "gate") == 2
    record = freg.history()[0]
    assert (record["action"], record["run_id"], record["reason"]) == ("reject", "run-1",
                                                                      "gate FAIL; accuracy below margin")
    freg.record_rejection("run-3", ["x"], "gate")
    freg.store.delete(f"registry/{MODEL}/ledger/00000002.json")
    with pytest.raises(RegistryError, match=r"ledger is not gapless: found .*00000003.json, expected "
                                            r".*00000002.json"):
        freg.history()


# ------------------------------------------------------------------------------------------- concurrency
def test_32_concurrent_promotions_one_wins(reg: Registry, runs_uri: str) -> None:
    base = reg.register(fake_run(runs_uri, "base", minimal=True))
    versions = [reg.register(fake_run(runs_uri, f"c{i}", seed=i, minimal=True)) for i in range(32)]
    evidence = {v: evidence_of(f"c{i}") for i, v in enumerate(versions)}
    reg.promote(base, None, {}, "a")
    barrier = threading.Barrier(32)
    winners: list[str] = []
    errors: list[str] = []
    unexpected: list[BaseException] = []

    def contend(v: str) -> None:
        r = Registry(reg.store, MODEL, cache_dir=reg.cache_dir)
        barrier.wait()
        try:
            r.promote(v, base, {"approver": v}, f"actor-{v}", "race", evidence[v])
            winners.append(v)
        except ConflictError as exc:
            errors.append(str(exc))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            unexpected.append(exc)

    threads = [threading.Thread(target=contend, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert unexpected == [] and len(winners) == 1 and len(errors) == 31
    winner = winners[0]
    assert reg.champion().version == winner  # type: ignore[union-attr]
    assert all(f"current champion is {winner}" in e and "expected" in e for e in errors)
    history = reg.history()
    promotes = [r for r in history if r["action"] == "promote" and r["previous"] == base]
    assert [(r["version"], r["actor"], r["evidence_hash"]) for r in promotes] == [
        (winner, f"actor-{winner}", evidence[winner])]
    assert [r["seq"] for r in history] == list(range(1, len(history) + 1))


class Crash(RuntimeError):
    pass


class CrashingStore:
    """Delegates to a real store; the process 'dies' right after its Nth successful write (or delete)."""

    def __init__(self, inner: ObjectStore, crash_after: int) -> None:
        self.inner, self.crash_after, self.writes = inner, crash_after, 0
        self.uri = inner.uri
        self.last_key = ""

    def _tick(self, key: str) -> None:
        self.writes += 1
        self.last_key = key
        if self.writes == self.crash_after:
            raise Crash(f"killed after writing {key}")

    def put_bytes(self, key: str, data: bytes, **kw: Any) -> str:
        etag = self.inner.put_bytes(key, data, **kw)
        self._tick(key)
        return etag

    def delete(self, key: str) -> None:
        self.inner.delete(key)
        self._tick(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ReadOnlyStore:
    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.uri = inner, inner.uri

    def put_bytes(self, key: str, data: bytes, **kw: Any) -> str:
        raise AccessDenied(f"read-only: {key}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_concurrent_repairs_of_a_crashed_promotion_record_it_once(reg: Registry, runs_uri: str) -> None:
    v1, v2 = (reg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(2))
    reg.promote(v1, None, {}, "a")
    crashing = Registry(CrashingStore(reg.store, crash_after=2), MODEL)  # type: ignore[arg-type]
    with pytest.raises(Crash, match="champion.json"):  # its intent, then the pointer: dies before the ledger
        crashing.promote(v2, v1, {}, "a", "crashes before its ledger record")
    read_only = Registry(ReadOnlyStore(reg.store), MODEL)  # type: ignore[arg-type]
    assert read_only.champion().version == v2  # type: ignore[union-attr]  # reads, cannot repair: no error
    assert [r["action"] for r in read_only.ledger()] == ["register", "register", "promote"]
    readers = [Registry(reg.store, MODEL) for _ in range(8)]
    barrier = threading.Barrier(len(readers))

    def read(r: Registry) -> None:
        barrier.wait()
        r.champion()  # each one repairs the ledger if the record is missing

    threads = [threading.Thread(target=read, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    moves = [r for r in reg.history() if r["action"] == "promote"]
    assert [(r["version"], r["previous"], r["reason"]) for r in moves] == [
        (v1, None, "approved promotion"), (v2, v1, "crashes before its ledger record")]


def _assert_consistent(reg: Registry, allowed: set[str | None]) -> str | None:
    champion = reg.champion()  # reconciles a ledger left behind by a crash
    version = champion.version if champion else None
    assert version in allowed
    history = reg.history()
    assert [r["seq"] for r in history] == list(range(1, len(history) + 1))
    moves = [r for r in history if r["action"] in ("promote", "rollback")]
    assert (moves[-1]["version"] if moves else None) == version
    assert champion is None or moves[-1]["record_id"] == champion.record["record_id"]
    assert len({r["record_id"] for r in history}) == len(history)
    for v in reg.list_versions():  # every complete version verifies: never a half-written one
        reg.verify(v)
    if champion:
        reg.check_loadable(champion.version)
    return version


@pytest.mark.parametrize("operation", ["register", "promote", "rollback"])
def test_crash_after_each_write_leaves_consistent_state(store_uri: str, runs_uri: str, tmp_path: Path,
                                                        operation: str) -> None:
    crash_after, outcomes = 1, set()
    while True:
        uri = f"{store_uri}/crash{crash_after}"
        reg = Registry(uri, MODEL, cache_dir=tmp_path / "cache")
        v1 = reg.register(fake_run(runs_uri, "r1", minimal=operation != "rollback"))  # rollback checks its ONNX
        reg.promote(v1, None, {}, "a")
        v2 = reg.register(fake_run(runs_uri, "r2", seed=1, minimal=True)) if operation != "register" else None
        if operation == "rollback":
            reg.promote(v2, v1, {}, "a")  # type: ignore[arg-type]
        crashing = Registry(CrashingStore(open_store(uri), crash_after), MODEL,  # type: ignore[arg-type]
                            cache_dir=tmp_path / "cache")
        try:
            if operation == "register":
                crashing.register(fake_run(runs_uri, "r3", seed=3, minimal=True))
            elif operation == "promote":
                crashing.promote(v2, v1, {}, "a")  # type: ignore[arg-type]
            else:
                crashing.rollback(None, "incident", "a")
            finished = True
        except Crash:
            finished = False
        fresh = Registry(uri, MODEL, cache_dir=tmp_path / "cache")
        if operation == "register":
            _assert_consistent(fresh, {v1})
            assert fresh.list_versions() in ([v1], [v1, "v0002"])
            assert fresh.register(fake_run(runs_uri, "r3", seed=3, minimal=True)) == "v0002"  # completes it
            assert [r["version"] for r in fresh.history() if r["action"] == "register"] == [v1, "v0002"]
        else:
            outcomes.add(_assert_consistent(fresh, {v1, v2}))
        if finished:
            break
        crash_after += 1
    assert crash_after >= 3  # the operation made several writes, each one crashed after once
    if operation != "register":  # intent, then pointer: a crash after the intent keeps the old champion, a crash
        assert outcomes == {v1, v2}  # after the pointer is a done deal (repaired from the intent)


# ------------------------------------------------------------------------------------------- gc
def test_gc_keeps_champion_last_n_and_pending(reg: Registry, runs_uri: str) -> None:
    versions = [reg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(6)]
    prev = None
    for v in versions[:4]:
        reg.promote(v, prev, {}, "a")
        prev = v
    reg.rollback(versions[1], "v2 and v3 misbehave", "a")  # champions, newest first: v1, v3, v2, v0
    # versions[2] is the rollback target (the latest earlier champion never rolled back from): always kept.
    plan = reg.gc(keep=2, dry_run=True, pending_runs=("r5",))
    assert plan == {"would_delete": [versions[0], versions[4]],
                    "kept": [versions[1], versions[2], versions[3], versions[5]], "rollback_target": versions[2]}
    assert reg.list_versions() == versions
    result = reg.gc(keep=2, pending_runs=("r5",))
    assert result["deleted"] == [versions[0], versions[4]]
    assert reg.list_versions() == [versions[1], versions[2], versions[3], versions[5]]
    assert reg.champion().version == versions[1]  # type: ignore[union-attr]
    gc_record = reg.history()[-1]
    assert (gc_record["action"], gc_record["deleted"]) == ("gc", result["deleted"])
    # keep=1 still never deletes the champion; numbers are never reused, a collected run registers anew.
    assert reg.gc(keep=1)["deleted"] == [versions[3], versions[5]]
    assert reg.list_versions() == versions[1:3]
    assert reg.register(fake_run(runs_uri, "r4", seed=4, minimal=True)) == "v0007"
    # A gc interrupted after marking a version (its run mapping still there) never hands that version out again.
    reg.store.put_bytes(vkey("v0007", "gc.json"), b"{}")
    assert reg.list_versions() == versions[1:3]
    with pytest.raises(RegistryError, match="v0007 was garbage-collected"):
        reg.show("v0007")
    assert reg.register(fake_run(runs_uri, "r4", seed=4, minimal=True)) == "v0008"
    reg.gc(keep=1)
    assert reg.list_versions() == versions[1:3] and reg.list_versions(include_incomplete=True)[-2:] == ["v0007",
                                                                                                      "v0008"]
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"at least 1, got {bad}"):
            reg.gc(keep=bad)


class HookStore:
    """Delegates to a real store; runs ``hook`` once, right after the first access matching ``when``."""

    def __init__(self, inner: ObjectStore, when: Any, hook: Any) -> None:
        self.inner, self.uri, self.when, self.hook, self.done = inner, inner.uri, when, hook, False

    def _maybe(self, op: str, key: str) -> None:
        if not self.done and self.when(op, key):
            self.done = True
            self.hook()

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        out = self.inner.get_with_etag(key)
        self._maybe("get", key)
        return out

    def put_bytes(self, key: str, data: bytes, **kw: Any) -> str:
        etag = self.inner.put_bytes(key, data, **kw)
        self._maybe("put", key)
        return etag

    def exists(self, key: str) -> bool:
        out = self.inner.exists(key)
        self._maybe("exists", key)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_gc_racing_a_promotion_never_collects_the_champion(freg: Registry, runs_uri: str) -> None:
    v1, v2, v3 = (freg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(3))
    freg.promote(v1, None, {}, "a")
    # gc runs while a promotion of v2 is between its last check of v2 and its swap: the swap fails.
    def gc_now() -> None:
        Registry(freg.store, MODEL).gc(keep=1, pending_runs=("r2",))

    checks = {"n": 0}

    def second_mark_check(op: str, key: str) -> bool:
        checks["n"] += op == "exists" and key == vkey(v2, "gc.json")
        return checks["n"] == 2  # promote: verify, then the check in _move_pointer right before the swap

    last_check = HookStore(freg.store, second_mark_check, gc_now)
    with pytest.raises(ConflictError, match="the champion changed concurrently .expected v0001.; the current "
                                            "champion is v0001"):
        Registry(last_check, MODEL).promote(v2, v1, {}, "a")  # type: ignore[arg-type]
    # ... and when gc ran after the promotion verified v2 but before it read the pointer, the mark refuses it.
    v2b = freg.register(fake_run(runs_uri, "r2b", seed=5, minimal=True))
    reads = {"n": 0}

    def second_pointer_read(op: str, key: str) -> bool:
        reads["n"] += op == "get" and key.endswith("champion.json")
        return reads["n"] == 2  # promote: champion() then the read in _move_pointer

    racing = Registry(HookStore(freg.store, second_pointer_read,  # type: ignore[arg-type]
                                lambda: Registry(freg.store, MODEL).gc(keep=1, pending_runs=("r2",))), MODEL)
    with pytest.raises(RegistryError, match="version v0004 was garbage-collected"):
        racing.promote(v2b, v1, {}, "a")
    assert freg.champion().version == v1 and freg.list_versions() == [v1, v3]  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="v0002 was garbage-collected"):
        freg.promote(v2, v1, {}, "a")
    # A promotion that swaps while gc is marking makes gc abort: nothing deleted, no marks left.
    v4 = freg.register(fake_run(runs_uri, "r4", seed=4, minimal=True))
    assert v4 == "v0005"
    gc_racing = Registry(HookStore(freg.store, lambda op, key: op == "put" and key.endswith("gc.json"),  # type: ignore
                                   lambda: Registry(freg.store, MODEL).promote(v3, v1, {}, "b")), MODEL)
    with pytest.raises(ConflictError, match="the champion moved while gc ran .from v0001 to v0003.; nothing was "
                                            "deleted"):
        gc_racing.gc(keep=1, pending_runs=("r2",))
    assert freg.list_versions() == [v1, v3, v4] and freg.champion().version == v3  # type: ignore[union-attr]
    assert freg.gc(keep=2)["deleted"] == [v4]


# ------------------------------------------------------------------------------------------- pointer trust
POINTER = f"registry/{MODEL}/champion.json"


def write_pointer(reg: Registry, record: dict[str, Any]) -> None:
    """A hand edit of champion.json (a plain overwrite, as an operator with store access would make)."""
    reg.store.put_bytes(POINTER, json.dumps(record, sort_keys=True).encode())


def test_forged_champion_pointer_is_refused_and_never_logged(freg: Registry, runs_uri: str, tmp_path: Path) -> None:
    v1, v2 = (freg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(2))
    freg.promote(v1, None, {"approver": "alice"}, "alice", "ok", evidence_of("r0"))
    good = freg.champion()
    assert good is not None
    original = freg.store.get_bytes(POINTER)
    ledger = freg.ledger()
    forged = {**good.record, "record_id": uuid.uuid4().hex, "version": v2, "previous": v1, "generation": 2,
              "actor": "mallory", "reason": "trust me"}
    cases = [
        (forged, rf"{POINTER} \(champion v0002, record {forged['record_id']}\) is not in the ledger and cannot be "
                 rf"the record of an interrupted move: no intent registry/{MODEL}/intents/{forged['record_id']}"
                 r".json witnessed it .* \(the ledger's latest move \(seq 3\) made v0001 champion\); restore the "
                 "pointer from ledger record 3"),
        ({**good.record, "version": v2}, rf"{POINTER} \(champion v0002, record {good.record['record_id']}\) "
                                         "differs from its ledger record 3 in version"),
        ({**forged, "previous": None, "generation": 1}, "its previous champion is none, expected v0001; its "
                                                        "generation is 1, expected 2"),
    ]
    for record, message in cases:
        write_pointer(freg, record)
        for call in (freg.champion, freg.history, lambda: freg.promote(v2, v1, {}, "a"),
                     lambda: freg.rollback(v1, "x", "a"), lambda: freg.gc(keep=1)):
            with pytest.raises(UnexplainedPointer, match=message):
                call()
        assert freg.ledger() == ledger  # nothing was "repaired" into the ledger, nothing was moved
    # Serving fails closed: predict@champion refuses the pointer instead of scoring what it names.
    from tl_core.export.predict import predict_file

    pd.DataFrame({"image": [b"x"]}).to_parquet(tmp_path / "in.parquet")
    with pytest.raises(UnexplainedPointer, match="cannot be the record of an interrupted move"):
        predict_file(make_spec(freg.store.uri), f"{MODEL}@champion", str(tmp_path / "in.parquet"),
                     str(tmp_path / "out.parquet"))
    assert not (tmp_path / "out.parquet").exists()
    # A deleted pointer is not "no champion yet" (that would make the next run a first-model bootstrap).
    freg.store.delete(POINTER)
    with pytest.raises(UnexplainedPointer, match=rf"{POINTER} is missing, but the ledger's latest move \(seq 3\) "
                                                 "made v0001 champion"):
        freg.champion()
    freg.store.put_bytes(POINTER, original)  # restored from the ledger: trusted again, nothing logged
    assert freg.champion().version == v1 and freg.ledger() == ledger  # type: ignore[union-attr]


def test_restored_old_pointer_and_unverifiable_crash_repair_are_refused(freg: Registry, runs_uri: str) -> None:
    v1, v2 = (freg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(2))
    freg.promote(v1, None, {}, "a")
    old = freg.store.get_bytes(POINTER)
    freg.promote(v2, v1, {}, "a")
    latest = freg.store.get_bytes(POINTER)
    freg.store.put_bytes(POINTER, old)  # an old copy of champion.json put back by hand
    with pytest.raises(UnexplainedPointer, match=rf"{POINTER} \(champion v0001, record [0-9a-f]+\) names an "
                                                 r"earlier ledger record, but the ledger's latest move \(seq 4\) "
                                                 "made v0002 champion"):
        freg.champion()
    # A move that crashed before its ledger append, with its intent, is repaired - unless its version no longer
    # verifies (the files changed since): then it is refused, not recorded.
    freg.store.put_bytes(POINTER, latest)  # the pointer the ledger recorded: trusted again
    v3 = freg.register(fake_run(runs_uri, "r3", seed=3, minimal=True))
    crashing = Registry(CrashingStore(freg.store, crash_after=2), MODEL)  # type: ignore[arg-type]
    with pytest.raises(Crash, match="champion.json"):
        crashing.promote(v3, v2, {}, "a")
    model_key = vkey(v3, "models/frozen/model.safetensors")
    good = freg.store.get_bytes(model_key)
    freg.store.put_bytes(model_key, good + b"tampered")
    with pytest.raises(UnexplainedPointer, match=r"its version does not verify: .*v0003 is unusable: file "
                                                 "models/frozen/model.safetensors does not match"):
        Registry(freg.store, MODEL).champion()
    freg.store.put_bytes(model_key, good)
    assert Registry(freg.store, MODEL).champion().version == v3  # type: ignore[union-attr]
    moves = [(r["action"], r["version"]) for r in freg.history() if r["action"] in ("promote", "rollback")]
    assert moves == [("promote", v1), ("promote", v2), ("promote", v3)]


def test_eight_identical_concurrent_promotions_one_made_seven_already_made(reg: Registry, runs_uri: str) -> None:
    v1 = reg.register(fake_run(runs_uri, "r1", minimal=True))
    barrier = threading.Barrier(8)
    results: list[dict[str, Any]] = []
    unexpected: list[BaseException] = []

    def promote(i: int) -> None:
        r = Registry(reg.store, MODEL, cache_dir=reg.cache_dir)
        barrier.wait()
        try:
            results.append(r.promote(v1, None, {"approver": "alice"}, f"caller-{i}", "go", evidence_of("r1")))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            unexpected.append(exc)

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert unexpected == [] and len(results) == 8
    assert sorted(r["made_now"] for r in results) == [False] * 7 + [True]
    assert len({(r["record_id"], r["seq"], r["actor"]) for r in results}) == 1  # all name the winner's record
    promotions = [r for r in reg.history() if r["action"] == "promote"]
    assert len(promotions) == 1 and promotions[0]["record_id"] == results[0]["record_id"]


# ------------------------------------------------------------------------------------------- corrupt metadata
def test_corrupt_registry_metadata_names_the_key(freg: Registry, runs_uri: str) -> None:
    v1, v2 = (freg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(2))
    freg.promote(v1, None, {}, "a")
    freg.store.put_bytes(vkey(v2, "manifest.json"), b"\xff garbage")
    with pytest.raises(MetadataError, match=rf"{vkey(v2, 'manifest.json')} is not valid JSON .*; "
                                            "expected a VersionManifest"):
        freg.show(v2)
    # another schema version is refused naming the file, the version found and the ones read
    freg.store.put_bytes(vkey(v2, "manifest.json"), json.dumps({**freg.show(v1), "schema_version": 9}).encode())
    with pytest.raises(MetadataError, match=rf"{vkey(v2, 'manifest.json')} is a VersionManifest of schema version "
                                            r"9; this tl_core reads version 2 or 1"):
        freg.manifest(v2)
    assert freg.show(v1)["version"] == v1  # one bad manifest does not hide the others
    freg.store.put_bytes(f"registry/{MODEL}/by-run/r1.json", b'{"run_id": "r1"}')
    with pytest.raises(MetadataError, match=rf"registry/{MODEL}/by-run/r1.json: 'version' is None; expected a "
                                            "version such as v0001"):
        freg.version_of_run("r1")
    pointer = json.loads(freg.store.get_bytes(POINTER))
    write_pointer(freg, {k: v for k, v in pointer.items() if k != "version"})
    with pytest.raises(MetadataError, match=rf"{POINTER} is not a valid champion pointer: 'version' is missing "
                                            r"\(expected a version such as v0001\)"):
        freg.champion()
    freg.store.put_bytes(POINTER, b"[1, 2]")
    with pytest.raises(MetadataError, match=rf"{POINTER} is unreadable: it holds a JSON list; expected the "
                                            "champion record"):
        freg.champion()
    write_pointer(freg, pointer)
    # A garbage ledger entry: reads name it, and nothing is appended behind it.
    bad = f"registry/{MODEL}/ledger/00000004.json"
    for garbage, message in ((b"garbage", "not valid JSON"),
                             (b'{"action": "reject", "seq": 9}', "'seq' is 9 and 'action' is 'reject'; expected "
                                                                 "seq 4")):
        freg.store.put_bytes(bad, garbage)
        fresh = Registry(freg.store, MODEL)
        with pytest.raises(MetadataError, match=rf"{bad} is unreadable: {message}"):
            fresh.history()
        with pytest.raises(MetadataError, match=rf"refusing to append to the ledger of {MODEL} behind an unreadable "
                                                rf"record: .*{bad} is unreadable"):
            fresh.record_rejection("r9", ["x"], "gate")
        assert fresh.store.list(f"registry/{MODEL}/ledger/")[-1] == bad  # nothing written after it


CRASH_IN_SWAP = """
import os, sys, time
from tl_core.registry import Registry


def hold(src, dst):  # the swap of champion.json: stop here, holding the store's claim, until killed
    print("claimed", flush=True)
    time.sleep(300)


os.replace = hold
Registry(sys.argv[1], sys.argv[2]).promote(sys.argv[3], sys.argv[4], {}, "doomed")
"""


def test_promoter_killed_inside_the_swap_blocks_nothing(freg: Registry, runs_uri: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    v1, v2, v3 = (freg.register(fake_run(runs_uri, f"r{i}", seed=i, minimal=True)) for i in range(3))
    freg.promote(v1, None, {}, "a")
    freg.promote(v2, v1, {}, "a")
    proc = subprocess.Popen([sys.executable, "-c", CRASH_IN_SWAP, freg.store.uri, MODEL, v3, v2],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
        with pytest.raises(ConflictError, match=rf"the store refused the compare-and-swap although the champion is "
                                                rf"still v0002: .*holds the claim on etag \w+ \(pid {proc.pid} on "):
            freg.rollback(None, "incident", "oncall")  # a live claim is respected
    finally:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    # The claim it left is stale (its process is gone): the emergency path and the next promotion go through.
    assert freg.rollback(None, "incident", "oncall")["version"] == v1
    assert "broke the stale compare-and-swap claim" in caplog.text
    assert freg.promote(v3, v1, {}, "a")["made_now"] is True
    moves = [(r["action"], r["version"], r["actor"]) for r in freg.history() if r["action"] in ("promote",
                                                                                               "rollback")]
    assert moves == [("promote", v1, "a"), ("promote", v2, "a"), ("rollback", v1, "oncall"), ("promote", v3, "a")]


def test_a_version_holds_every_file_the_evidence_hash_covers(freg: Registry, runs_uri: str) -> None:
    """One definition of a candidate's files (RunContext.candidate_files): what the gate's evidence hash covers
    is what the registry copies, so the two cannot drift apart."""
    run = fake_run(runs_uri, "r1")
    version = freg.register(run)
    registered = set(freg.show(version)["files"])
    covered = {key[len(run.prefix) + 1:] for key in run.candidate_files()}
    assert covered and covered <= registered, covered - registered
    assert "models/frozen/resume/state.pt" not in registered  # transient resume state is neither
