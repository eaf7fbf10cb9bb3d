"""decide: the gate's checks run on the evaluation report, their reasons joined into one Decision."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tl_core.artifacts import GateDecision
from tl_core.config import GateSpec
from tl_core.gate.checks import CHECKS, GateInput, missing_evidence
from tl_core.gate.reasons import Reason
from tl_core.gate.summary import summary, summary_markdown


def decide(report: dict[str, Any], policy: GateSpec, evidence_hash: str = "",
           extra_reasons: Iterable[Reason] = (), evidence: dict[str, Any] | None = None) -> GateDecision:
    """The gate decision artifact (pure): PASS only if every check passes; the reasons explain every check made
    (PASS, WARN and FAIL), with the approval body (``summary_markdown``).

    A report that lacks the evidence to compare (``missing_evidence``) is decided on that alone; otherwise every
    check of ``CHECKS`` runs, in order. ``extra_reasons`` (the gate step's own checks) are appended; ``evidence``
    and ``evidence_hash`` are what the decision rests on (tl_core.evaluate.evidence), recorded as given.
    """
    inp = GateInput.from_report(report)
    blocking = missing_evidence(report)
    reasons = blocking if blocking else [r for check in CHECKS for r in check(inp, policy)]
    reasons = [*reasons, *extra_reasons]
    passed = not any(r.status == "FAIL" for r in reasons)
    decision = GateDecision(
        decision="PASS" if passed else "FAIL", passed=passed, bootstrap=inp.status == "none", reasons=reasons,
        evidence_hash=evidence_hash, evidence=dict(evidence or {}), summary=summary(report, reasons),
        summary_markdown="", candidate=inp.candidate, champion_version=inp.champion.get("version"),
        champion_etag=inp.champion.get("etag"))
    return decision.model_copy(update={"summary_markdown": summary_markdown(decision, report)})
