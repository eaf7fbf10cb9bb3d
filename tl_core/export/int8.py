"""The int8 artifact: onnxruntime dynamic quantization of the exported fp32 graph, measured against it.

Made by the export step when ``spec.export.quantize_int8``: weights of MatMul / Gather (and Conv) become int8,
activations are quantized on the fly (no calibration data). Both graphs score the whole test split through
onnxruntime (CPU provider: the integer kernels live there); tl_core.evaluate.int8 measures agreement, the
primary metric and ECE with the paired bootstrap, and tl_core.gate.int8 judges them against the spec.

Writes ``export/model.int8.onnx`` and then ``export/int8.json`` (the decision: passed, reasons, the
measurement, the artifact's sha256). The registry copies the artifact into a version only when that decision
passed and the checksum still matches; a failed int8 never blocks the fp32 model.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tl_core.artifacts import Int8Report
from tl_core.evaluate.int8 import measure_int8
from tl_core.export.predict import ServedModel, score
from tl_core.gate.int8 import decide_int8
from tl_core.models.artifacts import LoadedModel
from tl_core.runs import INT8_FILE, RunContext

logger = logging.getLogger(__name__)


def quantize(fp32_path: Path, out_path: Path) -> None:
    """Dynamic (calibration-free) int8 quantization of an ONNX file: int8 weights with one scale per output
    channel (per-tensor scales flipped 7% of MiniLM's top-1 on real texts, per-channel 2%: bench/onnx_latency.py)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, per_channel=True)


def _served(path: Path, loaded: LoadedModel) -> ServedModel:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return ServedModel(session, loaded.config, loaded.preprocessing, loaded.tokenizer, "run")


def measure_paths(loaded: LoadedModel, fp32_path: Path, int8_path: Path, test: pd.DataFrame, metric: str,
                  n_boot: int, seed: int, confidence: float) -> dict[str, Any]:
    """Score ``test`` (its label column gives y; unknown labels count for agreement only) with both graphs."""
    _, fp32 = score(_served(fp32_path, loaded), test)
    _, int8 = score(_served(int8_path, loaded), test)
    index = {name: i for i, name in enumerate(loaded.labels)}
    labels = test["label"] if "label" in test.columns else pd.Series([None] * len(test))
    y = np.array([index.get(str(v), -1) for v in labels], dtype=np.int64)
    return measure_int8(y, fp32, int8, metric, n_boot, seed, confidence)


def run_int8(ctx: RunContext, loaded: LoadedModel, fp32_path: Path) -> Int8Report:
    """Quantize, measure on the test split, gate, write the artifact and then its decision; returns the decision."""
    int8_path = fp32_path.with_name("model.int8.onnx")
    quantize(fp32_path, int8_path)
    examples = ctx.read_examples()
    test = examples[examples["split"] == "test"].reset_index(drop=True)
    gate = ctx.spec.gate
    measured = measure_paths(loaded, fp32_path, int8_path, test, ctx.spec.train.primary_metric, gate.n_bootstrap,
                             gate.bootstrap_seed, gate.confidence)
    passed, reasons = decide_int8(measured, ctx.spec.export)
    data = int8_path.read_bytes()
    ctx.store.put_bytes(ctx.key(INT8_FILE), data)
    export = ctx.spec.export
    failures = [r.text for r in reasons if r.status == "FAIL"]
    report = Int8Report(
        passed=passed, decision="PASS" if passed else "FAIL", failures=failures, reasons=reasons, measured=measured,
        file=INT8_FILE, sha256=hashlib.sha256(data).hexdigest(), size=len(data), fp32_size=fp32_path.stat().st_size,
        policy={"int8_margin": export.int8_margin, "int8_min_agreement": export.int8_min_agreement,
                "int8_ece_tolerance": export.int8_ece_tolerance})
    ctx.write(report)
    logger.info("int8 artifact %s: agreement %.4f on %d test examples, %s", "PASS" if passed else "FAIL",
                measured["agreement"], measured["examples"], "; ".join(failures) or "all checks pass")
    return report
