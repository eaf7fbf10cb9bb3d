"""The drift statistics on real data (sklearn's digits, Debian package descriptions), repeated over seeds on
precomputed arrays: quiet on samples from the training distribution (false alarms near the nominal level), firing
on another class mix and another input domain, and the label-free accuracy estimate close to the truth."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitor_fixtures import DEBIAN, digits_features, temperature_scaled
from tl_core.config import MonitorSpec
from tl_core.monitor import stats
from tl_core.monitor.drift import decide_alerts

SEEDS = range(40)
ALPHA = 0.05
N = 300  # rows per side


@pytest.fixture(scope="module")
def digits() -> dict[str, Any]:
    """Digits split once: a model trained (with temperature) on 600 rows, the rest a pool to draw partitions from."""
    x, y = digits_features()
    order = np.random.default_rng(0).permutation(len(y))
    train, cal, pool = order[:500], order[500:700], order[700:]
    predict = temperature_scaled(x[train], y[train], x[cal], y[cal], c=0.05)
    return {"x": x, "y": y, "train": train, "pool": pool, "probs": predict(x[pool]), "y_pool": y[pool]}


def _halves(pool_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random draws of N rows from the pool: 'the champion's test split' and 'the partition'."""
    order = np.random.default_rng(seed + 100).permutation(pool_size)
    return order[:N], order[N:2 * N]


def test_embedding_test_false_alarm_rate_is_near_alpha(digits: dict[str, Any]) -> None:
    x = digits["x"]
    pool = digits["pool"]
    p = [stats.mmd_permutation_test(x[pool[ref]], x[pool[cur]], 200, s)["p_value"]
         for s in SEEDS for ref, cur in [_halves(len(pool), s)]]
    rate = float(np.mean(np.array(p) < ALPHA))
    print(f"embedding MMD false-alarm rate at alpha {ALPHA}: {rate:.3f} over {len(p)} seeds")
    assert rate <= 0.125  # P(X >= 6 | n=40, p=0.05) = 0.014
    assert 0.2 < float(np.mean(p)) < 0.8  # p-values spread over (0, 1), not stuck at either end


def test_prediction_and_accuracy_tests_are_quiet_in_distribution(digits: dict[str, Any]) -> None:
    probs, y = digits["probs"], digits["y_pool"]
    chi_alarms, psi_values, gaps = [], [], []
    for s in SEEDS:
        ref, cur = _halves(len(y), s)
        ref_counts = np.bincount(probs[ref].argmax(1), minlength=10)
        cur_counts = np.bincount(probs[cur].argmax(1), minlength=10)
        chi_alarms.append(stats.chi_square(ref_counts, cur_counts)["p_value"] < ALPHA)
        psi_values.append(stats.psi(ref_counts, cur_counts))
        test_accuracy = float((probs[ref].argmax(1) == y[ref]).mean())
        gaps.append(test_accuracy - stats.expected_accuracy(probs[cur]))
    monitor = MonitorSpec()
    print(f"chi-square false-alarm rate at alpha {ALPHA}: {np.mean(chi_alarms):.3f}; PSI max {max(psi_values):.3f} "
          f"(threshold {monitor.psi_threshold}); accuracy-drop alarms {np.mean(np.array(gaps) > monitor.accuracy_drop)}"
          f" (largest drop {max(gaps):.3f}, threshold {monitor.accuracy_drop})")
    assert np.mean(chi_alarms) <= 0.125
    assert max(psi_values) < monitor.psi_threshold
    assert max(gaps) < monitor.accuracy_drop


def test_another_class_mix_fires_the_prediction_tests(digits: dict[str, Any]) -> None:
    probs, y = digits["probs"], digits["y_pool"]
    fired = []
    for s in SEEDS:
        ref, cur = _halves(len(y), s)
        cur = cur[y[cur] < 5]  # only digits 0-4 arrive
        ref_counts = np.bincount(probs[ref].argmax(1), minlength=10)
        cur_counts = np.bincount(probs[cur].argmax(1), minlength=10)
        fired.append((stats.chi_square(ref_counts, cur_counts)["p_value"] < ALPHA,
                      stats.psi(ref_counts, cur_counts) > MonitorSpec().psi_threshold))
    print(f"class mix: chi-square detection {np.mean([f[0] for f in fired]):.3f}, PSI detection "
          f"{np.mean([f[1] for f in fired]):.3f} over {len(fired)} seeds")
    assert all(f[0] and f[1] for f in fired)


def test_another_input_domain_fires_the_embedding_test(digits: dict[str, Any]) -> None:
    x = digits["x"]
    detected = []
    for s in SEEDS[:20]:
        rng = np.random.default_rng(s)
        cur = digits["pool"][_halves(len(digits["pool"]), s)[1]]
        scanner = np.clip(x[cur] * 0.7 + 4 + rng.normal(0, 2, x[cur].shape), 0, 16)  # a dimmer, noisier scanner
        detected.append(stats.mmd_permutation_test(x[digits["train"][:N]], scanner, 200, s)["p_value"] < ALPHA)
    print(f"input domain (another scanner): embedding detection {np.mean(detected):.3f} over {len(detected)} seeds")
    assert all(detected)


