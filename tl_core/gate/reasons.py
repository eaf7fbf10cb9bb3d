"""What the gate says: one Reason per check made, and the Decision that joins them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Reason:
    check: str  # evidence | champion | minimum | calibration | ladder | non-inferiority | slice | bootstrap | licence
    status: str  # PASS | FAIL | WARN
    text: str
    metric: str | None = None
    slice: str | None = None
    interval: tuple[float, float] | None = None
    threshold: float | None = None
    outcome: str | None = None  # harm | non-inferior | inconclusive (comparisons against a margin only)
    detectable: float | None = None  # the smallest drop this comparison shows as harm with the policy's power


@dataclass
class Decision:
    passed: bool
    bootstrap: bool
    reasons: list[Reason] = field(default_factory=list)
    evidence_hash: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[Reason]:
        return [r for r in self.reasons if r.status == "FAIL"]

    @property
    def warnings(self) -> list[Reason]:
        return [r for r in self.reasons if r.status == "WARN"]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "decision": "PASS" if self.passed else "FAIL", "bootstrap": self.bootstrap,
                "evidence_hash": self.evidence_hash, "reasons": [asdict(r) for r in self.reasons],
                "summary": self.summary}


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


def fmt_interval(iv: tuple[float, float]) -> str:
    return f"[{iv[0]:+.3f}, {iv[1]:+.3f}]"


def finite(v: Any) -> bool:
    return isinstance(v, int | float) and bool(np.isfinite(v))
