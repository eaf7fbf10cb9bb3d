"""The run's training plan: which models one run trains (no torch import: it runs on CPU workers).

By default a run trains every model of the spec (``ModelSpec.training_order``). The retrain DAG's ``strategies``
run parameter (and ``tl plan --strategy``) narrows one run to a subset, checked against the spec; the plan is
written to the run (``plan.json``) so that selection compares exactly the planned models. The DAG fans the plan
out with dynamic task mapping: the frozen baselines first, then the fine-tuned models.
"""

from __future__ import annotations

from typing import Any

from tl_core.artifacts import Plan
from tl_core.config import ModelSpec
from tl_core.errors import SpecError
from tl_core.runs import RunContext, artifact_rel

PLAN_FILE = artifact_rel(Plan)


def is_frozen(model_id: str) -> bool:
    """'frozen' and 'frozen-<candidate>' are the cached-embedding baselines; everything else is fine-tuned."""
    return model_id.partition("-")[0] == "frozen"


def plan_models(spec: ModelSpec, requested: list[str] | None) -> list[str]:
    """The models a run trains, in training order: all of the spec's, or the ``requested`` subset.

    Raises SpecError naming the parameter, the offending value and what the spec allows.
    """
    known = spec.training_order()
    if requested is None:
        return known
    if not isinstance(requested, list) or not requested or not all(isinstance(m, str) for m in requested):
        raise SpecError(f"params.strategies: expected a non-empty list of model names from {known}, got {requested!r}")
    unknown = [m for m in requested if m not in known]
    if unknown:
        raise SpecError(f"params.strategies: {unknown[0]!r} is not trained by spec {spec.name!r}: expected names "
                        f"from {known}")
    repeated = sorted({m for m in requested if requested.count(m) > 1})
    if repeated:
        raise SpecError(f"params.strategies: {repeated[0]!r} is listed {requested.count(repeated[0])} times; name "
                        "each model once")
    if spec.candidates:  # the frozen baselines rank the backbones that the fine-tuned models are shortlisted from
        missing = [m for m in known if is_frozen(m) and m not in requested]
        if missing:
            raise SpecError(f"params.strategies: {missing[0]!r} is missing: with candidate backbones every frozen "
                            f"baseline ({[m for m in known if is_frozen(m)]}) ranks the backbones and must be kept")
    return [m for m in known if m in requested]


def run_plan(ctx: RunContext, requested: list[str] | None) -> dict[str, Any]:
    """Write the run's plan; returns the model ids to fan out, frozen baselines apart from fine-tuned models."""
    model_ids = plan_models(ctx.spec, requested)
    uri = ctx.write(Plan(model_ids=model_ids, requested=requested))
    return {"frozen": [m for m in model_ids if is_frozen(m)], "tuned": [m for m in model_ids if not is_frozen(m)],
            "uri": uri}


def planned_model_ids(ctx: RunContext) -> list[str]:
    """The run's planned models (plan.json; of another schema version: ArtifactError naming it), or every model of
    the spec for a run planned before plans existed."""
    plan = ctx.read_optional(Plan)
    if plan is None:
        return ctx.spec.model_ids()
    return plan_models(ctx.spec, plan.model_ids)
