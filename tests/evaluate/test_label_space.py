"""One label space, by name: the champion's logit columns are lined up with the spec's labels by class name.

Synthetic runs (tests/eval_fixtures.py) with a champion built from known logits: a reordered champion gives the
same comparison as an unchanged order, added classes compare on the shared ones and are reported on their own, a
removed or renamed class is a named FAIL. One test goes through the real path: a registered tiny champion
re-scored through onnxruntime under a spec whose labels were reordered."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from eval_fixtures import LABELS, make_synthetic_run, spec_dict
from tl_core.artifacts import EvaluationReport, Selection
from tl_core.config import parse_spec
from tl_core.evaluate.label_space import LabelSpace
from tl_core.evaluate.run import ChampionScores, run_evaluate
from tl_core.gate import decide
from tl_core.gate.step import run_gate
from tl_core.runs import RunContext

SPLITS = ("calibration", "test")


def _examples(ctx: RunContext) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("split/examples.parquet"))))


def _put_examples(ctx: RunContext, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    ctx.store.put_bytes(ctx.key("split/examples.parquet"), buf.getvalue())


def _logits_in_row_order(ctx: RunContext, strategy: str, split: str) -> np.ndarray:
    """A strategy's stored logits, in examples.parquet row order of ``split``."""
    z = ctx.read_npz(f"models/{strategy}/logits/{split}.npz")
    pos = {str(e): i for i, e in enumerate(z["example_id"])}
    df = _examples(ctx)
    return z["logits"][[pos[e] for e in df[df["split"] == split]["example_id"].astype(str)]]


def _champion(ctx: RunContext, labels: list[str], order: list[str] | None = None) -> ChampionScores:
    """The run's frozen model as the champion, its columns ``labels``; ``order``: the champion's own class order
    (its columns permuted to it)."""
    order = order or labels
    cols = [labels.index(n) for n in order]
    return ChampionScores("v0001", "etag-1", {s: _logits_in_row_order(ctx, "frozen", s)[:, cols] for s in SPLITS},
                          list(order))


def _permute_strategies(ctx: RunContext, old: list[str], new: list[str]) -> None:
    """Rewrite every strategy's logits from class order ``old`` to ``new`` (a candidate trained under ``new``)."""
    cols = [old.index(n) for n in new]
    for strategy in ("frozen", "full"):
        for split in SPLITS:
            z = ctx.read_npz(f"models/{strategy}/logits/{split}.npz")
            ctx.write_npz(f"models/{strategy}/logits/{split}.npz", example_id=z["example_id"],
                          logits=z["logits"][:, cols])


def _evaluate(ctx: RunContext, champion: ChampionScores) -> dict[str, Any]:
    run_evaluate(ctx, champion)
    return ctx.read(EvaluationReport).model_dump(mode="json")  # type: ignore[no-any-return]


def _flat(value: Any, path: str = "") -> dict[str, Any]:
    """Nested dicts and lists as {"a.b.0": leaf} (pytest.approx compares flat mappings only)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{path}.{i}").items()}
    return {path: value}


def _by_name(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a report that do not depend on the class order (confusion matrices are in label order)."""
    return _flat({"comparisons": report["comparisons"],
                  "models": {n: {k: v for k, v in m.items() if k != "confusion"} for n, m in report["models"].items()}})


def test_label_space_statuses_and_alignment_by_name() -> None:
    space = LabelSpace.of(["a", "b", "c"], ["b", "a", "c"])
    assert (space.status, space.champion_columns(), space.shared) == ("reordered", [1, 0, 2], ["b", "a", "c"])
    added = LabelSpace.of(["a", "b", "c"], ["a", "d", "b", "c"])
    assert (added.status, added.added, added.candidate_columns(), added.champion_columns()) == (
        "added", ["d"], [0, 2, 3], [0, 1, 2])
    gone = LabelSpace.of(["a", "b", "c"], ["a", "b", "x"])
    assert (gone.status, gone.removed, gone.added) == ("incomparable", ["c"], ["x"])
    assert "class(es) [c] removed or renamed" in gone.reason("v0003")
    assert LabelSpace.of(["a", "b"], ["a", "b"]).status == "same"
    with pytest.raises(ValueError, match=r"champion class names repeat \['a'\]"):
        LabelSpace.of(["a", "a"], ["a", "b"])


