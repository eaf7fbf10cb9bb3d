"""The int8 gate's pure checks on measurements made by tl_core.evaluate.int8.measure_int8 from synthetic
probabilities (no model): each check names the value, the bound and the threshold, and fails closed."""

from __future__ import annotations

import numpy as np
import pytest

from tl_core.config import ExportSpec
from tl_core.evaluate.int8 import measure_int8
from tl_core.gate.int8 import decide_int8


def _probs(rng: np.random.Generator, y: np.ndarray, c: int = 3) -> np.ndarray:
    logits = rng.normal(size=(len(y), c))
    logits[np.arange(len(y)), y] += 2.5
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)  # type: ignore[no-any-return]


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    fp32 = _probs(rng, y)
    noisy = fp32 * np.exp(rng.normal(scale=0.01, size=fp32.shape))  # int8-like rounding noise
    return y, fp32, noisy / noisy.sum(1, keepdims=True)


def _measure(y: np.ndarray, fp32: np.ndarray, int8: np.ndarray, metric: str = "macro_f1") -> dict:  # type: ignore[type-arg]
    return measure_int8(y, fp32, int8, metric, n_boot=300, seed=0, confidence=0.95)


def test_close_int8_passes_every_check(pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    m = _measure(*pair)
    passed, reasons = decide_int8(m, ExportSpec())
    assert passed, [r.text for r in reasons]
    assert [r.metric for r in reasons] == ["agreement", "macro_f1", "ece"]
    assert m["diff_interval"][0] <= m["int8"] - m["fp32"] <= m["diff_interval"][1]


def test_agreement_below_the_spec_fraction_fails_naming_it(pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, fp32, int8 = pair
    int8 = int8.copy()
    int8[:3] = int8[:3, ::-1]  # three rows flip their top-1 (or keep it when the reversal leaves it in place)
    m = _measure(y, fp32, int8)
    assert m["agreement"] < 1.0
    passed, reasons = decide_int8(m, ExportSpec(int8_min_agreement=1.0))
    assert not passed
    fails = [r.text for r in reasons if r.status == "FAIL"]
    assert any(f.startswith(f"top-1 agreement int8 vs fp32 {m['agreement']:.4f} ({m['disagreements']} of 400 test "
                            "examples differ) < minimum 1: FAIL") for f in fails), fails


def test_worse_int8_fails_on_the_metric_bound_and_ece(pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, fp32, _ = pair
    rng = np.random.default_rng(1)
    worse = _probs(rng, np.where(rng.random(len(y)) < 0.3, (y + 1) % 3, y))  # 30% of labels now wrong
    passed, reasons = decide_int8(_measure(y, fp32, worse), ExportSpec(int8_min_agreement=0.0))
    fails = {r.metric: r for r in reasons if r.status == "FAIL"}
    assert not passed and set(fails) >= {"macro_f1"}
    assert fails["macro_f1"].interval is not None and fails["macro_f1"].interval[0] < -0.01
    assert "lower bound" in fails["macro_f1"].text and "< -0.01: FAIL" in fails["macro_f1"].text


def test_lower_is_better_metric_is_judged_on_the_upper_bound(pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    y, fp32, int8 = pair
    m = _measure(y, fp32, int8, metric="log_loss")
    passed, reasons = decide_int8(m, ExportSpec(int8_margin=0.0, int8_ece_tolerance=1.0))
    text = next(r.text for r in reasons if r.metric == "log_loss")
    bound = m["diff_interval"][1]
    assert f"upper bound {bound:+.4f} {'<=' if bound <= 0 else '>'} +0" in text
    assert passed == (bound <= 0)


def test_no_labelled_examples_fails_closed(pair: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    _, fp32, int8 = pair
    m = _measure(np.full(len(fp32), -1), fp32, int8)
    assert m["agreement"] > 0.9 and m["diff_interval"] is None
    passed, reasons = decide_int8(m, ExportSpec())
    assert not passed and len(reasons) == 1
    assert reasons[0].text == ("int8 vs fp32: none of the 400 test examples has a known label; the paired bootstrap "
                               "needs labels: FAIL")
    empty = _measure(np.zeros(0, int), np.zeros((0, 3)), np.zeros((0, 3)))
    assert decide_int8(empty, ExportSpec())[1][0].text.startswith("int8 vs fp32: 0 test examples were scored")


def test_missing_interval_fails_closed_and_bad_shapes_are_refused() -> None:
    m = {"examples": 10, "labelled": 10, "agreement": 1.0, "disagreements": 0, "metric": "accuracy",
         "diff_interval": [float("nan"), 0.0], "ece_diff_interval": None, "confidence": 0.95}
    passed, reasons = decide_int8(m, ExportSpec())
    assert not passed
    assert [r.text for r in reasons if r.status == "FAIL"] == [
        "accuracy int8 - fp32: no finite bootstrap interval (got [nan, 0.0]): FAIL",
        "ECE int8 - fp32: no finite bootstrap interval (got None): FAIL"]
    with pytest.raises(ValueError, match=r"int8 and fp32 probabilities must both have shape \(2, C\), got \(2, 3\) "
                                         r"and \(2, 4\)"):
        measure_int8(np.zeros(2, int), np.zeros((2, 3)), np.zeros((2, 4)), "accuracy", 10, 0, 0.95)
