"""The gate decision for people: key figures (``summary``) and the approval body (``summary_markdown``).

Airflow's UI renders the approval body as Markdown: values from the data (slice values, model and version names,
the reasons' texts that quote them) go in as literal text (tl_core.textsafe), never as links, emphasis or extra
table cells. Metric names, outcomes and statuses are the gate's own closed vocabulary.
"""

from __future__ import annotations

from typing import Any

from tl_core.artifacts import GateDecision
from tl_core.gate.reasons import Reason, finite, fmt_interval
from tl_core.textsafe import code_span, escape_markdown


def summary(report: dict[str, Any], reasons: list[Reason]) -> dict[str, Any]:
    """Key figures for the approval body: overall deltas vs champion, worst slice, ECE."""
    models = report.get("models") or {}
    cand = models.get(report.get("candidate") or "") or {}
    champ = models.get("champion") or {}
    overall = {r.metric: {"lo": r.interval[0], "hi": r.interval[1], "threshold": r.threshold, "status": r.status}
               for r in reasons if r.check == "non-inferiority" and r.interval is not None}
    slices = [r for r in reasons if r.check == "slice" and r.interval is not None]
    worst = min(slices, key=lambda r: r.interval[0] if r.interval else 0.0, default=None)
    return {
        "candidate": report.get("candidate"), "champion_version": (report.get("champion") or {}).get("version"),
        "test_size": report.get("test_size"), "overall_vs_champion": overall,
        "worst_slice": None if worst is None or worst.interval is None else {
            "slice": worst.slice, "metric": worst.metric, "lo": worst.interval[0], "hi": worst.interval[1],
            "threshold": worst.threshold, "outcome": worst.outcome, "detectable": worst.detectable,
            "status": worst.status},
        "ece": {"candidate": (cand.get("overall") or {}).get("ece"),
                "champion": (champ.get("overall") or {}).get("ece")},
        "failures": sum(r.status == "FAIL" for r in reasons), "warnings": sum(r.status == "WARN" for r in reasons),
    }


def _interval_rows(decision: GateDecision, limit: int, baseline: str = "frozen") -> list[str]:
    """Table rows: every overall interval, then the ``limit`` worst slices (failures first)."""
    with_iv = [r for r in decision.reasons if r.interval is not None]
    overall = [r for r in with_iv if r.slice in (None, "overall")]
    slices = sorted((r for r in with_iv if r.slice not in (None, "overall")),
                    key=lambda r: (r.status != "FAIL", r.interval[0] if r.interval else 0.0))
    rows = []
    for r in overall + slices[:limit]:
        ref = {"ladder": "majority-class" if "majority" in r.text else baseline}.get(r.check, "champion")
        threshold = f"{r.threshold:+.3f}" if r.threshold is not None else ""
        detects = f"{r.detectable:.3f}" if r.detectable is not None else ""
        rows.append(f"| {ref} | {r.metric} | {escape_markdown(r.slice or 'overall')} | "
                    f"{fmt_interval(r.interval) if r.interval else ''} | {threshold} | {r.outcome or ''} | {detects} "
                    f"| {r.status} |")
    return rows


def summary_markdown(decision: GateDecision, report: dict[str, Any], limit: int = 6) -> str:
    """The approval body: decision, top reasons, overall and worst-slice deltas with intervals, ECE."""
    champ = report.get("champion") or {}
    conf = (report.get("bootstrap") or {}).get("confidence", 0.95)
    lines = [
        f"**Decision: {'PASS' if decision.passed else 'FAIL'}**"
        + (" (bootstrap: first model, no champion to compare with)" if decision.bootstrap else ""),
        "",
        f"Candidate: {code_span(report.get('candidate'))} | champion: {code_span(champ.get('version') or 'none')} "
        f"({escape_markdown(str(champ.get('status', 'unknown')))}) "
        f"| test examples: {escape_markdown(str(report.get('test_size')))}",
        "",
        f"| candidate minus | metric | slice | {conf:.0%} interval | threshold | outcome | detects drops >= | status |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *_interval_rows(decision, limit, escape_markdown(str(report.get("baseline") or "frozen"))),
    ]
    ece = decision.summary.get("ece") or {}
    cand_ece, champ_ece = ece.get("candidate"), ece.get("champion")
    lines += ["", "ECE after temperature: " + (f"{cand_ece:.4f}" if finite(cand_ece) else "missing")
              + (f" (champion {champ_ece:.4f})" if finite(champ_ece) else "")]
    fails, warns = decision.failures, decision.warnings
    if fails:
        lines += ["", f"Failing checks ({len(fails)}):"] + [f"- {escape_markdown(r.text)}" for r in fails[:limit]]
        if len(fails) > limit:
            lines.append(f"- ... and {len(fails) - limit} more (see the report)")
    if warns:
        lines += ["", f"Warnings ({len(warns)}):"] + [f"- {escape_markdown(r.text)}" for r in warns[:limit]]
    return "\n".join(lines)
