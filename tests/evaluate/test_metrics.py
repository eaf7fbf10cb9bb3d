"""Metrics vs scikit-learn, ECE/MCE vs a loop reference, temperature scaling, the bootstrap vs a per-replicate loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

import tl_core.evaluate.bootstrap as bootstrap_module
from tl_core.evaluate.bootstrap import adjust, holm, interval, paired_bootstrap, weighted_auroc
from tl_core.evaluate.calibration import fit_temperature, nll
from tl_core.evaluate.metrics import all_metrics, ece, mce, softmax

LABELS = ["a", "b", "c", "d"]


def random_probs(rng: np.random.Generator, n: int, c: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) * 2
    logits[np.arange(n), y] += signal
    return softmax(logits), y


def reference_calibration(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[float, float]:
    """Straightforward ECE and MCE: equal-width bins (lo, hi] on the top-1 confidence."""
    conf, pred = probs.max(1), probs.argmax(1)
    total, worst = 0.0, 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        m = (conf > lo) & (conf <= hi)
        if m.any():
            gap = abs((pred[m] == y[m]).mean() - conf[m].mean())
            total += m.mean() * gap
            worst = max(worst, gap)
    return total, worst


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs, y = random_probs(rng, 400 + 50 * seed, 4, signal=0.5 + seed)
    m = all_metrics(probs, y, LABELS)
    pred = probs.argmax(1)
    assert m["n"] == len(y)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=[0, 1, 2, 3]))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, probs, labels=[0, 1, 2, 3], scale_by_half=False))
    ref_ece, ref_mce = reference_calibration(probs, y)
    assert m["ece"] == pytest.approx(ref_ece) and m["mce"] == pytest.approx(ref_mce)
    p, r, f, support = skm.precision_recall_fscore_support(y, pred, labels=[0, 1, 2, 3], zero_division=0)
    for i, k in enumerate(LABELS):
        got = m["per_class"][k]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p[i], r[i], f[i]))
        assert got["support"] == support[i]
    assert m["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2, 3]).tolist()


def test_metrics_with_absent_classes_follow_sklearn() -> None:
    rng = np.random.default_rng(5)
    probs, y = random_probs(rng, 300, 4)
    y = np.where(y == 3, 0, y)  # class d never occurs in y_true but may be predicted
    m = all_metrics(probs, y, LABELS)
    pred = probs.argmax(1)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    with pytest.warns(UserWarning):
        expected = skm.balanced_accuracy_score(y, pred)
    assert m["balanced_accuracy"] == pytest.approx(expected)
    assert m["per_class"]["d"]["support"] == 0 and m["per_class"]["d"]["recall"] == 0.0
    assert all_metrics(probs[:0], y[:0], LABELS) == {"n": 0}


def test_ece_of_perfectly_calibrated_bins_is_zero_and_mce_is_the_worst_gap() -> None:
    # 10 examples at confidence 0.8, 8 right; 10 at 0.6, 3 right (gap 0.3).
    probs = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 10)
    y = np.array([0] * 8 + [1] * 2 + [0] * 3 + [1] * 7)
    assert ece(probs, y) == pytest.approx(0.5 * 0.0 + 0.5 * 0.3)
    assert mce(probs, y) == pytest.approx(0.3)


def test_temperature_fixes_overconfidence_and_keeps_accuracy() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    logits = rng.normal(size=(2000, 3))
    logits[np.arange(2000), y] += 1.0
    overconfident = logits * 4.0
    t = fit_temperature(overconfident, y)
    assert 2.5 < t < 6.0
    grid = np.exp(np.linspace(np.log(0.5), np.log(20), 400))
    assert nll(overconfident, y, t) <= min(nll(overconfident, y, float(g)) for g in grid) + 1e-6
    assert nll(overconfident, y, t) < nll(overconfident, y, 1.0) - 0.1
    before, after = softmax(overconfident), softmax(overconfident, t)
    assert (before.argmax(1) == after.argmax(1)).all()
    assert ece(after, y) < ece(before, y) / 2
    assert fit_temperature(logits[:0], y[:0]) == 1.0
    with pytest.raises(ValueError, match=r"logits must be \(n, C\) with n = len\(y\) = 4, got shape \(5, 3\)"):
        fit_temperature(logits[:5], y[:4])


def test_holm_bonferroni_and_interval() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert adjust([0.01, 0.2], "bonferroni") == pytest.approx([0.02, 0.4])
    assert adjust([0.01, 0.2], "none") == [0.01, 0.2]
    with pytest.raises(ValueError, match="unknown multiple-comparison correction 'bh'"):
        adjust([0.1], "bh")
    lo, hi = interval(np.r_[np.arange(1001.0), np.nan], 0.9)
    assert (lo, hi) == pytest.approx((50.0, 950.0))
    assert np.isnan(interval(np.full(5, np.nan), 0.95)[0])


def _naive_replicates(n: int, n_boot: int, seed: int, chunk: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    for start in range(0, n_boot, chunk):
        rows.extend(rng.integers(0, n, size=(min(chunk, n_boot - start), n)))
    return rows


def test_bootstrap_equals_scoring_each_resample(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every replicate of every group, model and metric equals all_metrics on the resampled rows."""
    rng = np.random.default_rng(1)
    n = 240
    p1, y = random_probs(rng, n, 3)
    p2 = softmax(np.log(p1) + rng.normal(size=p1.shape))
    groups = {"overall": np.ones(n, bool), "r=a": np.arange(n) < 90, "r=b": np.arange(n) >= 90,
              "r=a&c=x": (np.arange(n) < 90) & (np.arange(n) % 2 == 0)}
    monkeypatch.setattr(bootstrap_module, "CHUNK_BUDGET", n * 7)  # several chunks of 7 replicates
    metrics = ("accuracy", "balanced_accuracy", "macro_f1", "log_loss", "brier", "ece", "auroc")
    res = paired_bootstrap(y, {"m1": p1, "m2": p2}, groups, 20, 3, metrics[3:], tuple(groups))
    for b, idx in enumerate(_naive_replicates(n, 20, 3, 7)):
        for gi, mask in enumerate(groups.values()):
            rows = idx[mask[idx]]
            for name, p in (("m1", p1), ("m2", p2)):
                ref = all_metrics(p[rows], y[rows], ["x", "y", "z"])
                got = [res.samples[name][k][b, gi] for k in metrics]
                assert got == pytest.approx([ref[k] for k in metrics], rel=1e-5, nan_ok=True)


