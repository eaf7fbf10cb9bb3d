"""ONNX export with a parity gate.

The exported graph takes the backbone's inputs (``input_ids`` + ``attention_mask`` for text, ``pixel_values``
for images; dynamic batch and sequence axes) and returns ``logits`` and calibrated ``probabilities``
(softmax of logits / T, the temperature fitted on the calibration split folded into the graph).
Parity on held-out test examples: max |logit(torch) - logit(onnxruntime)| <= spec.export.max_abs_logit_diff,
identical top-1 on every example, |ECE(torch) - ECE(onnxruntime)| <= spec.export.max_ece_diff.
A failed check raises :class:`ParityError` (the pipeline then never registers the model).
With ``spec.export.quantize_int8`` an int8 artifact is made and gated on its own (tl_core.export.int8).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tl_core.artifacts import ModelConfig, ParityReport, Selection
from tl_core.errors import TLError
from tl_core.evaluate.metrics import ece, softmax
from tl_core.models.artifacts import LoadedModel, load_model_dir
from tl_core.models.preprocessing import Encoded, collate, encode_split, image_transform
from tl_core.runs import RunContext
from tl_core.store import local_copy

logger = logging.getLogger(__name__)

PARITY_EXAMPLES = 256
GOLDEN_EXAMPLES = 8


class ParityError(TLError):
    """torch and onnxruntime disagree beyond the spec's tolerance."""


