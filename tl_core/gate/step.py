"""`tl gate`: decide on a run's evaluation report and write gate/decision.json (the pipeline's gate step)."""

from __future__ import annotations

from tl_core.artifacts import EvaluationReport, GateOutcome
from tl_core.evaluate.evidence import current_evidence, evidence_hash
from tl_core.gate.checks import champion_unchanged
from tl_core.gate.decide import decide
from tl_core.runs import RunContext


def run_gate(ctx: RunContext) -> GateOutcome:
    """Decide on the run's evaluation report; write gate/decision.json and re-render the HTML with the decision."""
    from tl_core.evaluate.report import render_html

    # An unreadable, missing or other-schema report stops the gate, naming it.
    report = ctx.read(EvaluationReport).model_dump(mode="json")
    evidence = current_evidence(ctx)
    champion = report.get("champion", {})
    decision = decide(report, ctx.spec.gate, evidence_hash(evidence),
                      extra_reasons=champion_unchanged(champion, evidence), evidence=evidence)
    markdown = decision.summary_markdown
    ctx.write(decision)
    ctx.store.put_bytes(ctx.key("evaluation/report.html"),
                        render_html(report, decision.model_dump(mode="json")).encode())
    # Failures first, then warnings: the ledger and the approval read the top of this list.
    failing = [r.text for r in decision.reasons if r.status == "FAIL"] + [
        r.text for r in decision.reasons if r.status == "WARN"]
    return GateOutcome(passed=decision.passed, reasons=failing or [r.text for r in decision.reasons],
                       evidence_hash=decision.evidence_hash, bootstrap=decision.bootstrap,
                       champion_version=champion.get("version"), champion_etag=champion.get("etag"),
                       candidate=report.get("candidate"), summary_markdown=markdown,
                       report_uri=ctx.uri("evaluation/report.html"))
