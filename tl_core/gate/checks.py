"""The gate's checks: one small pure function per check, each returning its reasons (PASS, WARN and FAIL).

Every check after ``missing_evidence`` takes the same two arguments, the report as read by ``GateInput`` and the
spec's ``GateSpec``, so that ``decide`` is the checks' reasons joined in the order of ``CHECKS``. Margins apply to
the lower confidence bound of (candidate - other), oriented so that positive means "candidate better".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tl_core.config import LOWER_IS_BETTER, GateSpec
from tl_core.evaluate.bootstrap import adjust
from tl_core.gate.power import describe, interval_outcome, p_outcome, power
from tl_core.gate.reasons import Reason, fail, finite, fmt_interval, judged, verdict

SUPPORTED_SCHEMAS = (1, 2)


@dataclass(frozen=True)
class GateInput:
    """The parts of an evaluation report the checks read (defaults only for the schema's optional fields)."""

    champion: dict[str, Any]
    status: str  # the champion's: ok | none | unreadable | incomparable (or whatever the report says: a FAIL)
    candidate: str | None
    models: dict[str, Any]
    slice_sizes: dict[str, int]
    comparisons: dict[str, Any]
    bootstrap: dict[str, Any]
    primary: Any
    test_size: int
    provenance: dict[str, Any] | None = None  # the report's source checkpoint (None in reports without one)
    baseline: str = "frozen"  # the ladder's frozen baseline: the best frozen model of any backbone
    label_space: dict[str, Any] | None = None  # the champion's class names vs the spec's (None: no champion)

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> GateInput:
        """The report's parts (one that passed tl_core.artifacts.EvaluationReport, or report_from_probs'): the
        schema's required fields as they are, its optional ones (provenance, baseline, label_space) with defaults."""
        champion = report["champion"]
        return cls(champion=champion, status=champion["status"], candidate=report["candidate"],
                   models=report["models"], slice_sizes=report["slices"], comparisons=report["comparisons"],
                   bootstrap=report["bootstrap"], primary=report["primary_metric"], test_size=int(report["test_size"]),
                   provenance=report.get("provenance"), baseline=report.get("baseline") or "frozen",
                   label_space=report.get("label_space"))

    @property
    def levels(self) -> list[float] | None:
        """The probability levels of the stored bootstrap-difference quantiles."""
        return self.bootstrap.get("quantile_levels")

    @property
    def cand(self) -> dict[str, Any]:
        return self.models.get(self.candidate or "") or {}  # type: ignore[no-any-return]

    @property
    def overall(self) -> dict[str, Any]:
        return self.cand.get("overall") or {}  # type: ignore[no-any-return]

    @property
    def on_shared(self) -> bool:
        """Classes were added since the champion: the champion comparison is on the shared classes' rows only."""
        return self.status == "ok" and (self.label_space or {}).get("status") == "added"

    @property
    def champion_rows(self) -> int:
        """Test rows of the champion comparison (power is computed on these)."""
        return int((self.label_space or {}).get("shared_test_rows") or 0) if self.on_shared else self.test_size

    @property
    def champion_slice_sizes(self) -> dict[str, int]:
        """Slice sizes of the champion comparison's rows (min_slice_size and power are judged on these)."""
        return dict((self.label_space or {}).get("shared_slices") or {}) if self.on_shared else self.slice_sizes

    @property
    def overall_vs_champion(self) -> dict[str, Any]:
        """The candidate's overall metrics on the champion comparison's rows and classes."""
        return dict((self.label_space or {}).get("candidate_on_shared") or {}) if self.on_shared else self.overall

    def compare(self, other: str, metric: str, group: str) -> dict[str, Any] | None:
        """The bootstrap comparison candidate - ``other`` on ``metric`` and ``group`` (None without finite bounds)."""
        c = ((self.comparisons.get(other) or {}).get(metric) or {}).get(group)
        if c is None or not (finite(c.get("lo")) and finite(c.get("hi"))):
            return None
        return c  # type: ignore[no-any-return]


Check = Callable[[GateInput, GateSpec], list[Reason]]


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


def _conf(policy: GateSpec) -> str:
    return f"{policy.confidence:.0%}"


def missing_evidence(report: dict[str, Any]) -> list[Reason]:
    """Fail closed before comparing anything: an unsupported schema, an empty test set, a candidate without
    metrics. A non-empty result is the whole decision (the other checks would read missing evidence)."""
    schema = report.get("schema_version")
    if schema not in SUPPORTED_SCHEMAS:
        return [fail("evidence", f"evaluation report schema_version {schema!r} is not supported (expected one of "
                     f"{list(SUPPORTED_SCHEMAS)})")]
    test_size, candidate, models = int(report["test_size"]), report["candidate"], report["models"]
    if test_size == 0:
        return [fail("evidence", f"empty test set: 0 labelled test examples (candidate {candidate!r})")]
    if not (models.get(candidate or "") or {}):
        return [fail("evidence", f"candidate {candidate!r} has no metrics in the report (models: {sorted(models)})")]
    return []


def required_slices(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """Every required slice has test examples (fail closed on a missing one)."""
    reasons = []
    for s in policy.required_slices:
        n = int(inp.slice_sizes.get(s, 0))
        text = (f"required slice {s} present with {n} test examples" if n else
                f"required slice {s} has no test examples (slices present: {sorted(inp.slice_sizes)})")
        reasons.append(verdict(n != 0, "evidence", text, slice=s))
    return reasons


def champion_status(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """A champion that exists but could not be re-scored, or cannot be compared on this spec's classes (one of its
    classes was removed or renamed), or an unknown status, fails closed."""
    if inp.status == "unreadable":
        return [fail("champion", f"champion {inp.champion.get('version')!r} could not be re-scored: "
                     f"{inp.champion.get('reason')}")]
    if inp.status == "incomparable":
        return [fail("champion", f"champion {inp.champion.get('version')!r} is not comparable: "
                     f"{inp.champion.get('reason')}")]
    if inp.status not in ("ok", "none"):
        return [fail("champion", f"champion status {inp.status!r} is not one of ok, none, unreadable, incomparable")]
    return []


def _names(labels: list[str]) -> str:
    return "[" + ", ".join(labels) + "]"


def label_space(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """The champion's class names vs this spec's (aligned by name in the evaluation): the same names (in any order)
    PASS; added classes WARN, naming them and the rows the champion comparison is restricted to. A removed or
    renamed class is ``champion_status``'s FAIL."""
    space = inp.label_space or {}
    if inp.status != "ok" or not space:
        return []
    version, status = inp.champion.get("version"), space.get("status")
    if status in ("same", "reordered"):
        how = "in the same order" if status == "same" else "reordered: aligned by name"
        return [Reason("label_space", "PASS", f"class names match champion {version} ({how}): PASS")]
    if status != "added":
        return [fail("label_space", f"champion {version}: label space status {status!r} with champion status ok "
                     "(expected same, reordered or added)")]
    added = space.get("added_classes") or {}
    own = "; ".join(f"{name}: {c.get('test_rows')} test rows, candidate recall {c.get('recall', 0):.3f}, "
                    f"precision {c.get('precision', 0):.3f}" for name, c in added.items())
    cal_total = int(space.get("shared_calibration_rows") or 0) + sum(int(c.get("calibration_rows") or 0)
                                                                     for c in added.values())
    text = (f"class(es) {_names(space.get('added') or [])} added since champion {version} (its classes "
            f"{_names(space.get('champion_labels') or [])}, this spec's {_names(space.get('candidate_labels') or [])})"
            f": the champion comparison (non-inferiority, slices, calibration) is on the "
            f"{len(space.get('shared') or [])} shared classes only: {inp.champion_rows} of {inp.test_size} test rows, "
            f"{space.get('shared_calibration_rows')} of {cal_total} calibration rows; the added classes on their own "
            f"({own}): WARN")
    return [Reason("label_space", "WARN", text)]


def _minimum(metric: str, floor: float, value: Any) -> Reason:
    kw: dict[str, Any] = {"metric": metric, "threshold": floor}
    if value is None or not finite(value):
        return fail("minimum", f"{metric} overall: missing from the report (got {value!r}), minimum {floor}", **kw)
    if metric in LOWER_IS_BETTER:  # a loss or calibration error: the limit is a ceiling
        return verdict(value <= floor, "minimum",
                       f"{metric} overall {value:.3f} {'<=' if value <= floor else '>'} maximum {floor}", **kw)
    return verdict(value >= floor, "minimum",
                   f"{metric} overall {value:.3f} {'>=' if value >= floor else '<'} minimum {floor}", **kw)


def absolute_minimums(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """The candidate's overall metrics against the policy's floors (ceilings for lower-is-better metrics)."""
    overall = inp.overall
    return [_minimum(metric, floor, overall.get(metric)) for metric, floor in policy.absolute_minimums.items()]


def calibration(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """ECE after temperature under the cap, and (with a champion) not worse than the champion's plus tolerance."""
    ece = inp.overall.get("ece")
    if ece is None or not finite(ece):
        return [fail("calibration", f"ece after temperature: missing from the report (got {ece!r})", metric="ece")]
    cap = policy.calibration.ece_max
    reasons = [verdict(ece <= cap, "calibration", f"ece after temperature {ece:.4f}, max {cap}", metric="ece",
                       threshold=cap)]
    if inp.status != "ok":
        return reasons
    champ_ece = (inp.models.get("champion") or {}).get("overall", {}).get("ece")
    tol = policy.calibration.ece_tolerance
    if champ_ece is None or not finite(champ_ece):
        reasons.append(fail("calibration", f"champion ece after temperature: missing from the report "
                            f"(got {champ_ece!r})", metric="ece"))
        return reasons
    # Classes added since the champion: both ECEs on the shared classes' rows (the candidate's refitted there).
    ece, where = (inp.overall_vs_champion.get("ece"), " on the shared classes") if inp.on_shared else (ece, "")
    if ece is None or not finite(ece):
        return [*reasons, fail("calibration", f"ece{where} after temperature: missing from the report (got "
                               f"{ece!r})", metric="ece")]
    limit = champ_ece + tol
    reasons.append(verdict(ece <= limit, "calibration",
                           f"ece{where} {ece:.4f} vs champion {champ_ece:.4f} + tolerance {tol} = {limit:.4f}",
                           metric="ece", threshold=limit))
    return reasons


def beats_majority(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """Baseline ladder, first rung: the primary metric's interval vs the majority-class predictor is above 0."""
    if not policy.must_beat_majority:
        return []
    primary = inp.primary
    c = inp.compare("majority", primary, "overall")
    if c is None:
        return [fail("ladder", f"{primary} overall vs majority-class predictor: no bootstrap interval in the report",
                     metric=primary)]
    iv = (c["lo"], c["hi"])
    return [verdict(c["lo"] > 0, "ladder", f"{primary} overall: candidate - majority-class in {fmt_interval(iv)} "
                    f"({_conf(policy)}), must be > 0", metric=primary, interval=iv, threshold=0.0)]


def _overall(inp: GateInput, policy: GateSpec, other: str, metric: str, margin: float, subject: str,
             check: str) -> Reason:
    """One overall comparison ``subject`` (candidate - ``other``): its outcome against ``-margin`` and its power."""
    c = inp.compare(other, metric, "overall")
    if c is None:
        return fail(check, f"{metric} overall: no bootstrap interval vs {other} in the report", metric=metric,
                    slice="overall")
    iv = (c["lo"], c["hi"])
    rows = inp.champion_rows if other == "champion" else inp.test_size
    pw = power(c["lo"], c["hi"], rows, margin, policy.confidence, policy.power)
    outcome = interval_outcome(c["lo"], c["hi"], margin)
    text = (f"{metric} overall: {subject} in {fmt_interval(iv)} ({_conf(policy)}), margin -{margin}, "
            f"{describe(pw, margin, policy.power, outcome)}")
    return judged(outcome, policy.overall_inconclusive, check, text,
                  metric=metric, slice="overall", interval=iv, threshold=-margin, detectable=pw.detectable)


def matches_frozen(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """Baseline ladder, second rung: the candidate is not shown worse than the frozen baseline (with several
    backbones: the best frozen model of any of them, by validation) by the margin (inconclusive does what
    ``overall_inconclusive`` says)."""
    strategy = inp.cand.get("strategy") or inp.candidate
    base = inp.baseline
    if not (policy.must_match_frozen and strategy != base and base in inp.models):
        return []
    margin = policy.margins.get(inp.primary, 0.0)
    return [_overall(inp, policy, base, inp.primary, margin, f"candidate ({strategy}) - {base}", "ladder")]


def non_inferiority(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """With a champion: every margin metric overall: harm fails, non-inferiority passes, inconclusive does what
    ``overall_inconclusive`` says."""
    if inp.status != "ok":
        return []
    return [_overall(inp, policy, "champion", metric, margin, "candidate - champion", "non-inferiority")
            for metric, margin in policy.margins.items()]


def min_slice_size(policy: GateSpec, metric: str, name: str, n: int) -> list[Reason]:
    """A slice under min_slice_size is 'insufficient data': WARN or FAIL as the policy says, and not tested."""
    if n >= policy.min_slice_size:
        return []
    text = f"{metric} on {name}: insufficient data ({n} < min_slice_size {policy.min_slice_size})"
    if policy.insufficient_slice == "fail":
        return [fail("slice", text, metric=metric, slice=name)]
    return [Reason("slice", "WARN", text + ": WARN", metric=metric, slice=name)]


def _tested_slices(inp: GateInput, policy: GateSpec, metric: str) -> tuple[list[Reason],
                                                                             list[tuple[str, dict[str, Any]]]]:
    """Reasons for the slices that cannot be tested (too small, no interval), and the (name, comparison) of the
    rest, in slice order."""
    reasons: list[Reason] = []
    tested: list[tuple[str, dict[str, Any]]] = []
    for name, n in sorted(inp.champion_slice_sizes.items()):
        small = min_slice_size(policy, metric, name, n)
        c = None if small else inp.compare("champion", metric, name)
        if small:
            reasons += small
        elif c is None:
            reasons.append(fail("slice", f"{metric} on {name}: no bootstrap interval vs champion in the report",
                                metric=metric, slice=name))
        else:
            tested.append((name, c))
    return reasons, tested


def _slice_metric(inp: GateInput, policy: GateSpec, metric: str) -> list[Reason]:
    """One slice metric: the corrected one-sided tests of non-inferiority and of harm on every testable slice."""
    margin = policy.slice_margin(metric)
    reasons, tested = _tested_slices(inp, policy, metric)
    alpha = (1.0 - policy.confidence) / 2.0
    below = [p_below(c.get("quantiles") or [], -margin, inp.levels) for _, c in tested]
    p_ni = adjust(below, policy.correction)  # H0 "difference < -margin": small means non-inferior
    p_harm = adjust([1.0 - p for p in below], policy.correction)  # H0 "difference >= -margin": small means harm
    for (name, c), ni, harm in zip(tested, p_ni, p_harm, strict=True):
        iv = (c["lo"], c["hi"])
        pw = power(c["lo"], c["hi"], int(inp.champion_slice_sizes[name]), margin, policy.confidence, policy.power,
                   family=len(tested))
        outcome = p_outcome(ni, harm, alpha)
        text = (f"{metric} on {name}: candidate - champion in {fmt_interval(iv)} ({_conf(policy)}), margin "
                f"-{margin}, {policy.correction} p(non-inferior)={ni:.3g} p(harm)={harm:.3g} (alpha {alpha:.3g}), "
                f"{describe(pw, margin, policy.power, outcome)}")
        reasons.append(judged(outcome, policy.slice_inconclusive, "slice", text, metric=metric,
                              slice=name, interval=iv, threshold=-margin, detectable=pw.detectable))
    return reasons


def slices(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """With a champion, per slice metric: the one-sided bootstrap p-values of H0 "difference < -margin"
    (non-inferiority) and of H0 "difference >= -margin" (harm), each corrected across slices (Holm by default) and
    compared with (1 - confidence) / 2. Harm fails; inconclusive does what ``slice_inconclusive`` says."""
    if inp.status != "ok":
        return []
    return [r for metric in policy.slice_metrics for r in _slice_metric(inp, policy, metric)]


def first_model(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """No champion yet: say that the candidate is judged on minimums, calibration and the ladder only."""
    if inp.status != "none":
        return []
    return [Reason("bootstrap", "PASS", "no champion yet: first model, judged on absolute minimums, "
                                        "calibration and the baseline ladder only: PASS")]


def champion_unchanged(champion: dict[str, Any], evidence: dict[str, Any]) -> list[Reason]:
    """The champion pointer read now (``evidence``) is the one the report evaluated against."""
    if champion.get("status") not in ("ok", "none", "incomparable"):
        return []
    now = (evidence["champion_version"], evidence["champion_etag"])
    if now == (champion.get("version"), champion.get("etag")):
        return []
    return [Reason("evidence", "FAIL", f"the champion pointer changed after evaluation (evaluated "
                   f"{champion.get('version')} etag {champion.get('etag')}, now {now[0]} etag {now[1]}); "
                   f"re-run the evaluation: FAIL")]


def _licence_verdict(prov: dict[str, Any] | None, policy: GateSpec) -> tuple[bool, str]:
    """(passes, text) of the licence in ``prov`` (None: a report without a provenance section) under ``policy``."""
    allowed = sorted({a.lower() for a in policy.allowed_licences})
    if prov is None:
        return False, ("the evaluation report has no provenance section (written before it existed), so the source "
                       "checkpoint's licence is unknown and gate.require_licence is true")
    package = f", package {prov['package']}" if prov.get("package") else ""
    checkpoint = f"source checkpoint {prov.get('id')!r} (weights {prov.get('weights')}{package})"
    licence = prov.get("licence")
    if licence is None:
        return False, f"{checkpoint}: licence unknown (declare backbone.licence), allowed {allowed}"
    ok = str(licence).lower() in allowed
    return ok, (f"{checkpoint}: licence {licence} (from {prov.get('licence_source')}) "
                f"{'in' if ok else 'not in'} allowed {allowed}")


def source_licence(inp: GateInput, policy: GateSpec) -> list[Reason]:
    """The source checkpoint's licence is known and in ``allowed_licences``. An unknown licence (or a report without
    a provenance section) fails only when the policy has ``require_licence``, else it is a WARN. A failure becomes
    a WARN when the spec records ``licence_override`` (its reason is in the text)."""
    prov = inp.provenance
    if prov is None and not policy.require_licence:
        return []
    if prov is not None and prov.get("licence") == "none":
        return [Reason("licence", "PASS", "no source checkpoint (random init): no licence to check: PASS")]
    ok, text = _licence_verdict(prov, policy)
    if not ok and policy.licence_override:
        return [Reason("licence", "WARN", f"{text}; overridden by gate.licence_override "
                                          f"{policy.licence_override!r}: WARN")]
    if not ok and prov is not None and prov.get("licence") is None and not policy.require_licence:
        return [Reason("licence", "WARN", f"{text} (gate.require_licence is false): WARN")]
    return [verdict(ok, "licence", text)]


# The order of the reasons in a decision (the ledger and the approval show them in this order).
CHECKS: tuple[Check, ...] = (required_slices, champion_status, label_space, absolute_minimums, calibration,
                             beats_majority, matches_frozen, non_inferiority, slices, first_model, source_licence)