class CalibratedClassifier(nn.Module):
    """The served graph: logits and softmax(logits / temperature)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("inv_temperature", torch.tensor(1.0 / temperature, dtype=torch.float32))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(*inputs)
        return logits, torch.softmax(logits * self.inv_temperature, dim=-1)


def input_names(kind: str) -> list[str]:
    return ["input_ids", "attention_mask"] if kind == "transformers" else ["pixel_values"]


def export_onnx(loaded: LoadedModel, temperature: float, sample: tuple[torch.Tensor, ...], path: Path,
                opset: int) -> None:
    import onnx

    wrapper = CalibratedClassifier(loaded.model.eval(), temperature).eval()
    names = input_names(loaded.config.kind)
    dynamic: dict[str, dict[int, str]] = {n: {0: "batch"} for n in names}
    if loaded.config.kind == "transformers":
        dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic.update(logits={0: "batch"}, probabilities={0: "batch"})
    with torch.no_grad():
        torch.onnx.export(wrapper, sample, str(path), input_names=names, output_names=["logits", "probabilities"],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)
    onnx.checker.check_model(str(path), full_check=True)


def onnx_inputs(kind: str, batch: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in zip(input_names(kind), batch, strict=True)}


def encode_for(loaded: LoadedModel, df: pd.DataFrame) -> tuple[Encoded, Any, int]:
    enc = encode_split(df, loaded.config.input_column, loaded.labels, loaded.preprocessing, loaded.tokenizer)
    transform = image_transform(loaded.preprocessing, False) if loaded.config.kind == "timm" else None
    pad_id = int(getattr(loaded.tokenizer, "pad_token_id", 0) or 0)
    return enc, transform, pad_id


def parity_report(loaded: LoadedModel, session: Any, df: pd.DataFrame, temperature: float,
                  max_abs: float, max_ece: float, reference: np.ndarray | None = None) -> dict[str, Any]:
    """Compare torch and onnxruntime on ``df`` example by example (batches of 32, as served).

    ``reference``: the logits the evaluation uses for these rows (computed at training time). Comparing the
    served path against them catches a preprocessing contract that drifted from the one trained with.
    """
    enc, transform, pad_id = encode_for(loaded, df)
    torch_logits, ort_logits = [], []
    for start in range(0, len(enc), 32):
        idx = np.arange(start, min(start + 32, len(enc)))
        batch = collate(enc, idx, pad_id, transform)
        with torch.no_grad():
            torch_logits.append(loaded.model(*batch).numpy())
        ort_logits.append(session.run(["logits"], onnx_inputs(loaded.config.kind, batch))[0])
    t, o = np.concatenate(torch_logits), np.concatenate(ort_logits)
    diff = np.abs(t - o).max(1)
    top1_mismatch = np.flatnonzero(t.argmax(1) != o.argmax(1))

    labels = enc.labels
    known = labels >= 0
    ece_torch = ece(softmax(t, temperature)[known], labels[known])
    ece_onnx = ece(softmax(o, temperature)[known], labels[known])
    worst = np.argsort(-diff)[:5]
    failures = []
    ref_diff = float(np.abs(reference - o).max(initial=0.0)) if reference is not None else None
    if ref_diff is not None and ref_diff > max_abs:
        failures.append(
            f"served ONNX logits differ from the training-time logits by up to {ref_diff:.3g} (> {max_abs:g}): "
            "the preprocessing contract does not reproduce what the model was evaluated with"
        )
    if diff.max(initial=0.0) > max_abs:
        failures.append(f"max |logit diff| {diff.max():.3g} exceeds {max_abs:g}")
    if len(top1_mismatch):
        failures.append(f"top-1 differs on {len(top1_mismatch)} of {len(t)} examples")
    if abs(ece_torch - ece_onnx) > max_ece:
        failures.append(f"|ECE diff| {abs(ece_torch - ece_onnx):.3g} exceeds {max_ece:g}")
    return {
        "passed": not failures,
        "failures": failures,
        "examples": len(t),
        "max_abs_logit_diff": float(diff.max(initial=0.0)),
        "max_abs_diff_vs_training_logits": ref_diff,
        "top1_mismatches": [enc.ids[i] for i in top1_mismatch[:20]],
        "ece_torch": ece_torch,
        "ece_onnx": ece_onnx,
        "temperature": temperature,
        "worst_examples": [{"example_id": enc.ids[i], "max_abs_logit_diff": float(diff[i])} for i in worst],
        "tolerances": {"max_abs_logit_diff": max_abs, "max_ece_diff": max_ece},
    }


def stored_temperature(ctx: RunContext, strategy: str) -> float:
    """The temperature training fitted and stored in the model's config (one number: export folds it, evaluation
    reports with it); a model trained before it was stored is fitted here the same way, once, with a warning."""
    stored = ctx.read(ModelConfig, strategy).temperature
    if stored is not None:
        return stored
    logger.warning("%s: model_config.json has no temperature (trained before it was stored); fitting it on the "
                   "calibration split", strategy)
    return fit_temperature_for(ctx, strategy)


def fit_temperature_for(ctx: RunContext, strategy: str) -> float:
    """Temperature on the calibration split (what training stores; for models trained before it did)."""
    from tl_core.evaluate.calibration import fit_temperature

    cal = ctx.read_npz(f"models/{strategy}/logits/calibration.npz")
    examples = ctx.read_examples()
    labels_by_id = dict(zip(examples["example_id"].astype(str), examples["label"], strict=True))
    index = {name: i for i, name in enumerate(ctx.spec.labels)}
    y = np.array([index.get(labels_by_id.get(str(e), ""), -1) for e in cal["example_id"]])
    keep = y >= 0
    if keep.sum() == 0:
        logger.warning("calibration split is empty: temperature 1.0")
        return 1.0
    return float(fit_temperature(cal["logits"][keep], y[keep]))


def _training_logits(ctx: RunContext, strategy: str, rows: pd.DataFrame) -> np.ndarray | None:
    split = str(rows["split"].iloc[0]) if len(rows) else "test"
    stored = ctx.read_npz(f"models/{strategy}/logits/{split}.npz")
    by_id = {str(e): i for i, e in enumerate(stored["example_id"])}
    try:
        return stored["logits"][[by_id[str(e)] for e in rows["example_id"]]]
    except KeyError:
        logger.warning("training-time logits do not cover the parity examples; skipping that comparison")
        return None


def run_export(ctx: RunContext) -> str:
    """Export the run's selected model, check parity, write export/{model.onnx,parity.json,golden.npz} (and with
    quantize_int8 export/{model.int8.onnx,int8.json})."""
    import onnxruntime as ort

    strategy = ctx.read(Selection).selected
    temperature = stored_temperature(ctx, strategy)
    examples = ctx.read_examples()
    held_out = examples[examples["split"] == "test"].head(PARITY_EXAMPLES).reset_index(drop=True)
    if held_out.empty:
        held_out = examples[examples["split"] == "validation"].head(PARITY_EXAMPLES).reset_index(drop=True)
    with local_copy(ctx.store, ctx.model_key(strategy)) as model_dir, tempfile.TemporaryDirectory() as tmp:
        loaded = load_model_dir(model_dir)
        enc, transform, pad_id = encode_for(loaded, held_out)
        golden_batch = collate(enc, np.arange(min(GOLDEN_EXAMPLES, len(enc))), pad_id, transform)
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(loaded, temperature, golden_batch, onnx_path, ctx.spec.export.opset)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        measured = parity_report(loaded, session, held_out, temperature, ctx.spec.export.max_abs_logit_diff,
                                 ctx.spec.export.max_ece_diff, _training_logits(ctx, strategy, held_out))
        report = ParityReport(**measured, strategy=strategy, opset=ctx.spec.export.opset,
                              inputs=input_names(loaded.config.kind))
        uri = ctx.write(report)
        if not report.passed:
            worst = [w.model_dump() for w in report.worst_examples]
            raise ParityError(f"run {ctx.run_id}: ONNX parity failed for {strategy}: {'; '.join(report.failures)}; "
                              f"worst examples {worst} (report: {uri})")
        feeds = onnx_inputs(loaded.config.kind, golden_batch)
        golden_logits = session.run(["logits"], feeds)[0]
        ctx.write_npz("export/golden.npz", logits=golden_logits, **{f"input.{k}": v for k, v in feeds.items()})
        ctx.store.put_bytes(ctx.key("export/model.onnx"), onnx_path.read_bytes())
        if ctx.spec.export.quantize_int8:  # gated on its own: a FAIL is recorded, the fp32 export stands
            from tl_core.export.int8 import run_int8

            run_int8(ctx, loaded, onnx_path)
    logger.info("exported %s: max |diff| %.2e, temperature %.3f", strategy, report.max_abs_logit_diff, temperature)
    return ctx.uri("export/model.onnx")