def test_label_free_accuracy_is_close_to_the_truth_on_digits(digits: dict[str, Any]) -> None:
    probs, y = digits["probs"], digits["y_pool"]
    estimate = stats.expected_accuracy(probs)
    truth = float((probs.argmax(1) == y).mean())
    print(f"digits: CBPE estimate {estimate:.4f} vs true accuracy {truth:.4f} on {len(y)} held-out rows "
          f"(gap {estimate - truth:+.4f})")
    assert abs(estimate - truth) < 0.03


def test_label_free_accuracy_is_close_to_the_truth_on_debian_descriptions() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    df = pd.read_parquet(DEBIAN)
    labels = sorted(df["label"].unique())
    y = df["label"].map({name: i for i, name in enumerate(labels)}).to_numpy()
    folds = np.array_split(np.random.default_rng(0).permutation(len(df)), 5)
    probs = np.zeros((len(df), len(labels)))
    for k in range(5):  # cross-fitting: every row held out once; the next fold calibrates, the rest trains
        test, cal = folds[k], folds[(k + 1) % 5]
        train = np.concatenate([folds[j] for j in range(5) if j not in (k, (k + 1) % 5)])
        vec = TfidfVectorizer(sublinear_tf=True, min_df=2).fit(df["text"].iloc[train])
        features = vec.transform(df["text"]).toarray()
        probs[test] = temperature_scaled(features[train], y[train], features[cal], y[cal], c=1.0)(features[test])
    estimate, truth = stats.expected_accuracy(probs), float((probs.argmax(1) == y).mean())
    print(f"debian: CBPE estimate {estimate:.4f} vs true accuracy {truth:.4f} on {len(y)} held-out rows "
          f"(gap {estimate - truth:+.4f})")
    assert abs(estimate - truth) < 0.05


def _report(**over: Any) -> dict[str, Any]:
    report = {"rows": 500,
              "embedding": {"status": "ok", "statistic": 0.01, "p_value": 0.5},
              "predictions": {"psi": 0.01, "chi2": 1.0, "chi2_p_value": 0.6, "dof": 2,
                              "reference_counts": {"a": 50, "b": 50, "c": 50},
                              "current_counts": {"a": 160, "b": 170, "c": 170}},
              "accuracy": {"expected_accuracy": 0.9, "reference_accuracy": 0.92, "slices": {
                  "region=eu": {"rows": 250, "expected_accuracy": 0.8, "reference_accuracy": 0.9},
                  "region=us": {"rows": 10, "expected_accuracy": 0.1, "reference_accuracy": 0.9}}}}
    report.update(over)
    return report


def test_alerts_name_the_metric_the_value_and_the_threshold() -> None:
    monitor = MonitorSpec()
    alerts = decide_alerts(_report(), monitor)
    # region=us dropped more but has 10 rows (< min_slice_rows): reported, never alerting
    assert [(a["metric"], a["slice"]) for a in alerts] == [("expected_accuracy_drop", "region=eu")]
    assert alerts[0]["value"] == pytest.approx(0.1) and alerts[0]["threshold"] == monitor.accuracy_drop
    assert "estimated 0.800 vs the champion's test accuracy 0.900" in alerts[0]["text"]
    moved = decide_alerts(_report(predictions={"psi": 0.9, "chi2": 80.0, "chi2_p_value": 1e-9, "dof": 2,
                                               "reference_counts": {"a": 50, "b": 50, "c": 50},
                                               "current_counts": {"a": 450, "b": 25, "c": 25}},
                                  embedding={"status": "ok", "statistic": 0.2, "p_value": 0.004}), monitor)
    assert {a["metric"] for a in moved} >= {"prediction_psi", "prediction_chi2_p_value", "embedding_mmd_p_value"}
    assert any("a 33.3% -> 90.0%" in a["text"] for a in moved)
    gone = decide_alerts(_report(embedding={"status": "unavailable", "reason": "run r1 is gone"}), monitor)
    assert gone[0]["metric"] == "embedding_drift_unmeasured" and "run r1 is gone" in gone[0]["text"]


def test_statistics_refuse_unusable_input() -> None:
    with pytest.raises(ValueError, match="at least 2 rows on each side, got 1 and 5"):
        stats.mmd_permutation_test(np.zeros((1, 3)), np.zeros((5, 3)), 10, 0)
    with pytest.raises(ValueError, match=r"same width, got \(4, 3\) and \(4, 2\)"):
        stats.mmd_permutation_test(np.zeros((4, 3)), np.zeros((4, 2)), 10, 0)
    assert stats.chi_square(np.array([5, 0]), np.array([7, 0]))["p_value"] == 1.0
