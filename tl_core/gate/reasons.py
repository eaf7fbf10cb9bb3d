"""What the gate says: one Reason per check made (the gate decision artifact's own GateReason; the decision that
joins them is tl_core.artifacts.GateDecision, built by tl_core.gate.decide)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tl_core.artifacts import GateReason

Reason = GateReason  # one definition: what a check returns is what gate/decision.json stores


def verdict(passed: bool, check: str, text: str, **kw: Any) -> Reason:
    """A PASS or FAIL reason; the status is appended to the text ("...: PASS")."""
    status = "PASS" if passed else "FAIL"
    return Reason(check, status, f"{text}: {status}", **kw)


def judged(outcome: str, on_inconclusive: str, check: str, text: str, **kw: Any) -> Reason:
    """A comparison's reason from its outcome: harm FAILs, non-inferior PASSes, inconclusive does what the policy
    says (``fail`` or ``warn``); the text ends with the outcome and the status ("...: inconclusive: WARN")."""
    status = {"harm": "FAIL", "non-inferior": "PASS"}.get(outcome, on_inconclusive.upper())
    return Reason(check, status, f"{text}: {outcome}: {status}", outcome=outcome, **kw)


def fail(check: str, text: str, **kw: Any) -> Reason:
    return verdict(False, check, text, **kw)


def fmt_interval(iv: Sequence[float]) -> str:
    return f"[{iv[0]:+.3f}, {iv[1]:+.3f}]"


def finite(v: Any) -> bool:
    return isinstance(v, int | float) and bool(np.isfinite(v))