def test_bootstrap_pairing_and_empty_groups() -> None:
    rng = np.random.default_rng(0)
    probs, y = random_probs(rng, 300, 3)
    groups = {"overall": np.ones(300, bool), "s=a": np.arange(300) < 100, "tiny": np.arange(300) == 7}
    boot = paired_bootstrap(y, {"a": probs, "b": probs.copy()}, groups, 200, 0, ("ece", "log_loss"))
    for metric in ("accuracy", "macro_f1", "ece", "log_loss"):
        np.testing.assert_array_equal(boot.samples["a"][metric], boot.samples["b"][metric])
    # A one-example group is empty in about (1 - 1/n)^n of the replicates: NaN there, never 0.
    empty = np.isnan(boot.samples["a"]["accuracy"][:, 2]).mean()
    assert 0.25 < empty < 0.5
    # Continuous metrics only where asked (overall by default).
    assert np.isnan(boot.samples["a"]["ece"][:, 1]).all() and np.isfinite(boot.samples["a"]["ece"][:, 0]).all()
    assert np.nanmean(boot.samples["a"]["accuracy"][:, 0]) == pytest.approx((probs.argmax(1) == y).mean(), abs=0.01)


def test_bootstrap_rejects_bad_inputs() -> None:
    rng = np.random.default_rng(0)
    probs, y = random_probs(rng, 50, 3)
    ones = {"overall": np.ones(50, bool)}
    with pytest.raises(ValueError, match="at least one test example, got 0"):
        paired_bootstrap(y[:0], {"a": probs[:0]}, {"overall": np.ones(0, bool)}, 10, 0)
    with pytest.raises(ValueError, match=r"probabilities of model 'b' must have shape \(50, 3\), got \(49, 3\)"):
        paired_bootstrap(y, {"a": probs, "b": probs[:49]}, ones, 10, 0)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 3\), got values in \[0, 5\]"):
        paired_bootstrap(np.r_[y[:-1], 5], {"a": probs}, ones, 10, 0)
    with pytest.raises(ValueError, match=r"group 'g': mask must have shape \(50,\), got \(10,\)"):
        paired_bootstrap(y, {"a": probs}, {**ones, "g": np.ones(10, bool)}, 10, 0)
    with pytest.raises(ValueError, match=r"unknown continuous metrics \['f2'\]"):
        paired_bootstrap(y, {"a": probs}, ones, 10, 0, ("f2",))
    with pytest.raises(ValueError, match=r"continuous_groups names groups that are not defined: \['x'\]"):
        paired_bootstrap(y, {"a": probs}, ones, 10, 0, ("ece",), ("x",))
    with pytest.raises(ValueError, match="n_boot >= 1, got 0"):
        paired_bootstrap(y, {"a": probs}, ones, 0, 0)


