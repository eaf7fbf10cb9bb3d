"""Several backbones in one run: the shortlist of backbones worth fine-tuning, and what each costs to serve.

Every backbone (the spec's own and each of ``candidates``) trains its frozen baseline first (cheap: cached
embeddings). Its fine-tuned models are trained only when the backbone is in the top ``selection.finetune_top_k``
by frozen validation metric, so the cost of a run stays bounded as candidates are added. The cost of a backbone is
measured, not assumed, when its frozen model is trained: parameters, ONNX file size and onnxruntime latency at
batch 1 and at the serving batch on the worker that trained it (``models/frozen[-<candidate>]/cost.json``).
Selection under the budgets is in tl_core.train.select.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tl_core.artifacts import ModelConfig, ServingCost, TrainReport
from tl_core.config import SelectionSpec
from tl_core.errors import DataError, NoSuchKey
from tl_core.evaluate.metrics import rank_key
from tl_core.runs import RunContext

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "default"  # how the spec's own backbone is named beside its candidates


def backbone_names(ctx: RunContext) -> list[str]:
    return [DEFAULT_BACKBONE, *(c.name for c in ctx.spec.candidates)]


def frozen_id(backbone: str) -> str:
    """The model folder of a backbone's frozen baseline."""
    return "frozen" if backbone == DEFAULT_BACKBONE else f"frozen-{backbone}"


def frozen_scores(ctx: RunContext) -> dict[str, float]:
    """Validation primary metric of every backbone's frozen baseline; DataError names the missing ones."""
    scores, missing = {}, []
    for name in backbone_names(ctx):
        try:
            report = ctx.read(TrainReport, frozen_id(name))
        except NoSuchKey:
            missing.append(frozen_id(name))
            continue
        if report.val_metric is None:
            raise DataError(f"run {ctx.run_id}: models/{frozen_id(name)}/train_report.json has no val_metric "
                            f"(skipped: {report.skipped!r}); a frozen baseline is always trained")
        scores[name] = report.val_metric
    if missing:
        raise DataError(f"run {ctx.run_id}: the frozen baselines {missing} are not trained yet; every backbone's "
                        "frozen model ranks it before any fine-tuning (train them first)")
    return scores


def shortlist(ctx: RunContext) -> list[str]:
    """The backbones whose fine-tuned models are trained: top k by frozen validation metric (ties: listed first)."""
    scores = frozen_scores(ctx)
    metric, order = ctx.spec.train.primary_metric, backbone_names(ctx)
    ranked = sorted(scores, key=lambda n: (round(rank_key(metric, scores[n]), 6), order.index(n)))
    return ranked[: ctx.spec.selection.finetune_top_k]


def shortlist_reason(ctx: RunContext, candidate: str | None) -> str | None:
    """Why a fine-tuned model of ``candidate`` (None: the spec's backbone) is not trained, or None if it is."""
    name = candidate or DEFAULT_BACKBONE
    chosen = shortlist(ctx)
    if name in chosen:
        return None
    scores = frozen_scores(ctx)
    metric = ctx.spec.train.primary_metric
    return (f"backbone {name!r} is not among the top {ctx.spec.selection.finetune_top_k} by frozen validation "
            f"{metric} ({scores[name]:.4f}; shortlisted: " + ", ".join(f"{n} {scores[n]:.4f}" for n in chosen) + ")")


def _median_ms(session: Any, feeds: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        session.run(["logits"], feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(["logits"], feeds)
        times.append((time.perf_counter() - t0) * 1000)
    return float(statistics.median(times))


def measure_cost(model: Any, prep: Any, config: ModelConfig, selection: SelectionSpec) -> ServingCost:
    """Parameters, ONNX size and onnxruntime latency (median ms at batch 1 and the serving batch) of a trained
    model (``prep``: the run's encoded splits and backbone, tl_core.train.run._Prepared)."""
    import onnxruntime as ort

    from tl_core.export.onnx_export import export_onnx, onnx_inputs
    from tl_core.export.predict import providers
    from tl_core.models.artifacts import LoadedModel
    from tl_core.models.preprocessing import collate

    model = model.cpu().eval()
    data = prep.encoded["validation"]
    pad_id = int(getattr(prep.backbone.tokenizer, "pad_token_id", 0) or 0)
    loaded = LoadedModel(model, config, prep.backbone.preprocessing, prep.backbone.tokenizer)
    with tempfile.TemporaryDirectory(prefix="tl-cost-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(loaded, 1.0, collate(data, np.arange(min(2, len(data))), pad_id, prep.transforms[1]), path,
                    opset=18)
        size = path.stat().st_size
        chosen = providers()
        session = ort.InferenceSession(str(path), providers=chosen)
        latency = {}
        for batch in sorted({1, selection.serving_batch}):
            idx = np.resize(np.arange(len(data)), batch)  # the validation rows, repeated up to the batch size
            feeds = onnx_inputs(config.kind, collate(data, idx, pad_id, prep.transforms[1]))
            latency[str(batch)] = _median_ms(session, feeds, selection.latency_runs)
    params = int(sum(p.numel() for p in model.parameters()))
    logger.info("cost: %.1fM parameters, ONNX %.1f MB, latency %s ms (%s)", params / 1e6, size / 1e6, latency,
                chosen[0])
    return ServingCost(parameters=params, onnx_mb=size / 1e6, latency_ms=latency, provider=chosen[0],
                       host={"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                             "cpus": os.cpu_count()})
