"""The gate on simulated predictions: statistical behaviour, fail-closed paths, reason texts, summary."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from tl_core.config import GateSpec
from tl_core.evaluate.run import QUANTILE_LEVELS, report_from_probs
from tl_core.gate import Reason, decide, evidence_hash, p_below, summary_markdown

POLICY = GateSpec(margins={"macro_f1": 0.0}, slice_metrics=["macro_f1"], min_slice_size=30, absolute_minimums={},
                  must_beat_majority=False, must_match_frozen=False,
                  calibration={"ece_max": 1.0, "ece_tolerance": 1.0})


def with_policy(base: GateSpec, **update: Any) -> GateSpec:
    """A validated copy of ``base`` with some fields replaced."""
    return GateSpec.model_validate({**base.model_dump(), **update})


def sim_report(y: np.ndarray, cand: np.ndarray, champ: np.ndarray | None, masks: dict[str, np.ndarray],
               n_boot: int, seed: int, strategy: str = "full", frozen: np.ndarray | None = None) -> dict[str, Any]:
    """A report as build_report writes it, from simulated probabilities."""
    probs = {"cand": cand, "majority": np.tile(np.bincount(y, minlength=cand.shape[1]) / len(y), (len(y), 1))}
    if champ is not None:
        probs["champion"] = champ
    if frozen is not None:
        probs["frozen"] = frozen
    return report_from_probs(y, probs, masks, "cand", strategy, n_boot, seed)


def simulate(rng: np.random.Generator, n_slices: int = 4, per_slice: int = 500, c: int = 3,
             accuracy: float = 0.8) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A fresh test set: labels, a champion that is right with probability `accuracy`, region slices."""
    n = n_slices * per_slice
    y = rng.integers(0, c, n)
    pred = np.where(rng.random(n) < accuracy, y, rng.integers(0, c, n))
    probs = np.full((n, c), 0.1 / (c - 1))
    probs[np.arange(n), pred] = 0.9
    masks = {f"region={i}": (np.arange(n) // per_slice) == i for i in range(n_slices)}
    return y, probs, masks


def test_identical_candidate_passes_at_margin_zero() -> None:
    rng = np.random.default_rng(1)
    trials = 40
    passes = 0
    for trial in range(trials):
        y, probs, masks = simulate(rng)
        decision = decide(sim_report(y, probs, probs.copy(), masks, 300, trial), POLICY)
        passes += decision.passed
    assert passes / trials >= 0.95


def test_equally_good_but_different_candidate_mostly_passes_at_a_small_margin() -> None:
    """Independent predictions of the same accuracy: the margin absorbs the noise, Holm keeps false alarms rare."""
    rng = np.random.default_rng(7)
    policy = with_policy(POLICY, **{"margins": {"macro_f1": 0.08}})
    trials = 20
    passes = 0
    for trial in range(trials):
        y, champ, masks = simulate(rng)
        cand = champ.copy()
        swap = np.flatnonzero(rng.random(len(y)) < 0.3)  # re-draw 30% of the predictions, same accuracy
        new_pred = np.where(rng.random(len(swap)) < 0.8, y[swap], rng.integers(0, 3, len(swap)))
        cand[swap] = 0.05
        cand[swap, new_pred] = 0.9
        passes += decide(sim_report(y, cand, champ, masks, 300, trial), policy).passed
    assert passes / trials >= 0.9


def test_candidate_worse_on_one_slice_is_rejected_naming_it() -> None:
    rng = np.random.default_rng(2)
    margin = 0.03
    policy = with_policy(POLICY, **{"margins": {"macro_f1": margin}})
    rejected = 0
    trials = 40
    for trial in range(trials):
        y, champ, masks = simulate(rng)
        cand = champ.copy()
        bad = np.flatnonzero(masks["region=2"])  # one slice of 500 examples
        correct = bad[champ[bad].argmax(1) == y[bad]]
        # 2 x margin of the slice turned from right to wrong: its accuracy and macro-F1 drop by about 2 x margin.
        flip = rng.choice(correct, size=round(len(bad) * 2 * margin), replace=False)
        cand[flip] = np.roll(cand[flip], 1, axis=1)
        report = sim_report(y, cand, champ, masks, 300, trial)
        drop = report["comparisons"]["champion"]["macro_f1"]["region=2"]["diff"]
        assert drop == pytest.approx(-2 * margin, abs=0.02)
        decision = decide(report, policy)
        failing = {r.slice for r in decision.failures}
        rejected += (not decision.passed) and "region=2" in failing and failing <= {"region=2", "overall"}
    assert rejected / trials >= 0.95


def test_gate_fails_closed() -> None:
    rng = np.random.default_rng(3)
    y, probs, masks = simulate(rng, n_slices=2, per_slice=100)
    base = sim_report(y, probs, probs.copy(), masks, 100, 0)
    assert decide(base, POLICY).passed

    empty = {**base, "test_size": 0}
    d = decide(empty, POLICY)
    assert not d.passed and re.search(r"empty test set: 0 labelled test examples", d.failures[0].text)

    required = with_policy(POLICY, **{"required_slices": ["region=eu", "region=1"]})
    d = decide(base, required)
    assert not d.passed and [r.slice for r in d.failures] == ["region=eu"]
    assert "required slice region=eu has no test examples" in d.failures[0].text

    unreadable = {**base, "champion": {"status": "unreadable", "version": "v3", "reason": "checksum mismatch"}}
    d = decide(unreadable, POLICY)
    assert not d.passed and "champion 'v3' could not be re-scored: checksum mismatch" in d.failures[0].text
    assert not d.bootstrap

    no_interval = {**base, "comparisons": {"champion": {}}}
    d = decide(no_interval, POLICY)
    assert not d.passed and {r.slice for r in d.failures} == {"overall", "region=0", "region=1"}
    assert all("no bootstrap interval vs champion" in r.text for r in d.failures)

    floor = with_policy(POLICY, **{"absolute_minimums": {"auroc": 0.5}})
    missing = {**base, "models": {**base["models"], "cand": {"overall": {"ece": 0.01}}}}
    assert any("auroc overall: missing from the report" in r.text for r in decide(missing, floor).failures)
    no_ece = {**base, "models": {**base["models"], "cand": {"overall": {"macro_f1": 0.8}}}}
    assert any("ece after temperature: missing" in r.text for r in decide(no_ece, POLICY).failures)

    no_candidate = {**base, "candidate": "lora"}
    assert "candidate 'lora' has no metrics" in decide(no_candidate, POLICY).failures[0].text
    old = {**base, "schema_version": 99}
    assert "schema_version 99 is not supported" in decide(old, POLICY).failures[0].text

    small = with_policy(POLICY, **{"min_slice_size": 500, "insufficient_slice": "fail"})
    d = decide(base, small)
    assert any("macro_f1 on region=0: insufficient data (100 < min_slice_size 500): FAIL" == r.text
               for r in d.failures)
    warn = with_policy(POLICY, **{"min_slice_size": 500})
    d = decide(base, warn)
    assert d.passed and len(d.warnings) == 2 and d.warnings[0].text.endswith("insufficient data (100 < "
                                                                              "min_slice_size 500): WARN")

    extra = Reason("evidence", "FAIL", "the champion pointer changed: FAIL")
    assert not decide(base, POLICY, extra_reasons=[extra]).passed


def test_first_model_uses_absolute_minimums_and_ladder() -> None:
    rng = np.random.default_rng(4)
    y, probs, masks = simulate(rng, n_slices=2, per_slice=300)
    report = sim_report(y, probs, None, masks, 200, 0)
    policy = with_policy(POLICY, **{"absolute_minimums": {"macro_f1": 0.6}, "must_beat_majority": True})
    d = decide(report, policy)
    assert d.passed and d.bootstrap
    assert any(r.check == "bootstrap" for r in d.reasons)
    assert not any(r.check in ("non-inferiority", "slice") for r in d.reasons)
    strict = with_policy(policy, **{"absolute_minimums": {"macro_f1": 0.95}})
    d = decide(report, strict)
    assert not d.passed and d.bootstrap
    assert re.fullmatch(r"macro_f1 overall 0\.\d{3} < minimum 0\.95: FAIL", d.failures[0].text)
    # For lower-is-better metrics the limit is a ceiling.
    loss = report["models"]["cand"]["overall"]["log_loss"]
    d = decide(report, with_policy(policy, absolute_minimums={"log_loss": round(loss + 0.01, 3)}))
    assert d.passed and any(r.text.endswith(f"<= maximum {round(loss + 0.01, 3)}: PASS") for r in d.reasons)
    d = decide(report, with_policy(policy, absolute_minimums={"log_loss": round(loss - 0.01, 3)}))
    assert re.fullmatch(r"log_loss overall \d\.\d{3} > maximum \d\.\d{3}: FAIL", d.failures[0].text)


def test_baseline_ladder() -> None:
    rng = np.random.default_rng(5)
    y, good, masks = simulate(rng, n_slices=2, per_slice=300, accuracy=0.8)
    weak = np.full_like(good, 0.05)
    weak[np.arange(len(y)), (y + 1) % 3] = 0.9  # always wrong: worse than predicting the majority class
    policy = with_policy(POLICY, **{"must_beat_majority": True, "must_match_frozen": True,
                                       "margins": {"macro_f1": 0.02}})
    # A fine-tuned candidate much worse than the run's frozen baseline fails the ladder, naming both.
    d = decide(sim_report(y, weak, None, masks, 200, 0, strategy="full", frozen=good), policy)
    texts = [r.text for r in d.failures]
    assert any(t.startswith("macro_f1 overall: candidate (full) - frozen in [-") and "margin -0.02, detects drops"
               in t and t.endswith(": harm: FAIL") for t in texts)
    assert any(t.startswith("macro_f1 overall: candidate - majority-class in ") and "must be > 0: FAIL" in t
               for t in texts)
    # A frozen candidate is not compared with itself; a good one beats the majority class.
    d = decide(sim_report(y, good, None, masks, 200, 0, strategy="frozen", frozen=good), policy)
    assert d.passed and any("majority-class" in r.text and r.status == "PASS" for r in d.reasons)
    # Missing ladder evidence fails closed.
    report = sim_report(y, good, None, masks, 200, 0, strategy="full", frozen=good)
    del report["comparisons"]["majority"]
    assert any("vs majority-class predictor: no bootstrap interval" in r.text for r in decide(report, policy).failures)


def test_calibration_checks() -> None:
    rng = np.random.default_rng(6)
    y, probs, masks = simulate(rng, n_slices=2, per_slice=300)
    report = sim_report(y, probs, probs.copy(), masks, 100, 0)
    ece_value = report["models"]["cand"]["overall"]["ece"]
    tight = with_policy(POLICY, **{"calibration": {"ece_max": ece_value / 2, "ece_tolerance": 0.5}})
    d = decide(report, tight)
    assert not d.passed and re.fullmatch(rf"ece after temperature {ece_value:.4f}, max {ece_value / 2}: FAIL",
                                         d.failures[0].text)
    worse = {**report, "models": {**report["models"], "champion": {"overall": {"ece": ece_value - 0.05}}}}
    policy = with_policy(POLICY, **{"calibration": {"ece_max": 1.0, "ece_tolerance": 0.02}})
    d = decide(worse, policy)
    assert [r.check for r in d.failures] == ["calibration"]
    assert "vs champion" in d.failures[0].text and "+ tolerance 0.02" in d.failures[0].text
    no_champ_ece = {**report, "models": {**report["models"], "champion": {"overall": {}}}}
    assert any("champion ece after temperature: missing" in r.text for r in decide(no_champ_ece, policy).failures)


def test_reason_format_names_metric_slice_interval_threshold() -> None:
    rng = np.random.default_rng(4)
    y, champ, masks = simulate(rng, n_slices=2, per_slice=300)
    cand = champ.copy()
    sl = np.flatnonzero(masks["region=1"])
    cand[sl] = np.roll(cand[sl], 1, axis=1)  # the candidate is wrong everywhere on region=1
    policy = with_policy(POLICY, **{"margins": {"macro_f1": 0.02}})
    d = decide(sim_report(y, cand, champ, masks, 200, 0), policy)
    text = next(r.text for r in d.failures if r.slice == "region=1")
    assert re.match(r"macro_f1 on region=1: candidate - champion in \[-\d\.\d{3}, -\d\.\d{3}\] \(95%\), "
                    r"margin -0\.02, holm p\(non-inferior\)=1 p\(harm\)=0 \(alpha 0\.025\), detects drops >= "
                    r"0\.\d{3} \(80% power\): harm: FAIL$", text)
    md = summary_markdown(d, sim_report(y, cand, champ, masks, 200, 0))
    assert md.startswith("**Decision: FAIL**")
    assert "| champion | macro_f1 | region=1 | [-" in md and "ECE after temperature: " in md
    assert "Failing checks" in md and d.summary["worst_slice"]["slice"] == "region=1"


def test_holm_is_less_strict_than_bonferroni_and_none_is_least() -> None:
    rng = np.random.default_rng(8)
    y, champ, masks = simulate(rng, n_slices=6, per_slice=200)
    cand = champ.copy()
    for i in range(6):  # a small, equal loss on every slice
        sl = np.flatnonzero(masks[f"region={i}"])
        right = sl[champ[sl].argmax(1) == y[sl]]
        flip = rng.choice(right, size=6, replace=False)
        cand[flip] = np.roll(cand[flip], 1, axis=1)
    report = sim_report(y, cand, champ, masks, 1000, 0)
    fails = {}
    for correction in ("none", "holm", "bonferroni"):
        policy = with_policy(POLICY, **{"margins": {"macro_f1": 0.06}, "correction": correction})
        fails[correction] = {r.slice for r in decide(report, policy).failures if r.check == "slice"}
    assert fails["none"] <= fails["holm"] <= fails["bonferroni"]


def test_p_below_reads_the_stored_quantiles() -> None:
    samples = np.random.default_rng(0).normal(size=100_000)
    q = np.quantile(samples, QUANTILE_LEVELS).tolist()
    levels = [float(v) for v in QUANTILE_LEVELS]
    for t in (-2.5, -1.96, -1.0, 0.0, 1.5):
        assert p_below(q, t, levels) == pytest.approx((samples < t).mean(), abs=0.003)
    assert p_below(q, -10, levels) == 0.0 and p_below(q, 10, levels) == 1.0
    assert p_below([], 0.0) == 1.0 and p_below([0.0, float("nan")], 0.0) == 1.0
    assert p_below([0.0] * 5, 0.0) == 0.0  # identical models: no replicate below a zero margin


def test_evidence_hash_is_canonical() -> None:
    a = evidence_hash({"x": 1, "y": {"b": 2, "a": 1}})
    assert a == evidence_hash({"y": {"a": 1, "b": 2}, "x": 1}) and len(a) == 64
    assert a != evidence_hash({"x": 1, "y": {"a": 1, "b": 3}})


def retrain_pair(rng: np.random.Generator, n_slices: int = 4, per_slice: int = 500,
                 c: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Labels and two independent, equally accurate models (not copies): every example has a difficulty both
    models share (80% easy: right with p 0.97; 20% hard: p 0.4), and each model draws its own errors from it. They
    disagree on about 14% of the examples; two frozen heads retrained on 80%-overlapping real data disagreed on 9%
    (bench/gate_quality.py --shared 0.8)."""
    n = n_slices * per_slice
    y = rng.integers(0, c, n)
    p_right = np.where(rng.random(n) < 0.8, 0.97, 0.4)

    def model() -> np.ndarray:
        pred = np.where(rng.random(n) < p_right, y, (y + rng.integers(1, c, n)) % c)
        probs = np.full((n, c), 0.15 / (c - 1))  # calibrated: confidence 0.85 at about 0.86 accuracy
        probs[np.arange(n), pred] = 0.85
        return probs

    masks = {f"region={i}": (np.arange(n) // per_slice) == i for i in range(n_slices)}
    return y, model(), model(), masks


def test_independent_equally_accurate_models_pass_under_the_default_policy() -> None:
    rng = np.random.default_rng(11)
    trials = 40
    passed = 0
    disagreement = []
    for trial in range(trials):
        y, champ, cand, masks = retrain_pair(rng)
        disagreement.append((champ.argmax(1) != cand.argmax(1)).mean())
        passed += decide(sim_report(y, cand, champ, masks, 300, trial), GateSpec()).passed
    assert np.mean(disagreement) > 0.1  # independent errors, not copies
    assert passed / trials >= 0.9


def test_a_2x_margin_regression_on_a_500_row_slice_is_rejected_naming_it_under_the_default_policy() -> None:
    rng = np.random.default_rng(12)
    policy = GateSpec()
    metric = policy.slice_metrics[0]
    margin = policy.slice_margin(metric)
    trials = 40
    rejected = 0
    for trial in range(trials):
        y, champ, _, masks = retrain_pair(rng)
        cand = champ.copy()
        bad = np.flatnonzero(masks["region=2"])
        correct = bad[champ[bad].argmax(1) == y[bad]]
        flip = rng.choice(correct, size=round(len(bad) * 2 * margin), replace=False)  # right -> wrong
        cand[flip] = np.roll(cand[flip], 1, axis=1)
        decision = decide(sim_report(y, cand, champ, masks, 300, trial), policy)
        harm = {r.slice for r in decision.failures if r.outcome == "harm" and r.metric == metric}
        rejected += (not decision.passed) and "region=2" in harm and harm <= {"region=2", "overall"}
    assert rejected / trials >= 0.95


def test_three_outcomes_per_slice_and_overall() -> None:
    rng = np.random.default_rng(13)
    y, champ, _, masks = retrain_pair(rng, n_slices=2, per_slice=400)
    cand = champ.copy()
    sl = np.flatnonzero(masks["region=1"])
    right = sl[champ[sl].argmax(1) == y[sl]]
    flip = rng.choice(right, size=16, replace=False)  # a 4-point drop: neither shown harmless nor harmful at 0.04
    cand[flip] = np.roll(cand[flip], 1, axis=1)
    report = sim_report(y, cand, champ, masks, 1000, 0)
    policy = with_policy(POLICY, **{"margins": {"accuracy": 0.04}, "slice_metrics": ["accuracy"]})
    d = decide(report, policy)
    by_slice = {r.slice: r for r in d.reasons if r.check == "slice"}
    assert by_slice["region=0"].outcome == "non-inferior" and by_slice["region=0"].status == "PASS"
    inconclusive = by_slice["region=1"]
    assert inconclusive.outcome == "inconclusive" and inconclusive.status == "WARN"
    assert inconclusive.text.endswith(": inconclusive: WARN") and d.passed
    assert inconclusive.interval is not None and inconclusive.interval[0] < -0.04 < inconclusive.interval[1]
    strict = decide(report, with_policy(policy, slice_inconclusive="fail"))
    assert not strict.passed and [r.slice for r in strict.failures] == ["region=1"]
    # Overall, an interval that straddles the margin fails by default (non-inferiority must be shown) ...
    tight = with_policy(policy, margins={"accuracy": 0.02}, slice_margins={"accuracy": 0.04})
    overall = next(r for r in decide(report, tight).reasons if r.check == "non-inferiority")
    assert overall.outcome == "inconclusive" and overall.status == "FAIL"
    # ... and warns where the policy says so.
    lenient = decide(report, with_policy(tight, overall_inconclusive="warn"))
    assert next(r for r in lenient.reasons if r.check == "non-inferiority").status == "WARN" and lenient.passed


def test_a_tiny_slice_is_named_too_small_to_judge_at_the_margin() -> None:
    rng = np.random.default_rng(14)
    y, champ, cand, masks = retrain_pair(rng, n_slices=2, per_slice=1500)
    masks["tiny=yes"] = np.arange(len(y)) < 40
    policy = with_policy(POLICY, **{"margins": {"accuracy": 0.05}, "slice_metrics": ["accuracy"]})
    d = decide(sim_report(y, cand, champ, masks, 1000, 0), policy)
    tiny = next(r for r in d.reasons if r.slice == "tiny=yes")
    match = re.search(r"detects drops >= (0\.\d{3}) \(80% power\); too small to judge at margin 0.05 \(about "
                      r"([\d,]+) test rows needed\): inconclusive: WARN$", tiny.text)
    assert match, tiny.text
    assert float(match.group(1)) > 0.2 and tiny.detectable == pytest.approx(float(match.group(1)), abs=1e-3)
    # The 1,500-row slices are judgeable at this margin, so the estimate lies between the two sizes (give or take
    # the tiny slice's own noise).
    assert 40 < int(match.group(2).replace(",", "")) < 3000
    big = next(r for r in d.reasons if r.slice == "region=0")
    assert "too small" not in big.text and big.detectable is not None and big.detectable < tiny.detectable
