"""Several backbones in one run: frozen baselines rank them, only the shortlist is fine-tuned, each backbone's
cost is measured (parameters, ONNX size, onnxruntime latency), selection respects the budgets and says why a
backbone is excluded, and the evidence report shows the candidates table and the metric-vs-latency plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from browser import ARTIFACTS, Chromium
from model_fixtures import make_run, text_examples, text_spec, tiny_bert_dir
from tl_core.artifacts import EvaluationReport, Selection, ServingCost, TrainReport
from tl_core.config import parse_spec
from tl_core.errors import DataError
from tl_core.evaluate.run import run_evaluate
from tl_core.gate.decide import decide
from tl_core.runs import RunContext
from tl_core.train.run import run_train
from tl_core.train.select import run_select


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> RunContext:
    root = tmp_path_factory.mktemp("candidates")
    tiny = tiny_bert_dir(root / "models")
    wide = tiny_bert_dir(root / "models", "wide-bert", hidden=128, layers=4, seed=1)  # slower, larger
    raw = text_spec((root / "store").as_uri(), tiny, strategies=["frozen", "lora"], epochs=1).model_dump(mode="json")
    raw["candidates"] = [{"name": "wide", "strategies": ["frozen", "lora"],
                          "backbone": {**raw["backbone"], "name": "wide-bert", "path": str(wide)}}]
    raw["selection"] = {"finetune_top_k": 1, "serving_batch": 8, "latency_runs": 5}
    ctx = make_run(parse_spec(raw), text_examples())
    for model_id in ctx.spec.training_order():
        run_train(ctx, model_id)
    return ctx


def _with_selection(ctx: RunContext, **selection: Any) -> RunContext:
    raw = ctx.spec.model_dump(mode="json")
    raw["selection"].update(selection)
    return dataclasses.replace(ctx, spec=parse_spec(raw))


def test_frozen_baselines_rank_the_backbones_and_only_the_shortlist_is_fine_tuned(trained: RunContext) -> None:
    ctx = trained
    assert ctx.spec.training_order() == ["frozen", "frozen-wide", "lora", "lora-wide"]
    frozen = {m: ctx.read(TrainReport, m).val_metric or 0.0 for m in ("frozen", "frozen-wide")}
    best = max(frozen, key=frozen.__getitem__)
    other = "frozen-wide" if best == "frozen" else "frozen"
    tuned_best, tuned_other = best.replace("frozen", "lora"), other.replace("frozen", "lora")
    assert ctx.read(TrainReport, tuned_best).skipped is None
    skipped = ctx.read(TrainReport, tuned_other).skipped
    name = "default" if other == "frozen" else "wide"
    assert skipped is not None
    assert skipped.startswith(f"backbone {name!r} is not among the top 1 by frozen validation macro_f1")
    assert not ctx.store.exists(ctx.model_key(tuned_other, "model_config.json"))
    costs = {m: ctx.read(ServingCost, m) for m in ("frozen", "frozen-wide")}
    for cost in costs.values():
        assert set(cost.latency_ms) == {"1", "8"} and all(v > 0 for v in cost.latency_ms.values())
        assert cost.provider == "CPUExecutionProvider"
    assert costs["frozen-wide"].parameters > costs["frozen"].parameters
    assert costs["frozen-wide"].onnx_mb > costs["frozen"].onnx_mb


def test_selection_respects_the_budgets_and_names_each_exclusion(trained: RunContext) -> None:
    costs = {m: trained.read(ServingCost, m) for m in ("frozen", "frozen-wide")}
    between = (costs["frozen"].onnx_mb + costs["frozen-wide"].onnx_mb) / 2
    ctx = _with_selection(trained, max_model_mb=round(between, 3))
    run_select(ctx)
    chosen = ctx.read(Selection)
    assert chosen.strategies[chosen.selected].backbone == "default"
    size = costs["frozen-wide"].onnx_mb
    why = f"over budget: ONNX size {size:.1f} MB > selection.max_model_mb {round(between, 3)}"
    assert chosen.excluded is not None and chosen.backbones is not None
    assert chosen.excluded["frozen-wide"] == why
    assert chosen.backbones["wide"].over_budget == why[len("over budget: "):]
    tight = _with_selection(trained, max_latency_ms=1e-6)
    with pytest.raises(DataError, match=r"no model is within the selection budgets: frozen: over budget: latency at "
                                        r"batch 1 [0-9.]+ ms > selection.max_latency_ms 1e-06; .*frozen-wide: over"):
        run_select(tight)


@pytest.mark.slow
def test_the_report_shows_the_candidates_table_and_plot(trained: RunContext) -> None:
    run_select(trained)  # no budgets: the best validation metric, ties to the lower latency
    chosen = trained.read(Selection)
    scores = chosen.strategies
    top = max(v.val_metric for v in scores.values())
    assert scores[chosen.selected].val_metric == top
    run_evaluate(trained, None)
    report = trained.read(EvaluationReport).model_dump(mode="json")
    frozen = {m: v.val_metric for m, v in scores.items() if m.startswith("frozen")}
    assert report["baseline"] == max(frozen, key=frozen.__getitem__)
    assert set(report["backbones"]) == {"default", "wide"}
    assert sum(b["selected"] for b in report["backbones"].values()) == 1
    assert all(b["licence"] is None or isinstance(b["licence"], str) for b in report["backbones"].values())
    decision = decide(report, trained.spec.gate)
    ladder = [r for r in decision.reasons if r.check == "ladder" and "majority" not in r.text]
    if chosen.selected != report["baseline"]:
        assert ladder and f"- {report['baseline']}" in ladder[0].text
    page = Path(str(ARTIFACTS / "candidates-report.html"))
    page.parent.mkdir(exist_ok=True)
    page.write_bytes(trained.store.get_bytes(trained.key("evaluation/report.html")))
    with Chromium(width=1200, height=900) as browser:
        browser.open(page.as_uri(), ("Backbone candidates",))
        shown = json.loads(browser.send("Runtime.evaluate", returnByValue=True, expression=(
            "(() => { const h = [...document.querySelectorAll('h2')].find(e => e.textContent == 'Backbone candidates');"
            " const table = h.nextElementSibling.nextElementSibling; const img = table.nextElementSibling;"
            " h.scrollIntoView(); return JSON.stringify({rows: [...table.querySelectorAll('tbody tr')].map("
            "r => [...r.cells].map(c => c.textContent)), img: img.tagName, w: img.naturalWidth,"
            " broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length}); })()"))[
            "result"]["value"])
        browser.screenshot(ARTIFACTS / "candidates-report.png")
    assert [r[0] for r in shown["rows"]] == ["default", "wide"]
    assert sum(r[-1] == "selected" for r in shown["rows"]) == 1
    assert shown["img"] == "IMG" and shown["w"] > 100 and shown["broken"] == 0