def test_label_space_reordered_champion_gives_the_identical_comparison(tmp_path: Path) -> None:
    """The same champion, its classes stored in another order: the report is identical to the unchanged order."""
    spec = parse_spec(spec_dict(tmp_path.as_uri()))
    same = make_synthetic_run(spec, run_id="manual-same")
    other = make_synthetic_run(spec, run_id="manual-other")
    unchanged = _evaluate(same, _champion(same, LABELS))
    reordered = _evaluate(other, _champion(other, LABELS, order=["login", "shipping", "billing"]))
    assert unchanged["label_space"]["status"] == "same" and reordered["label_space"]["status"] == "reordered"
    assert reordered["label_space"]["champion_labels"] == ["login", "shipping", "billing"]
    assert reordered["comparisons"] == unchanged["comparisons"]  # exact: same seed, same numbers
    assert reordered["models"] == unchanged["models"]
    assert reordered["models"]["champion"]["overall"]["accuracy"] > 0.7  # not mis-scored (chance is 1/3)
    decision = decide(reordered, spec.gate)
    assert [r.text for r in decision.reasons if r.check != "label_space"] == [
        r.text for r in decide(unchanged, spec.gate).reasons if r.check != "label_space"]
    assert any(r.status == "PASS" and r.text == "class names match champion v0001 (reordered: aligned by name): PASS"
               for r in decision.reasons)


def test_label_space_reordered_spec_compares_as_the_unchanged_order(tmp_path: Path) -> None:
    """A champion trained on [billing, login, shipping], the spec now [login, billing, shipping] (the candidate's
    logits in that order): the same comparison as with the unchanged spec."""
    spec = parse_spec(spec_dict(tmp_path.as_uri()))
    new_order = ["login", "billing", "shipping"]
    spec_b = parse_spec({**spec_dict(tmp_path.as_uri()), "labels": new_order})
    base = make_synthetic_run(spec, run_id="manual-base")
    moved = make_synthetic_run(spec_b, run_id="manual-moved")
    champion = _champion(moved, LABELS)  # the frozen logits as written: the champion's own order, LABELS
    _permute_strategies(moved, LABELS, new_order)
    unchanged, reordered = _evaluate(base, _champion(base, LABELS)), _evaluate(moved, champion)
    assert reordered["labels"] == new_order and reordered["label_space"]["status"] == "reordered"
    # Everything is a column permutation of the unchanged run: every number (23,882 of them) is identical.
    assert _by_name(reordered) == _by_name(unchanged)
    champ = reordered["models"]["champion"]["overall"]
    assert champ["accuracy"] == unchanged["models"]["champion"]["overall"]["accuracy"] > 0.7


def _with_added_class(ctx: RunContext, new: str, seed: int = 5) -> tuple[ChampionScores, pd.DataFrame]:
    """Relabel every 8th row ``new`` and give the strategies a 4th logit column (good at ``new``); the champion is
    the frozen model as it was (3 classes). Returns the champion and the relabelled examples."""
    champion = _champion(ctx, LABELS)
    df = _examples(ctx)
    df.loc[df.index % 8 == 0, "label"] = new
    _put_examples(ctx, df)
    rng = np.random.default_rng(seed)
    for strategy in ("frozen", "full"):
        for split in SPLITS:
            z = ctx.read_npz(f"models/{strategy}/logits/{split}.npz")
            labels = df.set_index("example_id").loc[z["example_id"].astype(str), "label"].to_numpy()
            extra = rng.normal(size=(len(labels), 1)) + 12.0 * (labels == new)[:, None]  # stored logits are x3
            ctx.write_npz(f"models/{strategy}/logits/{split}.npz", example_id=z["example_id"],
                          logits=np.concatenate([z["logits"], extra], axis=1).astype(np.float32))
    return champion, df


