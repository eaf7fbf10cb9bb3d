"""Model selection (no torch import: it runs on CPU workers)."""

from __future__ import annotations

from typing import Any

from tl_core.config import STRATEGY_COST_ORDER
from tl_core.errors import DataError, NoSuchKey
from tl_core.runs import RunContext


def run_select(ctx: RunContext) -> str:
    """Best validation primary metric wins; ties go to the cheaper strategy (frozen < lora < partial < full)."""
    scores: dict[str, dict[str, Any]] = {}
    for strategy in ctx.spec.train.strategies:
        try:
            rep = ctx.read_json(f"models/{strategy}/train_report.json")
        except NoSuchKey:
            raise DataError(
                f"run {ctx.run_id}: strategy {strategy!r} has no train_report.json; train it first"
            ) from None
        scores[strategy] = {"val_metric": float(rep["val_metric"]), "wall_s": rep.get("wall_s")}
    # Scratch only proves that transfer helps; it is never the candidate unless it is the only strategy.
    eligible = [s for s in scores if s != "scratch"] or list(scores)
    selected = min(eligible, key=lambda s: (-round(scores[s]["val_metric"], 6), STRATEGY_COST_ORDER[s]))
    payload = {"selected": selected, "primary_metric": ctx.spec.train.primary_metric, "strategies": scores}
    return ctx.write_json("candidate.json", payload)

