"""Issue 29.2: data values (slice values, class names, model names) are drawn as plain text in the evidence and
drift reports' plots: a ``$`` is a dollar sign, never mathtext markup (``EU$$`` used to crash the renderer)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import matplotlib
import pytest
from matplotlib.text import Text

from tl_core.evaluate.report import render_html
from tl_core.monitor.html import drift_page

SLICES = ["region=EU$$", "price=$5 off $10", "shape=$x^2$", "a_b"]
LABELS = ["EU$$", "$x^2$", "a_b"]


@pytest.fixture
def drawn_as_math(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The strings matplotlib laid out as mathtext or TeX while the test ran."""
    seen: list[str] = []
    original = Text._preprocess_math  # type: ignore[attr-defined]  # where every text picks math or plain

    def spy(self: Text, s: str) -> tuple[str, Any]:
        out = original(self, s)
        if out[1]:  # "TeX" or True: not plain text
            seen.append(s)
        return out

    monkeypatch.setattr(Text, "_preprocess_math", spy)
    yield seen


def _model(role: str, value: float) -> dict[str, Any]:
    rel = {k: {"count": [1] * 15, "confidence": [0.5] * 15, "accuracy": [0.5] * 15} for k in ("before", "after")}
    return {"role": role, "temperature": 1.2, "overall": {"n": 120, "macro_f1": value, "ece": 0.05},
            "before_temperature": {"ece": 0.08}, "confusion": [[5, 1, 0], [1, 5, 1], [0, 1, 5]], "reliability": rel,
            "slices": {s: {"macro_f1": value - 0.01 * i} for i, s in enumerate(SLICES)},
            "intervals": {"macro_f1": {s: [value - 0.1, value + 0.05] for s in ["overall", *SLICES]}}}


def _evaluation_report() -> dict[str, Any]:
    diffs = {s: {"diff": -0.01, "lo": -0.05, "hi": 0.03} for s in ["overall", *SLICES]}
    return {"model": "shop$$", "run_id": "r", "labels": LABELS, "candidate": "full$x$", "test_size": 120,
            "primary_metric": "macro_f1", "slices": {s: 30 for s in SLICES},
            "champion": {"status": "ok", "version": "v0001", "reason": ""},
            "models": {"full$x$": _model("candidate", 0.8), "champion": _model("champion", 0.78)},
            "comparisons": {"champion": {"macro_f1": diffs}}, "gate_policy": {"margins": {"macro_f1": 0.02}},
            "curves": {"full$x$": [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_metric": 0.7}]},
            "audit": None, "bootstrap": {"confidence": 0.95}}


def _drift_report() -> dict[str, Any]:
    counts = {label: 10 + i for i, label in enumerate(LABELS)}
    return {"model": "shop$$", "dt": "2026-12-01", "champion_version": "v0001", "challenger_version": None,
            "rows": 90, "alerts": [{"metric": "prediction_psi", "text": "prediction shift: EU$$ 10% -> 30%"}],
            "disagreement": None, "thresholds": {"accuracy_drop": 0.05},
            "embedding": {"status": "ok", "statistic": 0.01, "p_value": 0.4,
                          "null_quantiles": {"0.5": 0.005, "0.95": 0.02}},
            "predictions": {"reference_counts": counts, "current_counts": counts, "psi": 0.01, "chi2_p_value": 0.9},
            "accuracy": {"expected_accuracy": 0.8, "reference_accuracy": 0.82,
                         "slices": {s: {"rows": 30, "expected_accuracy": 0.79, "reference_accuracy": 0.8}
                                    for s in SLICES}}}


def test_dollar_signs_in_slice_values_and_labels_render_as_text_in_the_evidence_report(
        drawn_as_math: list[str]) -> None:
    page = render_html(_evaluation_report(), None)
    assert page.count("data:image/png;base64,") == 6  # slice chart, 2 reliability, 2 confusion, curves
    assert drawn_as_math == []
    for value in [*SLICES, *LABELS]:  # in the slice table and the plots' alt text
        assert html.escape(value) in page, value
    assert "macro_f1 per slice with intervals, candidate vs champion: overall, region=EU$$" in page
    assert "confusion matrix of the candidate (full$x$) over EU$$, $x^2$, a_b" in page


def test_dollar_signs_in_slice_values_and_classes_render_as_text_in_the_drift_report(
        drawn_as_math: list[str]) -> None:
    page = drift_page(_drift_report())
    assert page.count("data:image/png;base64,") == 3 and drawn_as_math == []
    assert "predicted-class shares, reference vs partition: EU$$, $x^2$, a_b" in page
    for value in SLICES:
        assert f"{html.escape(value)} (n=30)" in page, value


def test_figures_leave_the_global_text_settings_alone() -> None:
    """Plain text is a per-figure setting: a report does not switch mathtext off for the rest of the process."""
    before = {k: v for k, v in matplotlib.rcParams.items() if k.startswith("text.")}
    render_html(_evaluation_report(), None)
    assert {k: v for k, v in matplotlib.rcParams.items() if k.startswith("text.")} == before
    assert before["text.parse_math"] is True
