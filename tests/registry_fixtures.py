"""Registry test helpers: a run with real (tiny) model files, ONNX and evidence, ready to register."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save

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


def fake_run(runs_uri: str, run_id: str, seed: int = 0, minimal: bool = False) -> RunContext:
    """A run with real (tiny) model files: safetensors, config and, unless minimal, ONNX + golden + evidence."""
    spec = make_spec(runs_uri)
    ctx = RunContext.open(spec, run_id)
    rng = np.random.default_rng(seed)
    weight = (W + rng.normal(0, 0.1, W.shape)).astype(np.float32)
    ctx.write_json("candidate.json", {"selected": "frozen", "strategies": {"frozen": {"val_metric": 0.9}}})
    ctx.store.put_bytes(ctx.model_key("frozen", "model.safetensors"), save({"head.weight": weight.T.copy()}))
    ctx.write_json("models/frozen/model_config.json", {
        "format": "tl-classifier/1", "backbone": spec.backbone.model_dump(mode="json"), "seed": 7,
        "train": spec.train.model_dump(mode="json")})
    if minimal:
        return ctx
    ctx.save_spec()
    ctx.write_json("models/frozen/preprocessing/data_config.json", {"kind": "image"})
    ctx.store.put_bytes(ctx.model_key("frozen", "preprocessing", "vocab.txt"), b"a\nb\n")
    ctx.store.put_bytes(ctx.model_key("frozen", "resume", "state.pt"), b"\x80\x04pickle")  # transient: skipped
    ctx.store.put_bytes(ctx.key("export/model.onnx"), tiny_onnx(weight))
    x = rng.normal(size=(5, 4)).astype(np.float32)
    ctx.write_npz("export/golden.npz", **{"input.pixel_values": x, "logits": x @ weight})
    ctx.write_json("snapshot/manifest.json", {"content_hash": f"hash-{run_id}"})
    ctx.write_json("evaluation/report.json", {"models": {"frozen": {"overall": {"accuracy": 0.8 + seed / 100,
                                                                                "macro_f1": 0.7, "n": 50},
                                                                    "temperature": 1.3}}})
    ctx.write_json("gate/decision.json", {"passed": True, "evidence_hash": "e" * 64, "bootstrap": False})
    return ctx
