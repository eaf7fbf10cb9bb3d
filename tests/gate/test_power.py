"""Outcomes and power of one comparison: the three outcomes, the detectable drop, the rows a margin needs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from tl_core.gate.power import HARM, INCONCLUSIVE, NON_INFERIOR, describe, interval_outcome, p_outcome, power


def test_interval_outcome_against_the_margin() -> None:
    assert interval_outcome(-0.01, 0.02, 0.02) == NON_INFERIOR
    assert interval_outcome(-0.02, 0.02, 0.02) == NON_INFERIOR  # the bound at the margin counts as shown
    assert interval_outcome(-0.05, 0.01, 0.02) == INCONCLUSIVE
    assert interval_outcome(-0.09, -0.03, 0.02) == HARM
    assert interval_outcome(-0.09, -0.02, 0.02) == INCONCLUSIVE


def test_p_outcome_checks_harm_first() -> None:
    assert p_outcome(0.001, 0.9, 0.025) == NON_INFERIOR
    assert p_outcome(0.9, 0.001, 0.025) == HARM
    assert p_outcome(0.2, 0.3, 0.025) == INCONCLUSIVE


def test_power_figures_follow_the_normal_approximation() -> None:
    z = norm.ppf(0.975)
    se = 0.01
    p = power(-z * se, z * se, 1000, 0.05, 0.95, 0.8)
    assert p.se == pytest.approx(se)
    assert p.detectable == pytest.approx(0.05 + (z + norm.ppf(0.8)) * se)
    assert not p.too_small and p.rows_needed == 1000
    # A family of slices asks more of each (Bonferroni level), so it detects less.
    assert power(-z * se, z * se, 1000, 0.05, 0.95, 0.8, family=5).detectable > p.detectable


def test_rows_needed_makes_the_margin_judgeable() -> None:
    """At rows_needed rows (se shrinking as 1/sqrt(n)) an equal candidate reaches the margin with the power."""
    z = norm.ppf(0.975)
    small = power(-z * 0.03, z * 0.03, 200, 0.03, 0.95, 0.8)
    assert small.too_small and small.rows_needed > 200
    se_then = 0.03 * np.sqrt(200 / small.rows_needed)
    then = power(-z * se_then, z * se_then, small.rows_needed, 0.03, 0.95, 0.8)
    assert not then.too_small and then.detectable == pytest.approx(0.06, abs=1e-3)
    assert power(-0.01, 0.01, 500, 0.0, 0.95, 0.8).rows_needed == -1


def test_describe_names_an_inconclusive_slice_too_small() -> None:
    small = power(-0.1, 0.1, 40, 0.03, 0.95, 0.8)
    text = describe(small, 0.03, 0.8, INCONCLUSIVE)
    assert text.startswith("detects drops >= 0.") and "too small to judge at margin 0.03 (about" in text
    assert "too small" not in describe(small, 0.03, 0.8, HARM)  # a shown outcome was judged
    assert "no size suffices at margin 0" in describe(power(-0.01, 0.01, 500, 0.0, 0.95, 0.8), 0.0, 0.8,
                                                      INCONCLUSIVE)
