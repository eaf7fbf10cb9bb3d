"""Model selection (no torch import: it runs on CPU workers)."""

from __future__ import annotations

import math
from typing import Any

from tl_core.config import STRATEGY_COST_ORDER
from tl_core.errors import DataError, NoSuchKey
from tl_core.runs import RunContext
from tl_core.train.objective import rank_key


def run_select(ctx: RunContext) -> str:
    """Best validation primary metric wins (lowest for log_loss, brier, ece); ties go to the cheaper strategy
    (frozen < lora < partial < full)."""
    metric = ctx.spec.train.primary_metric
    scores: dict[str, dict[str, Any]] = {}
    for strategy in ctx.spec.train.strategies:
        key = f"models/{strategy}/train_report.json"
        try:
            rep = ctx.read_json(key)
        except NoSuchKey:
            raise DataError(
                f"run {ctx.run_id}: strategy {strategy!r} has no train_report.json; train it first"
            ) from None
        scored = rep.get("primary_metric", metric)
        if scored != metric:
            raise DataError(
                f"run {ctx.run_id}: {key} scored validation on {scored!r} but train.primary_metric is {metric!r}; "
                "strategies are compared on one metric: retrain this strategy"
            )
        value = float(rep["val_metric"])
        if not math.isfinite(value):
            raise DataError(f"run {ctx.run_id}: {key} has val_metric {value} ({metric}); expected a finite number")
        scores[strategy] = {"val_metric": value, "wall_s": rep.get("wall_s")}
    # Scratch only proves that transfer helps; it is never the candidate unless it is the only strategy.
    eligible = [s for s in scores if s != "scratch"] or list(scores)
    selected = min(eligible, key=lambda s: (round(rank_key(metric, scores[s]["val_metric"]), 6),
                                            STRATEGY_COST_ORDER[s]))
    payload = {"selected": selected, "primary_metric": metric, "strategies": scores}
    return ctx.write_json("candidate.json", payload)
