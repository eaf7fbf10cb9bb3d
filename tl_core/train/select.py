"""Model selection (no torch import: it runs on CPU workers).

Best validation primary metric wins (lowest for log_loss, brier, ece); ties go to the cheaper model: lower
measured latency at batch 1 (when backbones were compared), then the cheaper strategy (frozen < lora < partial <
full). With candidate backbones, a model whose backbone is over a budget of ``selection`` (latency at batch 1,
ONNX size) is excluded with the reason, and a fine-tuned model outside the shortlist was never trained (its
report says why). No model within the budgets fails the step, naming every exclusion.
"""

from __future__ import annotations

import math
from typing import Any

from tl_core.config import STRATEGY_COST_ORDER, SelectionSpec
from tl_core.errors import DataError, NoSuchKey
from tl_core.evaluate.metrics import rank_key
from tl_core.runs import RunContext
from tl_core.train.candidates import DEFAULT_BACKBONE
from tl_core.train.plan import planned_model_ids


def _report(ctx: RunContext, model_id: str, metric: str) -> dict[str, Any]:
    key = f"models/{model_id}/train_report.json"
    try:
        rep = ctx.read_json(key)
    except NoSuchKey:
        raise DataError(f"run {ctx.run_id}: strategy {model_id!r} has no train_report.json; train it first") from None
    if rep.get("skipped"):
        return rep
    scored = rep.get("primary_metric", metric)
    if scored != metric:
        raise DataError(
            f"run {ctx.run_id}: {key} scored validation on {scored!r} but train.primary_metric is {metric!r}; "
            "strategies are compared on one metric: retrain this strategy"
        )
    value = float(rep["val_metric"])
    if not math.isfinite(value):
        raise DataError(f"run {ctx.run_id}: {key} has val_metric {value} ({metric}); expected a finite number")
    return rep


def over_budget(cost: dict[str, Any], selection: SelectionSpec) -> str | None:
    """Why a backbone's measured cost is over the spec's budgets, or None."""
    latency = (cost.get("latency_ms") or {}).get("1")
    if selection.max_latency_ms is not None and (latency is None or latency > selection.max_latency_ms):
        shown = "not measured" if latency is None else f"{latency:.2f} ms"
        return f"latency at batch 1 {shown} > selection.max_latency_ms {selection.max_latency_ms}"
    size = cost.get("onnx_mb")
    if selection.max_model_mb is not None and (size is None or size > selection.max_model_mb):
        shown = "not measured" if size is None else f"{size:.1f} MB"
        return f"ONNX size {shown} > selection.max_model_mb {selection.max_model_mb}"
    return None


def _backbones(ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Each backbone's measured cost and budget verdict (runs with candidate backbones only)."""
    out: dict[str, dict[str, Any]] = {}
    for cand in [None, *ctx.spec.candidates]:
        name = cand.name if cand else DEFAULT_BACKBONE
        rel = "models/frozen/cost.json" if cand is None else f"models/frozen-{name}/cost.json"
        cost = ctx.read_json(rel) if ctx.store.exists(ctx.key(rel)) else {}
        backbone = cand.backbone if cand else ctx.spec.backbone
        out[name] = {"name": backbone.name, **cost, "over_budget": over_budget(cost, ctx.spec.selection)}
    return out


def run_select(ctx: RunContext) -> str:
    """Pick the candidate among every trained model of the run; writes candidate.json."""
    metric = ctx.spec.train.primary_metric
    backbones = _backbones(ctx) if ctx.spec.candidates else {}
    scores: dict[str, dict[str, Any]] = {}
    excluded: dict[str, str] = {}
    for model_id in planned_model_ids(ctx):
        rep = _report(ctx, model_id, metric)
        if rep.get("skipped"):
            excluded[model_id] = f"not trained: {rep['skipped']}"
            continue
        strategy, _, backbone = model_id.partition("-")
        scores[model_id] = {"val_metric": float(rep["val_metric"]), "wall_s": rep.get("wall_s"),
                            "strategy": strategy, "backbone": backbone or DEFAULT_BACKBONE,
                            "peak_memory_mb": rep.get("peak_memory_mb")}
        problem = (backbones.get(backbone or DEFAULT_BACKBONE) or {}).get("over_budget")
        if problem:
            excluded[model_id] = f"over budget: {problem}"
    # Scratch only proves that transfer helps; it is never the candidate unless it is the only strategy.
    within = [m for m in scores if m not in excluded]
    if not within:
        raise DataError(f"run {ctx.run_id}: no model is within the selection budgets: "
                        + "; ".join(f"{m}: {why}" for m, why in excluded.items()))
    eligible = [m for m in within if scores[m]["strategy"] != "scratch"] or within

    def cost(m: str) -> tuple[float, int]:
        latency = (backbones.get(scores[m]["backbone"]) or {}).get("latency_ms") or {}
        return float(latency.get("1", 0.0)), STRATEGY_COST_ORDER[scores[m]["strategy"]]

    selected = min(eligible, key=lambda m: (round(rank_key(metric, scores[m]["val_metric"]), 6), *cost(m)))
    payload: dict[str, Any] = {"selected": selected, "primary_metric": metric, "strategies": scores}
    if ctx.spec.candidates:
        payload.update(backbones=backbones, excluded=excluded)
    return ctx.write_json("candidate.json", payload)
