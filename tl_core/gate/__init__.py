"""The promotion gate: a pure function of the evaluation report and the spec's policy.

It fails closed: an empty test set, a required slice with no examples, an unreadable champion or a
missing metric is a FAIL with that reason, never a silent PASS. Non-inferiority margins apply to the
lower confidence bound of (candidate - champion), oriented so that positive means "candidate better".
Overall, the bound is the two-sided ``confidence`` percentile interval's lower end; per slice, the
one-sided bootstrap p-values of H0 "difference < -margin" are corrected across slices (Holm by default)
and compared with (1 - confidence) / 2. Every reason names the metric, the slice, the observed interval
and the threshold, e.g.
``macro_f1 on region=eu: candidate - champion in [-0.041, -0.012] (95%), margin -0.02, holm p=0.31: FAIL``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tl_core.config import LOWER_IS_BETTER, GateSpec
from tl_core.evaluate.bootstrap import adjust

SUPPORTED_SCHEMAS = (1, 2)


@dataclass(frozen=True)
class Reason:
    check: str  # evidence | champion | minimum | calibration | ladder | non-inferiority | slice | bootstrap
    status: str  # PASS | FAIL | WARN
    text: str
    metric: str | None = None
    slice: str | None = None
    interval: tuple[float, float] | None = None
    threshold: float | None = None


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


def p_below(quantiles: list[float], threshold: float, levels: list[float] | None = None) -> float:
    """P(diff < threshold) read off the stored bootstrap quantiles of the difference (1.0 when unknown)."""
    q = np.asarray(quantiles, dtype=float)
    lv = np.asarray(levels if levels is not None else np.linspace(0.0, 1.0, len(q)), dtype=float)
    if len(q) == 0 or len(lv) != len(q) or not np.isfinite(q).all():
        return 1.0
    if threshold <= q[0]:
        return 0.0
    if threshold > q[-1]:
        return 1.0
    # Right-most level whose quantile is below the threshold (ties of a discrete distribution count as >=).
    below = np.flatnonzero(q < threshold)
    i = int(below[-1])
    if i + 1 < len(q) and q[i + 1] > q[i]:
        return float(lv[i] + (lv[i + 1] - lv[i]) * (threshold - q[i]) / (q[i + 1] - q[i]))
    return float(lv[i])


def _fmt(iv: tuple[float, float]) -> str:
    return f"[{iv[0]:+.3f}, {iv[1]:+.3f}]"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and bool(np.isfinite(v))


def decide(report: dict[str, Any], policy: GateSpec, evidence_hash: str = "",
           extra_reasons: Iterable[Reason] = ()) -> Decision:
    """PASS only if every check passes; the reasons explain every check made (PASS, WARN and FAIL)."""
    reasons: list[Reason] = []
    conf_pct = f"{policy.confidence:.0%}"
    alpha = (1.0 - policy.confidence) / 2.0
    champion = report.get("champion") or {}
    status = champion.get("status", "unreadable")
    bootstrap = status == "none"

    def fail(check: str, text: str, **kw: Any) -> None:
        reasons.append(Reason(check, "FAIL", text + ": FAIL", **kw))

    def ok(check: str, text: str, **kw: Any) -> None:
        reasons.append(Reason(check, "PASS", text + ": PASS", **kw))

    def finish() -> Decision:
        reasons.extend(extra_reasons)
        passed = not any(r.status == "FAIL" for r in reasons)
        return Decision(passed, bootstrap, reasons, evidence_hash, _summary(report, reasons))

    schema = report.get("schema_version")
    if schema not in SUPPORTED_SCHEMAS:
        fail("evidence", f"evaluation report schema_version {schema!r} is not supported (expected one of "
             f"{list(SUPPORTED_SCHEMAS)})")
        return finish()
    test_size = int(report.get("test_size") or 0)
    candidate = report.get("candidate")
    models = report.get("models") or {}
    cand = models.get(candidate or "") or {}
    if test_size == 0:
        fail("evidence", f"empty test set: 0 labelled test examples (candidate {candidate!r})")
        return finish()
    if not cand:
        fail("evidence", f"candidate {candidate!r} has no metrics in the report (models: {sorted(models)})")
        return finish()
    slice_sizes: dict[str, int] = report.get("slices") or {}
    for s in policy.required_slices:
        n = int(slice_sizes.get(s, 0))
        if n == 0:
            fail("evidence", f"required slice {s} has no test examples (slices present: {sorted(slice_sizes)})",
                 slice=s)
        else:
            ok("evidence", f"required slice {s} present with {n} test examples", slice=s)
    if status == "unreadable":
        fail("champion", f"champion {champion.get('version')!r} could not be re-scored: {champion.get('reason')}")
    elif status not in ("ok", "none"):
        fail("champion", f"champion status {status!r} is not one of ok, none, unreadable")

    overall = cand.get("overall") or {}
    for metric, floor in policy.absolute_minimums.items():
        value = overall.get(metric)
        if value is None or not _finite(value):
            fail("minimum", f"{metric} overall: missing from the report (got {value!r}), minimum {floor}",
                 metric=metric, threshold=floor)
        elif metric in LOWER_IS_BETTER:  # a loss or calibration error: the limit is a ceiling
            (ok if value <= floor else fail)("minimum", f"{metric} overall {value:.3f} "
                                             f"{'<=' if value <= floor else '>'} maximum {floor}",
                                             metric=metric, threshold=floor)
        elif value >= floor:
            ok("minimum", f"{metric} overall {value:.3f} >= minimum {floor}", metric=metric, threshold=floor)
        else:
            fail("minimum", f"{metric} overall {value:.3f} < minimum {floor}", metric=metric, threshold=floor)

    ece_value = overall.get("ece")
    if ece_value is None or not _finite(ece_value):
        fail("calibration", f"ece after temperature: missing from the report (got {ece_value!r})", metric="ece")
    else:
        cap = policy.calibration.ece_max
        (ok if ece_value <= cap else fail)("calibration", f"ece after temperature {ece_value:.4f}, max {cap}",
                                           metric="ece", threshold=cap)
        if status == "ok":
            champ_ece = (models.get("champion") or {}).get("overall", {}).get("ece")
            tol = policy.calibration.ece_tolerance
            if champ_ece is None or not _finite(champ_ece):
                fail("calibration", f"champion ece after temperature: missing from the report (got {champ_ece!r})",
                     metric="ece")
            else:
                limit = champ_ece + tol
                (ok if ece_value <= limit else fail)(
                    "calibration", f"ece {ece_value:.4f} vs champion {champ_ece:.4f} + tolerance {tol} = {limit:.4f}",
                    metric="ece", threshold=limit)

    comparisons = report.get("comparisons") or {}
    levels = (report.get("bootstrap") or {}).get("quantile_levels")
    primary: Any = report.get("primary_metric") or "macro_f1"

    def compare(other: str, metric: str, group: str) -> dict[str, Any] | None:
        c = ((comparisons.get(other) or {}).get(metric) or {}).get(group)
        if c is None or not (_finite(c.get("lo")) and _finite(c.get("hi"))):
            return None
        return c  # type: ignore[no-any-return]

    if policy.must_beat_majority:
        c = compare("majority", primary, "overall")
        if c is None:
            fail("ladder", f"{primary} overall vs majority-class predictor: no bootstrap interval in the report",
                 metric=primary)
        else:
            iv = (c["lo"], c["hi"])
            (ok if c["lo"] > 0 else fail)("ladder", f"{primary} overall: candidate - majority-class in {_fmt(iv)} "
                                          f"({conf_pct}), must be > 0", metric=primary, interval=iv, threshold=0.0)
    strategy = cand.get("strategy") or candidate
    if policy.must_match_frozen and strategy != "frozen" and "frozen" in models:
        c = compare("frozen", primary, "overall")
        margin = policy.margins.get(primary, 0.0)
        if c is None:
            fail("ladder", f"{primary} overall vs frozen baseline: no bootstrap interval in the report",
                 metric=primary)
        else:
            iv = (c["lo"], c["hi"])
            (ok if c["lo"] >= -margin else fail)(
                "ladder", f"{primary} overall: candidate ({strategy}) - frozen in {_fmt(iv)} ({conf_pct}), "
                f"margin -{margin}", metric=primary, interval=iv, threshold=-margin)

    if status == "ok":
        for metric, margin in policy.margins.items():
            c = compare("champion", metric, "overall")
            if c is None:
                fail("non-inferiority", f"{metric} overall: no bootstrap interval vs champion in the report",
                     metric=metric, slice="overall")
                continue
            iv = (c["lo"], c["hi"])
            (ok if c["lo"] >= -margin else fail)(
                "non-inferiority", f"{metric} overall: candidate - champion in {_fmt(iv)} ({conf_pct}), "
                f"margin -{margin}", metric=metric, slice="overall", interval=iv, threshold=-margin)
        for metric in policy.slice_metrics:
            margin = policy.margins.get(metric, 0.0)  # type: ignore[call-overload]
            tested: list[tuple[str, dict[str, Any]]] = []
            for name, n in sorted(slice_sizes.items()):
                if n < policy.min_slice_size:
                    text = f"{metric} on {name}: insufficient data ({n} < min_slice_size {policy.min_slice_size})"
                    if policy.insufficient_slice == "fail":
                        fail("slice", text, metric=metric, slice=name)
                    else:
                        reasons.append(Reason("slice", "WARN", text + ": WARN", metric=metric, slice=name))
                    continue
                c = compare("champion", metric, name)
                if c is None:
                    fail("slice", f"{metric} on {name}: no bootstrap interval vs champion in the report",
                         metric=metric, slice=name)
                else:
                    tested.append((name, c))
            adjusted = adjust([p_below(c.get("quantiles") or [], -margin, levels) for _, c in tested],
                              policy.correction)
            for (name, c), p_adj in zip(tested, adjusted, strict=True):
                iv = (c["lo"], c["hi"])
                text = (f"{metric} on {name}: candidate - champion in {_fmt(iv)} ({conf_pct}), margin -{margin}, "
                        f"{policy.correction} p={p_adj:.3g} (alpha {alpha:.3g})")
                (ok if p_adj <= alpha else fail)("slice", text, metric=metric, slice=name, interval=iv,
                                                 threshold=-margin)
    elif bootstrap:
        reasons.append(Reason("bootstrap", "PASS", "no champion yet: first model, judged on absolute minimums, "
                                                   "calibration and the baseline ladder only: PASS"))
    return finish()


def _summary(report: dict[str, Any], reasons: list[Reason]) -> dict[str, Any]:
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
            "threshold": worst.threshold, "status": worst.status},
        "ece": {"candidate": (cand.get("overall") or {}).get("ece"),
                "champion": (champ.get("overall") or {}).get("ece")},
        "failures": sum(r.status == "FAIL" for r in reasons), "warnings": sum(r.status == "WARN" for r in reasons),
    }


def evidence_hash(parts: dict[str, Any]) -> str:
    """sha256 over a canonical JSON of what the decision rests on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def summary_markdown(decision: Decision, report: dict[str, Any], limit: int = 6) -> str:
    """The approval body: decision, top reasons, overall and worst-slice deltas with intervals, ECE."""
    champ = report.get("champion") or {}
    conf = (report.get("bootstrap") or {}).get("confidence", 0.95)
    lines = [
        f"**Decision: {'PASS' if decision.passed else 'FAIL'}**"
        + (" (bootstrap: first model, no champion to compare with)" if decision.bootstrap else ""),
        "",
        f"Candidate: `{report.get('candidate')}` | champion: `{champ.get('version') or 'none'}` "
        f"({champ.get('status', 'unknown')}) | test examples: {report.get('test_size')}",
        "",
        f"| candidate minus | metric | slice | {conf:.0%} interval | threshold | status |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    with_iv = [r for r in decision.reasons if r.interval is not None]
    overall = [r for r in with_iv if r.slice in (None, "overall")]
    slices = sorted((r for r in with_iv if r.slice not in (None, "overall")),
                    key=lambda r: (r.status != "FAIL", r.interval[0] if r.interval else 0.0))
    for r in overall + slices[:limit]:
        ref = {"ladder": "majority-class" if "majority" in r.text else "frozen"}.get(r.check, "champion")
        threshold = f"{r.threshold:+.3f}" if r.threshold is not None else ""
        lines.append(f"| {ref} | {r.metric} | {r.slice or 'overall'} | {_fmt(r.interval) if r.interval else ''} | "
                     f"{threshold} | {r.status} |")
    ece = decision.summary.get("ece") or {}
    cand_ece, champ_ece = ece.get("candidate"), ece.get("champion")
    lines += ["", "ECE after temperature: " + (f"{cand_ece:.4f}" if _finite(cand_ece) else "missing")
              + (f" (champion {champ_ece:.4f})" if _finite(champ_ece) else "")]
    fails, warns = decision.failures, decision.warnings
    if fails:
        lines += ["", f"Failing checks ({len(fails)}):"] + [f"- {r.text}" for r in fails[:limit]]
        if len(fails) > limit:
            lines.append(f"- ... and {len(fails) - limit} more (see the report)")
    if warns:
        lines += ["", f"Warnings ({len(warns)}):"] + [f"- {r.text}" for r in warns[:limit]]
    return "\n".join(lines)