def _shared_only_run(tmp_path: Path, added: RunContext, df: pd.DataFrame, new: str) -> RunContext:
    """The same run without the added class: its rows dropped, the strategies' logits without its column."""
    ctx = make_synthetic_run(parse_spec(spec_dict((tmp_path / "shared").as_uri())), run_id="manual-shared")
    _put_examples(ctx, df[df["label"] != new].reset_index(drop=True))
    for strategy in ("frozen", "full"):
        for split in SPLITS:
            z = added.read_npz(f"models/{strategy}/logits/{split}.npz")
            ctx.write_npz(f"models/{strategy}/logits/{split}.npz", example_id=z["example_id"],
                          logits=z["logits"][:, :3])
    return ctx


def test_label_space_added_class_compares_on_the_shared_classes_and_reports_it(tmp_path: Path) -> None:
    spec = parse_spec({**spec_dict(tmp_path.as_uri()), "labels": [*LABELS, "refund"]})
    ctx = make_synthetic_run(spec, run_id="manual-added")
    champion, df = _with_added_class(ctx, "refund")
    report = _evaluate(ctx, champion)
    test = df[df["split"] == "test"]
    n_new, n_shared = int((test["label"] == "refund").sum()), int((test["label"] != "refund").sum())
    space = report["label_space"]
    assert (space["status"], space["added"], space["shared"], space["removed"]) == ("added", ["refund"], LABELS, [])
    assert space["shared_test_rows"] == n_shared and report["test_size"] == n_shared + n_new == 600
    refund = space["added_classes"]["refund"]
    assert refund["test_rows"] == refund["support"] == n_new and refund["recall"] > 0.9
    assert refund["recall"] == report["models"]["full"]["per_class"]["refund"]["recall"]
    # The other models on every row, the champion on the shared rows and classes only.
    assert report["models"]["full"]["overall"]["n"] == report["models"]["majority"]["overall"]["n"] == 600
    assert report["models"]["champion"]["overall"]["n"] == n_shared
    assert sorted(report["models"]["champion"]["per_class"]) == sorted(LABELS)
    # Exactly the comparison of the same run without the added class (same rows, same seed).
    shared = _shared_only_run(tmp_path, ctx, df, "refund")
    reference = _evaluate(shared, ChampionScores("v0001", "etag-1", {
        s: champion.logits_by_split[s][(df[df["split"] == s]["label"] != "refund").to_numpy()] for s in SPLITS},
        LABELS))
    assert report["comparisons"]["champion"] == reference["comparisons"]["champion"]
    assert report["models"]["champion"] == reference["models"]["champion"]
    assert space["shared_slices"] == reference["slices"]
    assert space["candidate_on_shared"] == reference["models"]["full"]["overall"]
    # The gate: a WARN naming the added class and the rows the champion comparison uses; judged on those rows.
    decision = decide(report, spec.gate)
    warn = [r for r in decision.reasons if r.check == "label_space"]
    assert len(warn) == 1 and warn[0].status == "WARN"
    assert warn[0].text.startswith("class(es) [refund] added since champion v0001 (its classes [billing, login, "
                                   "shipping], this spec's [billing, login, shipping, refund])")
    assert f"on the 3 shared classes only: {n_shared} of 600 test rows" in warn[0].text
    assert "refund: " + str(n_new) + " test rows, candidate recall" in warn[0].text
    same_checks = [r.text for r in decide(reference, spec.gate).reasons if r.check in ("non-inferiority", "slice")]
    assert [r.text for r in decision.reasons if r.check in ("non-inferiority", "slice")] == same_checks
    result = run_gate(ctx)  # the HTML report renders the champion's 3-class matrix
    assert any("[refund] added since champion v0001" in r for r in result.reasons)