def test_weighted_auroc_matches_sklearn_with_sample_weights_and_ties() -> None:
    rng = np.random.default_rng(2)
    probs, y = random_probs(rng, 200, 3)
    probs = np.round(probs, 1)  # many ties
    w = rng.integers(0, 3, size=(4, 200)).astype(float)
    got = weighted_auroc(w, y, probs)
    for r in range(4):
        per_class = [skm.roc_auc_score(y == k, probs[:, k], sample_weight=w[r]) for k in range(3)]
        assert got[r] == pytest.approx(np.mean(per_class))


def test_average_ranks_match_scipy() -> None:
    from scipy.stats import rankdata

    from tl_core.evaluate.metrics import average_ranks

    x = np.round(np.random.default_rng(3).random(500), 2)
    np.testing.assert_allclose(average_ranks(x), rankdata(x))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), c=st.integers(2, 5), seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0))
def test_metric_properties(n: int, c: int, seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    probs = softmax(rng.normal(size=(n, c)) * scale)
    m = all_metrics(probs, y, [str(i) for i in range(c)])
    for k in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "mce"):
        assert 0.0 <= m[k] <= 1.0 + 1e-12, k
    assert m["ece"] <= m["mce"] + 1e-12 and m["log_loss"] >= 0 and 0 <= m["brier"] <= 2 + 1e-12
    assert sum(map(sum, m["confusion"])) == n
    # Temperature never changes the predictions.
    t = fit_temperature(np.log(probs), y)
    assert (softmax(np.log(probs), t).argmax(1) == probs.argmax(1)).all()


def test_bootstrap_interval_coverage() -> None:
    """The 90% percentile interval of the accuracy difference covers the true difference in ~90% of test sets."""
    rng = np.random.default_rng(11)
    covered = 0
    sims = 150
    for sim in range(sims):
        n = 400
        y = rng.integers(0, 2, n)
        right_a = rng.random(n) < 0.80
        right_b = rng.random(n) < 0.75  # true difference 0.05
        pa, pb = np.full((n, 2), 0.3), np.full((n, 2), 0.3)
        pa[np.arange(n), np.where(right_a, y, 1 - y)] = 0.7
        pb[np.arange(n), np.where(right_b, y, 1 - y)] = 0.7
        boot = paired_bootstrap(y, {"a": pa, "b": pb}, {"overall": np.ones(n, bool)}, 300, sim)
        lo, hi = interval(boot.samples["a"]["accuracy"][:, 0] - boot.samples["b"]["accuracy"][:, 0], 0.90)
        covered += lo <= 0.05 <= hi
    assert 0.84 <= covered / sims <= 0.96
