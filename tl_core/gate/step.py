"""`tl gate`: decide on a run's evaluation report and write gate/decision.json (the pipeline's gate step)."""

from __future__ import annotations

from typing import Any

from tl_core.artifacts import EvaluationReport, GateDecision, GateOutcome
from tl_core.evaluate.evidence import current_evidence, evidence_hash
from tl_core.gate.checks import champion_unchanged
from tl_core.gate.decide import decide
from tl_core.runs import GATE_REPORT_HTML, RunContext


def run_gate(ctx: RunContext) -> GateOutcome:
    """Decide on the run's evaluation report; write the evidence report with the decision (gate/report.html, the
    gate's own page: evaluation/report.html is evaluate's and is never rewritten), then gate/decision.json (last:
    its presence marks the gate as done)."""
    from tl_core.evaluate.report import render_html

    # An unreadable, missing or other-schema report stops the gate, naming it.
    report = ctx.read(EvaluationReport).model_dump(mode="json")
    evidence = current_evidence(ctx)
    decision = decide(report, ctx.spec.gate, evidence_hash(evidence),
                      extra_reasons=champion_unchanged(report.get("champion", {}), evidence), evidence=evidence)
    ctx.store.put_bytes(ctx.key(GATE_REPORT_HTML), render_html(report, decision.model_dump(mode="json")).encode())
    ctx.write(decision)
    return gate_outcome(ctx, report, decision)


def read_gate_outcome(ctx: RunContext) -> GateOutcome:
    """The outcome of the gate that already decided on this run (gate/decision.json and the report it read)."""
    return gate_outcome(ctx, ctx.read(EvaluationReport).model_dump(mode="json"), ctx.read(GateDecision))


def gate_outcome(ctx: RunContext, report: dict[str, Any], decision: GateDecision) -> GateOutcome:
    """What the tasks after the gate get: the decision, with failures first, then warnings (the ledger and the
    approval read the top of this list)."""
    champion = report.get("champion", {})
    failing = [r.text for r in decision.reasons if r.status == "FAIL"] + [
        r.text for r in decision.reasons if r.status == "WARN"]
    return GateOutcome(passed=decision.passed, reasons=failing or [r.text for r in decision.reasons],
                       evidence_hash=decision.evidence_hash, bootstrap=decision.bootstrap,
                       champion_version=champion.get("version"), champion_etag=champion.get("etag"),
                       candidate=report.get("candidate"), summary_markdown=decision.summary_markdown,
                       report_uri=ctx.uri(GATE_REPORT_HTML))
