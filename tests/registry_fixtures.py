"""Registry test helpers: a run with real (tiny) model files, ONNX and evidence, ready to register."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save

from tl_core.artifacts import EvaluationReport, GateDecision, ModelConfig, Selection, SnapshotManifest
from tl_core.config import parse_spec
from tl_core.runs import RunContext

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
MODEL = "reg-test"


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
    return parse_spec({"name": MODEL, "modality": "image", "labels": ["a", "b", "c"],
                       "backbone": {"library": "timm", "name": "test_resnet", "weights": "none", "revision": "r42"},
                       "data": {"input_column": "image"}, "store": store_uri})


def evidence_of(run_id: str) -> str:
    """The evidence hash of fake_run(run_id)'s gate decision (what an approval of that run names)."""
    return hashlib.sha256(f"evidence of {run_id}".encode()).hexdigest()


def gate_decision(run_id: str, passed: bool = True, reasons: tuple[str, ...] = ()) -> GateDecision:
    """A gate decision as the gate step writes it (no reasons needed for a registry test)."""
    return GateDecision(decision="PASS" if passed else "FAIL", passed=passed, bootstrap=False,
                        reasons=[{"check": "minimum", "status": "FAIL", "text": r} for r in reasons],
                        evidence_hash=evidence_of(run_id), evidence={}, summary={}, summary_markdown="",
                        candidate="frozen", champion_version=None, champion_etag=None)


def evaluation_report(run_id: str, accuracy: float) -> EvaluationReport:
    """The smallest valid evaluation report: the frozen candidate's overall metrics and temperature."""
    metrics = {"accuracy": accuracy, "macro_f1": 0.7, "n": 50}
    frozen = {"role": "candidate", "strategy": "frozen", "temperature": 1.3, "overall": metrics,
              "before_temperature": {}, "per_class": {}, "confusion": [], "slices": {}, "intervals": {},
              "reliability": {}}
    return EvaluationReport.model_validate({
        "run_id": run_id, "model": MODEL, "labels": ["a", "b", "c"], "primary_metric": "macro_f1", "test_size": 50,
        "unlabelled_test_rows": 0, "candidate": "frozen", "slices": {},
        "champion": {"status": "none", "reason": "no champion yet"}, "models": {"frozen": frozen},
        "comparisons": {}, "bootstrap": {"n_boot": 10, "seed": 0, "confidence": 0.95, "method": "paired",
                                         "quantile_levels": [], "continuous_overall": [], "continuous_slices": []},
        "gate_policy": {}, "curves": {}, "audit": None})


def fake_run(runs_uri: str, run_id: str, seed: int = 0, minimal: bool = False, gate: bool | None = True) -> RunContext:
    """A run with real (tiny) model files: safetensors, config, a gate decision (``gate``: passed, failed, or
    None for none) and, unless minimal, ONNX + golden + evidence."""
    spec = make_spec(runs_uri)
    ctx = RunContext.open(spec, run_id)
    rng = np.random.default_rng(seed)
    weight = (W + rng.normal(0, 0.1, W.shape)).astype(np.float32)
    ctx.write(Selection(selected="frozen", primary_metric="macro_f1",
                        strategies={"frozen": {"val_metric": 0.9, "strategy": "frozen", "backbone": "default"}}))
    ctx.store.put_bytes(ctx.model_key("frozen", "model.safetensors"), save({"head.weight": weight.T.copy()}))
    ctx.write(ModelConfig(model=MODEL, strategy="frozen", labels=list(spec.labels), kind="timm", num_features=4,
                          backbone=spec.backbone.model_dump(mode="json"), preprocessing={"kind": "image"},
                          input_column="image", seed=7, train=spec.train.model_dump(mode="json"),
                          spec_fingerprint=spec.fingerprint(), format="tl-classifier/1"), strategy="frozen")
    if gate is not None:
        ctx.write(gate_decision(run_id, gate, () if gate else ("macro_f1 0.41 < minimum 0.60",)))
    if minimal:
        return ctx
    ctx.save_spec()
    ctx.write_json("models/frozen/preprocessing/data_config.json", {"kind": "image"})
    ctx.store.put_bytes(ctx.model_key("frozen", "preprocessing", "vocab.txt"), b"a\nb\n")
    ctx.store.put_bytes(ctx.model_key("frozen", "resume", "state.pt"), b"\x80\x04pickle")  # transient: skipped
    ctx.store.put_bytes(ctx.key("export/model.onnx"), tiny_onnx(weight))
    x = rng.normal(size=(5, 4)).astype(np.float32)
    ctx.write_npz("export/golden.npz", **{"input.pixel_values": x, "logits": x @ weight})
    ctx.write(SnapshotManifest(model=MODEL, dataset="fake", data_root=runs_uri, logical_date="2026-11-01",
                               window={"start": "2026-11-01", "end": "2026-11-01"}, window_days=1,
                               spec_fingerprint=spec.fingerprint(), partitions=[], total_rows=0, rows_per_label={},
                               content_hash=f"hash-{run_id}", ignored=[], ignored_count=0, completion_marker=None))
    ctx.write(evaluation_report(run_id, 0.8 + seed / 100))
    return ctx
