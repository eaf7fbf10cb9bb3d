"""`tl gate`: decide on a run's evaluation report and write gate/decision.json (the pipeline's gate step)."""

from __future__ import annotations

from typing import Any

from tl_core.artifacts import DECISION_SCHEMA_VERSION, GateDecision, check_artifact, read_evaluation_report
from tl_core.errors import NoSuchKey, TLError
from tl_core.evaluate.evidence import current_evidence, evidence_hash
from tl_core.gate.checks import champion_unchanged
from tl_core.gate.decide import decide
from tl_core.gate.summary import summary_markdown
from tl_core.runs import RunContext


def run_gate(ctx: RunContext) -> dict[str, Any]:
    """Decide on the run's evaluation report; write gate/decision.json and re-render the HTML with the decision."""
    from tl_core.evaluate.report import render_html

    try:
        report = read_evaluation_report(ctx)  # an unreadable or other-schema report stops the gate, naming it
    except NoSuchKey:
        raise TLError(f"{ctx.uri('evaluation/report.json')} is missing: run `tl evaluate` first") from None
    evidence = current_evidence(ctx)
    champion = report.get("champion", {})
    decision = decide(report, ctx.spec.gate, evidence_hash(evidence),
                      extra_reasons=champion_unchanged(champion, evidence))
    markdown = summary_markdown(decision, report)
    payload = decision.to_json()
    payload.update(schema_version=DECISION_SCHEMA_VERSION, champion_version=champion.get("version"),
                   champion_etag=champion.get("etag"), candidate=report.get("candidate"), evidence=evidence,
                   summary_markdown=markdown)
    check_artifact(GateDecision, payload, ctx.uri("gate/decision.json"))
    ctx.write_json("gate/decision.json", payload)
    ctx.store.put_bytes(ctx.key("evaluation/report.html"), render_html(report, payload).encode())
    # Failures first, then warnings: the ledger and the approval read the top of this list.
    failing = [r.text for r in decision.reasons if r.status == "FAIL"] + [
        r.text for r in decision.reasons if r.status == "WARN"]
    return {"passed": decision.passed, "reasons": failing or [r.text for r in decision.reasons],
            "evidence_hash": decision.evidence_hash, "bootstrap": decision.bootstrap,
            "champion_version": champion.get("version"), "champion_etag": champion.get("etag"),
            "candidate": report.get("candidate"), "summary_markdown": markdown,
            "report_uri": ctx.uri("evaluation/report.html")}
