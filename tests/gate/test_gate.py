"""The gate on simulated predictions: statistical behaviour, fail-closed paths, reason texts, summary."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from tl_core.config import GateSpec
from tl_core.evaluate.metrics import all_metrics
from tl_core.evaluate.run import QUANTILE_LEVELS, compare_models
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
    groups = {"overall": np.ones(len(y), bool), **masks}
    comparisons, intervals = compare_models(y, probs, groups, "cand", n_boot, seed, 0.95, ("ece",))
    labels = [str(i) for i in range(cand.shape[1])]
    models = {name: {"strategy": strategy if name == "cand" else name, "overall": all_metrics(p, y, labels),
                     "intervals": intervals[name]} for name, p in probs.items()}
    return {"schema_version": 2, "test_size": len(y), "candidate": "cand", "primary_metric": "macro_f1",
            "champion": ({"status": "ok", "version": "v0001", "etag": "e1"} if champ is not None else
                         {"status": "none", "version": None, "etag": None}),
            "slices": {k: int(v.sum()) for k, v in masks.items()}, "models": models, "comparisons": comparisons,
            "bootstrap": {"confidence": 0.95, "quantile_levels": [float(q) for q in QUANTILE_LEVELS]}}


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
    assert any(t.startswith("macro_f1 overall: candidate (full) - frozen in [-") and "margin -0.02: FAIL" in t
               for t in texts)
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
                    r"margin -0\.02, holm p=.*: FAIL$", text)
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
