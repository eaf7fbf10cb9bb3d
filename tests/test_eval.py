from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

from model_fixtures import make_run, text_examples, text_spec, tiny_bert_dir
from tl_core.config import GateSpec
from tl_core.evaluate.bootstrap import adjust, holm, paired_bootstrap
from tl_core.evaluate.calibration import fit_temperature, nll
from tl_core.evaluate.metrics import all_metrics, ece, softmax
from tl_core.evaluate.run import ChampionScores, compare_models, run_evaluate, run_gate
from tl_core.gate import decide
from tl_core.train.run import run_train
from tl_core.train.select import run_select

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _random_probs(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) * 2
    logits[np.arange(n), y] += 1.5
    return softmax(logits), y


def _reference_ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs, y = _random_probs(rng, 500, 4)
    m = all_metrics(probs, y, ["a", "b", "c", "d"])
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=[0, 1, 2, 3]))
    onehot = np.eye(4)[y]
    assert m["brier"] == pytest.approx(((probs - onehot) ** 2).sum(1).mean())
    assert m["ece"] == pytest.approx(_reference_ece(probs, y))
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2, 3], zero_division=0)
    assert [m["per_class"][k]["f1"] for k in "abcd"] == pytest.approx(list(f))
    assert m["confusion"] == skm.confusion_matrix(y, pred).tolist()


def test_temperature_fixes_overconfidence_and_keeps_accuracy() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    logits = rng.normal(size=(2000, 3))
    logits[np.arange(2000), y] += 1.0
    overconfident = logits * 4.0
    t = fit_temperature(overconfident, y)
    assert 2.5 < t < 6.0
    assert nll(overconfident, y, t) < nll(overconfident, y, 1.0)
    before, after = softmax(overconfident), softmax(overconfident, t)
    assert (before.argmax(1) == after.argmax(1)).all()
    assert ece(after, y) < ece(before, y)
    with pytest.raises(ValueError, match="logits must be"):
        fit_temperature(logits[:5], y[:4])


def test_holm_and_bonferroni() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert adjust([0.01, 0.2], "bonferroni") == pytest.approx([0.02, 0.4])
    with pytest.raises(ValueError, match="unknown multiple-comparison correction 'bh'"):
        adjust([0.1], "bh")


def test_bootstrap_point_mass_and_pairing() -> None:
    rng = np.random.default_rng(0)
    probs, y = _random_probs(rng, 300, 3)
    groups = {"overall": np.ones(300, bool), "s=a": np.arange(300) < 100}
    boot = paired_bootstrap(y, {"a": probs, "b": probs}, groups, 200, 0, ("ece", "log_loss"))
    # Identical models: every paired difference is exactly zero.
    assert np.all(boot.samples["a"]["macro_f1"] == boot.samples["b"]["macro_f1"])
    # Bootstrap mean is close to the point estimate.
    assert np.nanmean(boot.samples["a"]["accuracy"][:, 0]) == pytest.approx((probs.argmax(1) == y).mean(), abs=0.01)
    assert np.nanmean(boot.samples["a"]["ece"][:, 0]) == pytest.approx(ece(probs, y), abs=0.03)
    with pytest.raises(ValueError, match="at least one test example"):
        paired_bootstrap(y[:0], {"a": probs[:0]}, {"overall": np.ones(0, bool)}, 10, 0)


def _sim_report(y: np.ndarray, cand: np.ndarray, champ: np.ndarray, masks: dict[str, np.ndarray],
                n_boot: int, seed: int) -> dict[str, Any]:
    probs = {"cand": cand, "champion": champ, "majority": np.full_like(cand, 1.0 / cand.shape[1])}
    groups = {"overall": np.ones(len(y), bool), **masks}
    comparisons = compare_models(y, probs, groups, "cand", n_boot, seed, 0.95)
    labels = [str(i) for i in range(cand.shape[1])]
    return {"test_size": len(y), "candidate": "cand", "primary_metric": "macro_f1",
            "champion": {"status": "ok", "version": "v1", "etag": "e"},
            "slices": {k: int(v.sum()) for k, v in masks.items()},
            "models": {"cand": {"strategy": "frozen", "overall": all_metrics(cand, y, labels)},
                       "champion": {"overall": all_metrics(champ, y, labels)}},
            "comparisons": comparisons}