def test_label_space_removed_class_is_a_named_fail(tmp_path: Path) -> None:
    """Champion [billing, login, shipping], spec [billing, login, refund]: shipping renamed: never a mis-score."""
    spec = parse_spec({**spec_dict(tmp_path.as_uri()), "labels": ["billing", "login", "refund"]})
    ctx = make_synthetic_run(spec, run_id="manual-renamed")
    df = _examples(ctx)
    _put_examples(ctx, df.assign(label=df["label"].replace({"shipping": "refund"})))
    report = _evaluate(ctx, _champion(ctx, LABELS))
    assert report["champion"]["status"] == "incomparable" and report["champion"]["version"] == "v0001"
    assert "champion" not in report["models"] and "champion" not in report["comparisons"]
    space = report["label_space"]
    assert (space["status"], space["removed"], space["added"]) == ("incomparable", ["shipping"], ["refund"])
    decision = decide(report, spec.gate)
    assert not decision.passed
    fails = [r.text for r in decision.failures]
    assert fails == [
        "champion 'v0001' is not comparable: champion v0001 classes [billing, login, shipping] vs this spec's "
        "[billing, login, refund]: class(es) [shipping] removed or renamed (this spec's new class(es) [refund]); the "
        "champion cannot be compared on this label space. To replace it, promote this run's version through "
        "promote_<model> with override_gate: true and an override_reason (the ledger keeps who and why): FAIL"]
    result = run_gate(ctx)
    assert not result.passed and any("[shipping] removed or renamed" in r for r in result.reasons)


def test_label_space_registered_champion_rescored_under_a_reordered_spec(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real path: a registered tiny champion re-scored through onnxruntime carries its own class names, and a
    spec with its labels reordered scores it exactly as the unchanged spec does."""
    from model_fixtures import make_run, tiny_bert_dir
    from monitor_fixtures import build_champion
    from tl_core.export.champion import champion_for

    for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("tl_core.registry.CACHE_DIR", tmp_path / "cache")
    built = build_champion(tmp_path, tiny_bert_dir(tmp_path / "models"), challenger=False)
    spec, labels = built.spec, list(built.spec.labels)
    new_order = [labels[1], labels[2], labels[0]]
    spec_b = parse_spec({**spec.model_dump(mode="json"), "labels": new_order})
    trained = RunContext.open(spec, "champion-run")
    reports = []
    for run_spec, run_id in ((spec, "eval-same"), (spec_b, "eval-moved")):
        ctx = make_run(run_spec, built.examples, run_id)
        champion = champion_for(ctx)
        assert isinstance(champion, ChampionScores) and champion.labels == labels
        cols = [labels.index(n) for n in run_spec.labels]  # the candidate: the champion's run, in this spec's order
        for split in ("calibration", "test"):
            z = trained.read_npz(f"models/frozen/logits/{split}.npz")
            ctx.write_npz(f"models/frozen/logits/{split}.npz", example_id=z["example_id"], logits=z["logits"][:, cols])
        ctx.write(trained.read(Selection))  # the champion's run selected its frozen model
        reports.append(_evaluate(ctx, champion))
    same, moved = reports
    assert moved["label_space"]["status"] == "reordered" and same["label_space"]["status"] == "same"
    champ = moved["models"]["champion"]["overall"]
    assert champ["accuracy"] == same["models"]["champion"]["overall"]["accuracy"]
    # The champion is the candidate's own model served through ONNX: the same accuracy, not a mis-score.
    assert champ["accuracy"] == pytest.approx(moved["models"]["frozen"]["overall"]["accuracy"], abs=0.02)
    # The champion comparison is the same up to float summation order over the permuted columns (the
    # majority-class predictor is left out: this training set is balanced, so its prior ties and its argmax is the
    # spec's first class).
    pair = [{k: v for k, v in _by_name(r).items() if "majority" not in k} for r in (moved, same)]
    assert pair[0].keys() == pair[1].keys() and any(k.startswith(".comparisons.champion.") for k in pair[0])
    numbers = [{k: v for k, v in p.items() if isinstance(v, float)} for p in pair]
    assert numbers[0] == pytest.approx(numbers[1], rel=1e-9, abs=1e-12)
    assert {k: v for k, v in pair[0].items() if k not in numbers[0]} == {
        k: v for k, v in pair[1].items() if k not in numbers[1]}
