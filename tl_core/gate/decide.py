"""decide: the gate's checks run on the evaluation report, their reasons joined into one Decision."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tl_core.config import GateSpec
from tl_core.gate.checks import CHECKS, GateInput, missing_evidence
from tl_core.gate.reasons import Decision, Reason
from tl_core.gate.summary import summary


def decide(report: dict[str, Any], policy: GateSpec, evidence_hash: str = "",
           extra_reasons: Iterable[Reason] = ()) -> Decision:
    """PASS only if every check passes; the reasons explain every check made (PASS, WARN and FAIL).

    A report that lacks the evidence to compare (``missing_evidence``) is decided on that alone; otherwise every
    check of ``CHECKS`` runs, in order. ``extra_reasons`` (the gate step's own checks) are appended.
    """
    inp = GateInput.from_report(report)
    blocking = missing_evidence(report)
    reasons = blocking if blocking else [r for check in CHECKS for r in check(inp, policy)]
    reasons = [*reasons, *extra_reasons]
    passed = not any(r.status == "FAIL" for r in reasons)
    return Decision(passed, inp.status == "none", reasons, evidence_hash, summary(report, reasons))
