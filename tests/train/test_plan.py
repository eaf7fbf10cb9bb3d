"""The run's training plan: the `strategies` run parameter checked against the spec, and selection over the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tl_core.artifacts import ArtifactError, Plan
from tl_core.config import ModelSpec, parse_spec
from tl_core.errors import SpecError
from tl_core.runs import RunContext
from tl_core.train.plan import PLAN_FILE, plan_models, planned_model_ids, run_plan


def _spec(tmp_path: Path, candidates: bool = False) -> ModelSpec:
    raw: dict[str, Any] = {"name": "m", "labels": ["a", "b"], "store": (tmp_path / "store").as_uri(),
                           "backbone": {"library": "transformers", "name": "bert"},
                           "train": {"strategies": ["frozen", "lora", "full"]}}
    if candidates:
        raw["candidates"] = [{"name": "small", "backbone": {"library": "transformers", "name": "small"},
                              "strategies": ["frozen", "lora"]}]
    return parse_spec(raw)


def test_default_plan_is_every_model_frozen_first(tmp_path: Path) -> None:
    spec = _spec(tmp_path, candidates=True)
    assert plan_models(spec, None) == ["frozen", "frozen-small", "lora", "full", "lora-small"]
    run = RunContext.open(spec, "r1")
    plan = run_plan(run, None)
    assert (plan["frozen"], plan["tuned"]) == (["frozen", "frozen-small"], ["lora", "full", "lora-small"])
    assert planned_model_ids(run) == ["frozen", "frozen-small", "lora", "full", "lora-small"]


def test_a_subset_keeps_training_order_and_reaches_selection(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    run = RunContext.open(spec, "r1")
    plan = run_plan(run, ["full", "frozen"])
    assert (plan["frozen"], plan["tuned"]) == (["frozen"], ["full"])
    assert run.read(Plan) == Plan(model_ids=["frozen", "full"], requested=["full", "frozen"])
    assert planned_model_ids(run) == ["frozen", "full"]
    # a run planned before plans existed compares every model of the spec
    assert planned_model_ids(RunContext.open(spec, "r2")) == spec.model_ids()


@pytest.mark.parametrize(("requested", "match"), [
    ([], r"params.strategies: expected a non-empty list of model names from \['frozen', 'lora', 'full'\], got \[\]"),
    ("frozen", r"expected a non-empty list .* got 'frozen'"),
    (["frozen", 3], r"expected a non-empty list .* got \['frozen', 3\]"),
    (["partial"], r"params.strategies: 'partial' is not trained by spec 'm': expected names from "
                  r"\['frozen', 'lora', 'full'\]"),
    (["lora", "lora"], r"params.strategies: 'lora' is listed 2 times; name each model once"),
])
def test_a_bad_strategies_param_is_named(tmp_path: Path, requested: Any, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        plan_models(_spec(tmp_path), requested)


def test_candidates_keep_every_frozen_baseline(tmp_path: Path) -> None:
    spec = _spec(tmp_path, candidates=True)
    assert plan_models(spec, ["frozen", "frozen-small", "lora-small"]) == ["frozen", "frozen-small", "lora-small"]
    with pytest.raises(SpecError, match=r"'frozen-small' is missing: with candidate backbones every frozen "
                                        r"baseline \(\['frozen', 'frozen-small'\]\) ranks the backbones"):
        plan_models(spec, ["frozen", "lora"])


def test_a_plan_of_another_schema_is_refused(tmp_path: Path) -> None:
    run = RunContext.open(_spec(tmp_path), "r1")
    run.write_json(PLAN_FILE, {"schema_version": 7, "model_ids": ["frozen"]})
    with pytest.raises(ArtifactError, match=r"plan\.json is a Plan of schema version 7; this tl_core reads version 1"):
        planned_model_ids(run)
    run.write_json(PLAN_FILE, {"schema_version": 1, "model_ids": ["scratch"]})
    with pytest.raises(SpecError, match="'scratch' is not trained by spec 'm'"):
        planned_model_ids(run)