def _simulate(rng: np.random.Generator, n_slices: int = 4, per_slice: int = 500, c: int = 3):
    n = n_slices * per_slice
    y = rng.integers(0, c, n)
    pred = np.where(rng.random(n) < 0.8, y, rng.integers(0, c, n))
    probs = np.full((n, c), 0.1 / (c - 1))
    probs[np.arange(n), pred] = 0.9
    masks = {f"region={i}": (np.arange(n) // per_slice) == i for i in range(n_slices)}
    return y, probs, masks


POLICY = GateSpec(margins={"macro_f1": 0.0}, slice_metrics=["macro_f1"], min_slice_size=30,
                  absolute_minimums={}, must_beat_majority=False, must_match_frozen=False,
                  calibration={"ece_max": 1.0, "ece_tolerance": 1.0})


def test_identical_candidate_passes_at_margin_zero() -> None:
    rng = np.random.default_rng(1)
    passes = 0
    for trial in range(40):
        y, probs, masks = _simulate(rng)
        decision = decide(_sim_report(y, probs, probs.copy(), masks, 300, trial), POLICY)
        passes += decision.passed
    assert passes / 40 >= 0.95


def test_candidate_worse_on_one_slice_is_rejected_naming_it() -> None:
    rng = np.random.default_rng(2)
    margin = 0.03
    policy = POLICY.model_copy(update={"margins": {"macro_f1": margin}})
    rejected = 0
    trials = 40
    for trial in range(trials):
        y, champ, masks = _simulate(rng)
        cand = champ.copy()
        bad = np.flatnonzero(masks["region=2"])
        correct = bad[champ[bad].argmax(1) == y[bad]]
        # Make ~2x margin of the slice's examples wrong: macro-F1 on that slice drops by about 2 x margin.
        flip = rng.choice(correct, size=int(len(bad) * 2 * margin / 0.8 * 0.8 + 0.5), replace=False)
        cand[flip] = np.roll(cand[flip], 1, axis=1)
        decision = decide(_sim_report(y, cand, champ, masks, 300, trial), policy)
        failing = {r.slice for r in decision.failures}
        rejected += (not decision.passed) and "region=2" in failing and failing <= {"region=2", "overall"}
    assert rejected / trials >= 0.95


def test_gate_fails_closed() -> None:
    rng = np.random.default_rng(3)
    y, probs, masks = _simulate(rng, n_slices=2, per_slice=100)
    base = _sim_report(y, probs, probs.copy(), masks, 100, 0)
    assert decide(base, POLICY).passed

    empty = {**base, "test_size": 0}
    assert re.search(r"empty test set", decide(empty, POLICY).failures[0].text)

    required = POLICY.model_copy(update={"required_slices": ["region=eu"]})
    d = decide(base, required)
    assert not d.passed and "required slice region=eu has no test examples" in d.failures[0].text

    unreadable = {**base, "champion": {"status": "unreadable", "version": "v3", "reason": "checksum mismatch"}}
    d = decide(unreadable, POLICY)
    assert not d.passed and "could not be re-scored: checksum mismatch" in d.failures[0].text

    no_metric = {**base, "comparisons": {"champion": {}}}
    d = decide(no_metric, POLICY)
    assert not d.passed and any("no bootstrap interval" in r.text for r in d.failures)

    floor = POLICY.model_copy(update={"absolute_minimums": {"auroc": 0.5}})
    missing = {**base, "models": {**base["models"], "cand": {"overall": {"ece": 0.01}}}}
    assert any("auroc overall: missing" in r.text for r in decide(missing, floor).failures)

    small = POLICY.model_copy(update={"min_slice_size": 500, "insufficient_slice": "fail"})
    d = decide(base, small)
    assert any("insufficient data (100 < min_slice_size 500)" in r.text for r in d.failures)
    warn = POLICY.model_copy(update={"min_slice_size": 500})
    assert decide(base, warn).passed


def test_reason_format_names_metric_slice_interval_threshold() -> None:
    rng = np.random.default_rng(4)
    y, champ, masks = _simulate(rng, n_slices=2, per_slice=300)
    cand = champ.copy()
    sl = np.flatnonzero(masks["region=1"])
    cand[sl] = np.roll(cand[sl], 1, axis=1)  # the candidate is wrong everywhere on region=1
    policy = POLICY.model_copy(update={"margins": {"macro_f1": 0.02}})
    d = decide(_sim_report(y, cand, champ, masks, 200, 0), policy)
    text = next(r.text for r in d.failures if r.slice == "region=1")
    assert re.match(r"macro_f1 on region=1: candidate - champion in \[-\d\.\d{3}, -\d\.\d{3}\] \(95%\), "
                    r"margin -0\.02, holm p=.*: FAIL", text)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("eval")
    spec = text_spec(tmp.as_uri(), tiny_bert_dir(tmp), strategies=["frozen", "full"], epochs=2)
    ctx = make_run(spec, text_examples(n_per_class=60))
    for s in spec.train.strategies:
        run_train(ctx, s)
    run_select(ctx)
    return ctx


def test_run_evaluate_and_gate_first_model(evaluated) -> None:
    ctx = evaluated
    run_evaluate(ctx)
    report = ctx.read_json("evaluation/report.json")
    assert report["schema_version"] == 1 and report["champion"]["status"] == "none"
    assert set(report["models"]) == {"frozen", "full", "majority"}
    assert set(report["slices"]) == {"region=eu", "region=us"}
    assert report["test_size"] == sum(report["slices"].values())
    result = run_gate(ctx)
    assert result["bootstrap"] is True
    decision = ctx.read_json("gate/decision.json")
    assert decision["passed"] == result["passed"] and len(decision["evidence_hash"]) == 64
    assert "Decision:" in result["summary_markdown"]


def test_run_evaluate_with_champion_and_html(evaluated) -> None:
    ctx = evaluated
    cal = ctx.read_npz("models/frozen/logits/calibration.npz")["logits"]
    test = ctx.read_npz("models/frozen/logits/test.npz")["logits"]
    # The champion is the frozen model itself: the candidate is compared against it, slice by slice.
    champion = ChampionScores("v0001", "etag-1", {"calibration": cal, "test": test})
    run_evaluate(ctx, champion)
    report = ctx.read_json("evaluation/report.json")
    assert report["champion"]["status"] == "ok"
    assert "region=eu" in report["comparisons"]["champion"]["macro_f1"]
    html = ctx.store.get_bytes(ctx.key("evaluation/report.html")).decode()
    assert re.findall(r'src="(?!data:)', html) == [] and "href=" not in html
    assert html.count("data:image/png;base64,") >= 4
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian chromium is required for the report check (make system-deps installs it)"
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "report.html"
    page.write_text(html)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    subprocess.run(["timeout", "-k", "5", "90", chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", f"--user-data-dir={ARTIFACTS / 'chromium-profile'}",
                    f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()],
                   check=True, capture_output=True)
    assert shot.exists() and shot.stat().st_size > 20_000
