"""The promotion gate: a pure function of the evaluation report and the spec's policy.

It fails closed: an empty test set, a required slice with no examples, an unreadable champion or a
missing metric is a FAIL with that reason, never a silent PASS. Non-inferiority margins apply to the
lower confidence bound of (candidate - champion), oriented so that positive means "candidate better";
slices use one-sided bootstrap p-values for H0: difference < -margin, corrected across slices (Holm by
default). Every reason names the metric, the slice, the observed interval and the threshold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tl_core.config import GateSpec
from tl_core.evaluate.bootstrap import adjust


@dataclass(frozen=True)
class Reason:
    check: str
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

    @property
    def failures(self) -> list[Reason]:
        return [r for r in self.reasons if r.status == "FAIL"]

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "decision": "PASS" if self.passed else "FAIL", "bootstrap": self.bootstrap,
                "evidence_hash": self.evidence_hash, "reasons": [asdict(r) for r in self.reasons]}


def _p_below(quantiles: list[float], threshold: float) -> float:
    """P(diff < threshold) from the stored bootstrap quantiles of the difference."""
    q = np.asarray(quantiles, dtype=float)
    if len(q) == 0 or not np.isfinite(q).all():
        return 1.0
    levels = np.linspace(0.0, 1.0, len(q))
    if threshold <= q[0]:
        return 0.0
    if threshold > q[-1]:
        return 1.0
    return float(np.interp(threshold, q, levels))


def _fmt(iv: tuple[float, float]) -> str:
    return f"[{iv[0]:+.3f}, {iv[1]:+.3f}]"


def decide(report: dict[str, Any], policy: GateSpec, evidence_hash: str = "") -> Decision:
    """PASS only if every check passes; the reasons explain every check made."""
    reasons: list[Reason] = []
    conf_pct = f"{policy.confidence:.0%}"
    alpha = (1.0 - policy.confidence) / 2.0
    champion = report.get("champion", {})
    status = champion.get("status", "unreadable")
    bootstrap = status == "none"

    def fail(check: str, text: str, **kw: Any) -> None:
        reasons.append(Reason(check, "FAIL", text + ": FAIL", **kw))

    def ok(check: str, text: str, **kw: Any) -> None:
        reasons.append(Reason(check, "PASS", text + ": PASS", **kw))

    test_size = int(report.get("test_size", 0))
    candidate = report.get("candidate")
    models = report.get("models", {})
    cand = models.get(candidate or "", {})
    if test_size == 0 or not cand:
        fail("evidence", f"empty test set or missing candidate (test examples {test_size}, candidate {candidate!r})")
        return Decision(False, bootstrap, reasons, evidence_hash)
    for s in policy.required_slices:
        n = report.get("slices", {}).get(s, 0)
        if n == 0:
            fail("evidence", f"required slice {s} has no test examples", slice=s)
    if status == "unreadable":
        fail("champion", f"champion {champion.get('version')!r} could not be re-scored: {champion.get('reason')}")

    overall = cand.get("overall", {})
    for metric, floor in policy.absolute_minimums.items():
        value = overall.get(metric)
        if value is None or not np.isfinite(value):
            fail("minimum", f"{metric} overall: missing from the report", metric=metric)
        elif value >= floor:
            ok("minimum", f"{metric} overall {value:.3f} >= minimum {floor}", metric=metric, threshold=floor)
        else:
            fail("minimum", f"{metric} overall {value:.3f} < minimum {floor}", metric=metric, threshold=floor)

    ece_value = overall.get("ece")
    if ece_value is None or not np.isfinite(ece_value):
        fail("calibration", "ece after temperature: missing from the report", metric="ece")
    else:
        cap = policy.calibration.ece_max
        (ok if ece_value <= cap else fail)("calibration", f"ece after temperature {ece_value:.4f}, max {cap}",
                                           metric="ece", threshold=cap)
        champ_ece = models.get("champion", {}).get("overall", {}).get("ece") if status == "ok" else None
        if champ_ece is not None:
            limit = champ_ece + policy.calibration.ece_tolerance
            (ok if ece_value <= limit else fail)(
                "calibration", f"ece {ece_value:.4f} vs champion {champ_ece:.4f} + tolerance "
                f"{policy.calibration.ece_tolerance} = {limit:.4f}", metric="ece", threshold=limit)

    comparisons = report.get("comparisons", {})
    primary = report.get("primary_metric", "macro_f1")

    def compare(other: str, metric: str, group: str) -> dict[str, Any] | None:
        return comparisons.get(other, {}).get(metric, {}).get(group)

    if policy.must_beat_majority:
        c = compare("majority", primary, "overall")
        if c is None:
            fail("ladder", f"{primary} vs majority-class predictor: missing from the report", metric=primary)
        else:
            iv = (c["lo"], c["hi"])
            (ok if c["lo"] > 0 else fail)("ladder", f"{primary} overall: candidate - majority-class in {_fmt(iv)} "
                                          f"({conf_pct}), must be > 0", metric=primary, interval=iv, threshold=0.0)
    strategy = cand.get("strategy")
    if policy.must_match_frozen and strategy not in (None, "frozen") and "frozen" in models:
        c = compare("frozen", primary, "overall")
        margin = policy.margins.get(primary, 0.0)  # type: ignore[call-overload]
        if c is None:
            fail("ladder", f"{primary} vs frozen baseline: missing from the report", metric=primary)
        else:
            iv = (c["lo"], c["hi"])
            (ok if c["lo"] >= -margin else fail)(
                "ladder", f"{primary} overall: candidate ({strategy}) - frozen in {_fmt(iv)} ({conf_pct}), "
                f"margin -{margin}", metric=primary, interval=iv, threshold=-margin)

    if status == "ok":
        for metric, margin in policy.margins.items():
            c = compare("champion", metric, "overall")
            if c is None:
                fail("non-inferiority", f"{metric} overall: no bootstrap interval in the report", metric=metric)
                continue
            iv = (c["lo"], c["hi"])
            (ok if c["lo"] >= -margin else fail)(
                "non-inferiority", f"{metric} overall: candidate - champion in {_fmt(iv)} ({conf_pct}), "
                f"margin -{margin}", metric=metric, slice="overall", interval=iv, threshold=-margin)
        slice_sizes: dict[str, int] = report.get("slices", {})
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
                    fail("slice", f"{metric} on {name}: no bootstrap interval in the report", metric=metric,
                         slice=name)
                else:
                    tested.append((name, c))
            adjusted = adjust([_p_below(c["quantiles"], -margin) for _, c in tested], policy.correction)
            for (name, c), p_adj in zip(tested, adjusted, strict=True):
                iv = (c["lo"], c["hi"])
                text = (f"{metric} on {name}: candidate - champion in {_fmt(iv)} ({conf_pct}), margin -{margin}, "
                        f"{policy.correction} p={p_adj:.3g} (alpha {alpha:.3g})")
                (ok if p_adj <= alpha else fail)("slice", text, metric=metric, slice=name, interval=iv,
                                                 threshold=-margin)
    elif bootstrap:
        reasons.append(Reason("bootstrap", "PASS", "no champion yet: first model, absolute minimums and ladder only"))
    passed = not any(r.status == "FAIL" for r in reasons)
    return Decision(passed, bootstrap, reasons, evidence_hash)


def evidence_hash(parts: dict[str, Any]) -> str:
    """sha256 over a canonical JSON of what the decision rests on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def summary_markdown(decision: Decision, report: dict[str, Any], limit: int = 6) -> str:
    """The approval body: decision, top reasons, overall and worst-slice deltas, ECE."""
    champ = report.get("champion", {})
    cand = report.get("models", {}).get(report.get("candidate") or "", {})
    lines = [
        f"**Decision: {'PASS' if decision.passed else 'FAIL'}**" + (" (bootstrap: first model)" if decision.bootstrap
                                                                      else ""),
        "",
        f"Candidate: `{report.get('candidate')}` | champion: `{champ.get('version') or 'none'}` | "
        f"test examples: {report.get('test_size')}",
        "",
        "| check | metric | slice | interval | threshold | status |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    # Intervals are candidate minus the reference named in the first column (champion, majority-class, frozen).
    interesting = sorted((r for r in decision.reasons if r.interval is not None),
                         key=lambda r: (r.status != "FAIL", r.interval[0] if r.interval else 0.0))
    for r in interesting[:limit]:
        vs = "champion" if r.check in ("non-inferiority", "slice") else r.check
        lines.append(f"| {vs} | {r.metric} | {r.slice or 'overall'} | {_fmt(r.interval) if r.interval else ''} | "
                     f"{r.threshold:+.3f} | {r.status} |" if r.threshold is not None else
                     f"| {vs} | {r.metric} | {r.slice or 'overall'} | {_fmt(r.interval) if r.interval else ''} | | "
                     f"{r.status} |")
    ece_v = cand.get("overall", {}).get("ece")
    lines += ["", f"ECE after temperature: {ece_v:.4f}" if ece_v is not None else "ECE: missing"]
    fails = decision.failures
    if fails:
        lines += ["", "Failing checks:"] + [f"- {r.text}" for r in fails[:limit]]
    return "\n".join(lines)
