from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save

from tl_core.cli import main as tl_main
from tl_core.config import parse_spec
from tl_core.registry import ConflictError, IntegrityError, Registry, RegistryError
from tl_core.runs import RunContext
from tl_core.store import ObjectStore, open_store

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def tiny_onnx(weight: np.ndarray) -> bytes:
    x = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 4])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["pixel_values", "W"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)],
        "tiny", [x], [logits, probs], [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_spec(store_uri: str) -> Any:
    return parse_spec({"name": "reg-test", "modality": "image", "labels": ["a", "b", "c"],
                       "backbone": {"library": "timm", "name": "test_resnet", "weights": "none"},
                       "data": {"input_column": "image"}, "store": store_uri})


def fake_run(spec: Any, run_id: str, seed: int = 0) -> RunContext:
    """A run with real (tiny) model files: safetensors, config, ONNX and its golden predictions."""
    ctx = RunContext.open(spec, run_id)
    rng = np.random.default_rng(seed)
    weight = (W + rng.normal(0, 0.1, W.shape)).astype(np.float32)
    ctx.write_json("candidate.json", {"selected": "frozen", "strategies": {"frozen": {"val_metric": 0.9}}})
    ctx.store.put_bytes(ctx.model_key("frozen", "model.safetensors"), save({"head.weight": weight.T.copy()}))
    ctx.write_json("models/frozen/model_config.json", {"format": "tl-classifier/1", "backbone": {"name": "x"},
                                                       "seed": 0, "train": {}})
    ctx.write_json("models/frozen/preprocessing/data_config.json", {"kind": "image"})
    ctx.store.put_bytes(ctx.key("export/model.onnx"), tiny_onnx(weight))
    x = rng.normal(size=(5, 4)).astype(np.float32)
    ctx.write_npz("export/golden.npz", **{"input.pixel_values": x, "logits": x @ weight})
    ctx.write_json("snapshot/manifest.json", {"content_hash": f"hash-{run_id}"})
    ctx.write_json("gate/decision.json", {"passed": True, "evidence_hash": "e" * 64, "bootstrap": False})
    return ctx


@pytest.fixture()
def setup(store_uri: str, tmp_path: Path):
    spec = make_spec(store_uri)
    return spec, Registry(store_uri, spec.name, cache_dir=tmp_path / "cache")


def test_register_is_immutable_and_idempotent(setup) -> None:
    spec, reg = setup
    run = fake_run(spec, "run-1")
    v1 = reg.register(run)
    assert v1 == "v0001" and reg.register(run) == "v0001"
    manifest = reg.show(v1)
    assert manifest["snapshot_hash"] == "hash-run-1" and manifest["strategy"] == "frozen"
    assert set(manifest["files"]) >= {"models/frozen/model.safetensors", "export/model.onnx", "export/golden.npz"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert "torch" in manifest["library_versions"]
    assert reg.register(fake_run(spec, "run-2", seed=1)) == "v0002"
    assert reg.list_versions() == ["v0001", "v0002"]
    assert (reg.load_version(v1) / "export" / "model.onnx").exists()


def test_promote_rollback_and_history(setup) -> None:
    spec, reg = setup
    v1, v2 = reg.register(fake_run(spec, "r1")), reg.register(fake_run(spec, "r2", seed=1))
    reg.promote(v1, None, {"approver": "alice"}, "alice", "first model", "h1")
    reg.promote(v2, v1, {"approver": "bob"}, "bob", "better", "h2")
    assert reg.champion().version == v2  # type: ignore[union-attr]
    with pytest.raises(ConflictError, match="expected champion v0001, but the current champion is v0002"):
        reg.promote(v1, v1, {}, "eve")
    record = reg.rollback(None, "regression in prod", "carol")
    assert record["version"] == v1 and record["previous"] == v2
    actions = [(r["action"], r.get("version")) for r in reg.history()]
    assert actions[-3:] == [("promote", v1), ("promote", v2), ("rollback", v1)]
    assert [r["seq"] for r in reg.history()] == list(range(1, len(actions) + 1))


def test_rollback_refuses_tampered_file_and_bad_onnx(setup) -> None:
    spec, reg = setup
    v1, v2 = reg.register(fake_run(spec, "r1")), reg.register(fake_run(spec, "r2", seed=1))
    reg.promote(v1, None, {}, "a")
    reg.promote(v2, v1, {}, "a")
    reg.store.put_bytes(f"registry/{spec.name}/versions/{v1}/export/golden.npz", b"tampered")
    with pytest.raises(IntegrityError, match="file export/golden.npz does not match its manifest"):
        reg.rollback(v1, "test", "a")
    assert reg.champion().version == v2  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="invalid version '../v1'"):
        reg.rollback("../v1", "x", "a")
    with pytest.raises(ValueError, match="needs a reason"):
        reg.rollback(None, "  ", "a")


def test_golden_mismatch_blocks_rollback(setup) -> None:
    spec, reg = setup
    run = fake_run(spec, "r1")
    run.write_npz("export/golden.npz", **{"input.pixel_values": np.ones((2, 4), np.float32),
                                          "logits": np.zeros((2, 3), np.float32)})
    v1 = reg.register(run)
    v2 = reg.register(fake_run(spec, "r2", seed=1))
    reg.promote(v2, None, {}, "a")
    with pytest.raises(IntegrityError, match="differ from the golden predictions"):
        reg.rollback(v1, "x", "a")


def test_bad_names_rejected(setup, store_uri: str) -> None:
    for bad in ("../x", "a/b", "UPPER", ""):
        with pytest.raises(ValueError, match="invalid model name"):
            Registry(store_uri, bad)
    _, reg = setup
    with pytest.raises(ValueError, match="invalid version"):
        reg.show("v1/../../x")


def test_32_concurrent_promotions_one_wins(setup) -> None:
    spec, reg = setup
    base = reg.register(fake_run(spec, "base"))
    reg.promote(base, None, {}, "a")
    versions = [reg.register(fake_run(spec, f"c{i}", seed=i)) for i in range(32)]
    barrier = threading.Barrier(32)
    outcomes: list[str] = []
    errors: list[str] = []

    def contend(v: str) -> None:
        r = Registry(reg.store, spec.name, cache_dir=reg.cache_dir)
        barrier.wait()
        try:
            r.promote(v, base, {}, f"actor-{v}")
            outcomes.append(v)
        except ConflictError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=contend, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 1 and len(errors) == 31
    winner = outcomes[0]
    assert all(f"current champion is {winner}" in e for e in errors)
    history = reg.history()
    promotes = [r for r in history if r["action"] == "promote" and r["previous"] == base]
    assert len(promotes) == 1 and promotes[0]["version"] == winner
    assert [r["seq"] for r in history] == list(range(1, len(history) + 1))


class Crash(RuntimeError):
    pass


class CrashingStore:
    """Delegates to a real store; the Nth write raises (a process killed mid-operation)."""

    def __init__(self, inner: ObjectStore, crash_at: int) -> None:
        self.inner, self.crash_at, self.writes = inner, crash_at, 0
        self.uri = inner.uri

    def put_bytes(self, key: str, data: bytes, **kw: Any) -> str:
        self.writes += 1
        if self.writes == self.crash_at:
            raise Crash(f"killed before writing {key}")
        return self.inner.put_bytes(key, data, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _consistent(reg: Registry, allowed: set[str | None]) -> None:
    champion = reg.champion()  # reconciles a ledger left behind by a crash
    assert (champion.version if champion else None) in allowed
    history = reg.history()
    assert [r["seq"] for r in history] == list(range(1, len(history) + 1))
    moves = [r for r in history if r["action"] in ("promote", "rollback")]
    assert (moves[-1]["version"] if moves else None) == (champion.version if champion else None)
    assert len({r["record_id"] for r in moves}) == len(moves)
    if champion:
        reg.check_loadable(champion.version)


@pytest.mark.parametrize("operation", ["register", "promote", "rollback"])
def test_crash_after_each_write_leaves_consistent_state(tmp_path: Path, operation: str) -> None:
    crash_at = 1
    while True:
        uri = (tmp_path / f"s{crash_at}").as_uri()
        spec = make_spec(uri)
        reg = Registry(uri, spec.name, cache_dir=tmp_path / "cache")
        v1 = reg.register(fake_run(spec, "r1"))
        reg.promote(v1, None, {}, "a")
        v2 = reg.register(fake_run(spec, "r2", seed=1)) if operation != "register" else None
        if operation == "rollback":
            reg.promote(v2, v1, {}, "a")  # type: ignore[arg-type]
        crashing = Registry(CrashingStore(open_store(uri), crash_at), spec.name,  # type: ignore[arg-type]
                            cache_dir=tmp_path / "cache")
        try:
            if operation == "register":
                crashing.register(fake_run(spec, "r3", seed=3))
            elif operation == "promote":
                crashing.promote(v2, v1, {}, "a")  # type: ignore[arg-type]
            else:
                crashing.rollback(None, "incident", "a")
            finished = True
        except Crash:
            finished = False
        _consistent(reg, {v1, v2})
        if operation == "register":  # re-running a crashed registration completes it
            assert reg.register(fake_run(spec, "r3", seed=3)) in reg.list_versions()
        if finished:
            break
        crash_at += 1
    assert crash_at >= 2


def test_gc_keeps_champion_and_last_n(setup) -> None:
    spec, reg = setup
    versions = [reg.register(fake_run(spec, f"r{i}", seed=i)) for i in range(5)]
    prev = None
    for v in versions[:4]:
        reg.promote(v, prev, {}, "a")
        prev = v
    plan = reg.gc(keep=2, dry_run=True, pending_runs=("r0",))
    assert plan["would_delete"] == [versions[1], versions[4]]
    assert reg.list_versions() == versions
    result = reg.gc(keep=2, pending_runs=("r0",))
    assert result["deleted"] == [versions[1], versions[4]]
    assert reg.list_versions() == [versions[0], versions[2], versions[3]]
    assert reg.champion().version == versions[3]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="at least 1"):
        reg.gc(keep=0)


def test_shadow_versions_need_explicit_approval(setup) -> None:
    spec, reg = setup
    v = reg.register(fake_run(spec, "backfill-1"), shadow=True)
    with pytest.raises(RegistryError, match="shadow version"):
        reg.promote(v, None, {}, "a")
    reg.promote(v, None, {"allow_shadow": True}, "a")


def test_cli_history_and_json(setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, reg = setup
    v1 = reg.register(fake_run(spec, "r1"))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    approval = tmp_path / "approval.json"
    approval.write_text(json.dumps({"approver": "alice", "comment": "ok"}))
    assert tl_main(["registry", "promote", v1, "--expect-champion", "none", "--approval", str(approval),
                    "--spec", str(spec_file), "--actor", "alice"]) == 0
    capsys.readouterr()
    assert tl_main(["registry", "history", "--spec", str(spec_file)]) == 0
    out = capsys.readouterr().out
    assert "promote" in out and v1 in out and "alice" in out and out.splitlines()[0].split()[:3] == ["seq", "time",
                                                                                                    "action"]
    assert tl_main(["registry", "list", "--spec", str(spec_file), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["version"] == v1 and rows[0]["champion"] is True
    assert tl_main(["registry", "promote", v1, "--expect-champion", "v0009", "--spec", str(spec_file)]) == 1
    assert "current champion is v0001" in capsys.readouterr().err

