"""What a comparison can show: its outcome (harm, non-inferior, inconclusive) and the regression it can detect.

A check of (candidate - champion) against a non-inferiority margin ``m`` has three outcomes:

* **harm**: the difference is shown to lie below ``-m`` (the interval's upper end is under it, or for slices the
  corrected one-sided p-value of H0 "difference >= -m" is at most alpha);
* **non-inferior**: it is shown to lie at or above ``-m``;
* **inconclusive**: the interval straddles ``-m``: the test set cannot tell noise from harm at this margin.

The power figures come from the bootstrap spread alone: the standard error is read off the interval
(``se = (hi - lo) / (2 z)``, a normal approximation), so old reports without extra fields get them too. For a
family of ``k`` slice tests the Bonferroni level ``alpha / k`` is used, which is Holm's first (strictest) step,
so the figures are conservative.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# The standard normal's quantiles from the standard library: scipy.stats is heavy to import, and the gate runs on
# CPU workers where importing it must not touch torch (tests/deploy/test_cpu_worker_imports.py).
_Z = NormalDist()

HARM = "harm"
NON_INFERIOR = "non-inferior"
INCONCLUSIVE = "inconclusive"


def interval_outcome(lo: float, hi: float, margin: float) -> str:
    """The outcome of a two-sided interval of the difference against the margin ``-margin``."""
    if hi < -margin:
        return HARM
    if lo >= -margin:
        return NON_INFERIOR
    return INCONCLUSIVE


def p_outcome(p_non_inferior: float, p_harm: float, alpha: float) -> str:
    """The outcome of the two corrected one-sided tests at level ``alpha`` (harm is checked first)."""
    if p_harm <= alpha:
        return HARM
    if p_non_inferior <= alpha:
        return NON_INFERIOR
    return INCONCLUSIVE


@dataclass(frozen=True)
class Power:
    """The resolution of one comparison: its standard error, the smallest drop it detects, the rows it needs."""

    se: float
    detectable: float  # the true drop below zero that is shown as harm with the policy's power
    too_small: bool  # an equal candidate cannot show non-inferiority at the margin with that power
    rows_needed: int  # about how many test rows would make it judgeable at the margin (n when already so)


def power(lo: float, hi: float, n: int, margin: float, confidence: float, power_level: float,
          family: int = 1) -> Power:
    """The resolution of a comparison whose ``confidence`` interval is ``[lo, hi]`` on ``n`` test rows.

    ``family`` tests share the one-sided level ``(1 - confidence) / 2`` (Bonferroni). A drop ``d`` is detected
    with probability ``power_level`` when ``d >= margin + (z_alpha + z_power) * se``; an equal candidate shows
    non-inferiority with that probability when ``margin >= (z_alpha + z_power) * se``, and since the standard
    error shrinks as ``1 / sqrt(n)``, ``rows_needed = n * ((z_alpha + z_power) * se / margin) ** 2``.
    """
    alpha = (1.0 - confidence) / 2.0
    se = max(hi - lo, 0.0) / (2.0 * _Z.inv_cdf(1.0 - alpha))
    z_sum = _Z.inv_cdf(1.0 - alpha / max(family, 1)) + _Z.inv_cdf(power_level)
    reach = z_sum * se
    too_small = reach > margin
    if not too_small:
        rows = n
    elif margin <= 0:
        rows = -1  # no size judges at margin 0: a tie is never shown to be at or above 0 with certainty
    else:
        rows = math.ceil(n * (reach / margin) ** 2)
    return Power(se=se, detectable=margin + reach, too_small=too_small, rows_needed=rows)


def describe(p: Power, margin: float, power_level: float, outcome: str) -> str:
    """The power clause of a reason: what the comparison detects and, when it was inconclusive, whether its size
    can judge at the margin at all (a shown outcome was judged, whatever the power)."""
    text = f"detects drops >= {p.detectable:.3f} ({power_level:.0%} power)"
    if outcome != INCONCLUSIVE or not p.too_small:
        return text
    needed = "no size suffices at margin 0" if p.rows_needed < 0 else f"about {p.rows_needed:,} test rows needed"
    return f"{text}; too small to judge at margin {margin:g} ({needed})"
