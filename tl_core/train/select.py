"""Model selection (no torch import: it runs on CPU workers).

Best validation primary metric wins (lowest for log_loss, brier, ece); ties go to the cheaper model: lower
measured latency at batch 1 (when backbones were compared), then the cheaper strategy (frozen < lora < partial <
full). With candidate backbones, a model whose backbone is over a budget of ``selection`` (latency at batch 1,
ONNX size) is excluded with the reason, and a fine-tuned model outside the shortlist was never trained (its
report says why). No model within the budgets fails the step, naming every exclusion.
"""

from __future__ import annotations

import math

from tl_core.artifacts import BackboneChoice, Selection, ServingCost, StrategyScore, TrainReport
from tl_core.config import STRATEGY_COST_ORDER, SelectionSpec
from tl_core.errors import DataError, NoSuchKey
from tl_core.evaluate.metrics import rank_key
from tl_core.runs import RunContext
from tl_core.train.candidates import DEFAULT_BACKBONE, frozen_id
from tl_core.train.plan import planned_model_ids


def _report(ctx: RunContext, model_id: str, metric: str) -> tuple[TrainReport, float | None]:
    """A planned model's train report and its validation score (None: not trained, the report says why)."""
    key = f"models/{model_id}/train_report.json"
    try:
        rep = ctx.read(TrainReport, model_id)
    except NoSuchKey:
        raise DataError(f"run {ctx.run_id}: strategy {model_id!r} has no train_report.json; train it first") from None
    if rep.skipped:
        return rep, None
    scored = rep.primary_metric or metric
    if scored != metric:
        raise DataError(
            f"run {ctx.run_id}: {key} scored validation on {scored!r} but train.primary_metric is {metric!r}; "
            "strategies are compared on one metric: retrain this strategy"
        )
    value = float("nan") if rep.val_metric is None else rep.val_metric
    if not math.isfinite(value):
        raise DataError(f"run {ctx.run_id}: {key} has val_metric {rep.val_metric} ({metric}); expected a finite "
                        "number")
    return rep, value


def over_budget(cost: ServingCost | None, selection: SelectionSpec) -> str | None:
    """Why a backbone's measured cost (None: not measured) is over the spec's budgets, or None."""
    latency = cost.latency_ms.get("1") if cost is not None else None
    if selection.max_latency_ms is not None and (latency is None or latency > selection.max_latency_ms):
        shown = "not measured" if latency is None else f"{latency:.2f} ms"
        return f"latency at batch 1 {shown} > selection.max_latency_ms {selection.max_latency_ms}"
    size = cost.onnx_mb if cost is not None else None
    if selection.max_model_mb is not None and (size is None or size > selection.max_model_mb):
        shown = "not measured" if size is None else f"{size:.1f} MB"
        return f"ONNX size {shown} > selection.max_model_mb {selection.max_model_mb}"
    return None


def _backbones(ctx: RunContext) -> dict[str, BackboneChoice]:
    """Each backbone's measured cost (models/frozen[-<candidate>]/cost.json) and budget verdict (runs with
    candidate backbones only)."""
    out: dict[str, BackboneChoice] = {}
    for cand in [None, *ctx.spec.candidates]:
        name = cand.name if cand else DEFAULT_BACKBONE
        cost = ctx.read_optional(ServingCost, frozen_id(name))
        backbone = cand.backbone if cand else ctx.spec.backbone
        out[name] = BackboneChoice(name=backbone.name, over_budget=over_budget(cost, ctx.spec.selection),
                                   **(cost.model_dump(exclude={"schema_version"}) if cost is not None else {}))
    return out


def run_select(ctx: RunContext) -> str:
    """Pick the candidate among every trained model of the run; writes candidate.json."""
    metric = ctx.spec.train.primary_metric
    backbones = _backbones(ctx) if ctx.spec.candidates else {}
    scores: dict[str, StrategyScore] = {}
    excluded: dict[str, str] = {}
    for model_id in planned_model_ids(ctx):
        rep, value = _report(ctx, model_id, metric)
        if value is None:
            excluded[model_id] = f"not trained: {rep.skipped}"
            continue
        strategy, _, backbone = model_id.partition("-")
        scores[model_id] = StrategyScore(val_metric=value, wall_s=rep.wall_s, strategy=strategy,
                                         backbone=backbone or DEFAULT_BACKBONE, peak_memory_mb=rep.peak_memory_mb)
        chosen = backbones.get(backbone or DEFAULT_BACKBONE)
        if chosen is not None and chosen.over_budget:
            excluded[model_id] = f"over budget: {chosen.over_budget}"
    # Scratch only proves that transfer helps; it is never the candidate unless it is the only strategy.
    within = [m for m in scores if m not in excluded]
    if not within:
        raise DataError(f"run {ctx.run_id}: no model is within the selection budgets: "
                        + "; ".join(f"{m}: {why}" for m, why in excluded.items()))
    eligible = [m for m in within if scores[m].strategy != "scratch"] or within

    def cost(m: str) -> tuple[float, int]:
        chosen = backbones.get(scores[m].backbone)
        latency = (chosen.latency_ms if chosen is not None else None) or {}
        return float(latency.get("1", 0.0)), STRATEGY_COST_ORDER[scores[m].strategy]

    selected = min(eligible, key=lambda m: (round(rank_key(metric, scores[m].val_metric), 6), *cost(m)))
    return ctx.write(Selection(selected=selected, primary_metric=metric, strategies=scores,
                               backbones=backbones if ctx.spec.candidates else None,
                               excluded=excluded if ctx.spec.candidates else None))
