"""The int8 gate: may the quantized artifact be served beside the fp32 one? Pure functions of the measurement
(tl_core.evaluate.int8.measure_int8) and the spec's ExportSpec, one per check, each returning its reasons.

It fails closed: a measurement without examples or without labelled examples is a FAIL naming what is missing.
A failed int8 gate never blocks the fp32 model: the version registers without the int8 artifact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tl_core.config import LOWER_IS_BETTER, ExportSpec
from tl_core.gate.reasons import Reason, fail, finite, fmt_interval, verdict

CHECK = "int8"

Int8Check = Callable[[dict[str, Any], ExportSpec], list[Reason]]


def _interval(m: dict[str, Any], key: str) -> tuple[float, float] | None:
    iv = m.get(key)
    if not isinstance(iv, list | tuple) or len(iv) != 2 or not all(finite(v) for v in iv):
        return None
    return float(iv[0]), float(iv[1])


def missing_measurement(m: dict[str, Any], spec: ExportSpec) -> list[Reason]:
    """No test examples, or none with a label: nothing to judge int8 on (FAIL)."""
    if not m.get("examples"):
        return [fail(CHECK, "int8 vs fp32: 0 test examples were scored; the int8 artifact cannot be judged")]
    if not m.get("labelled"):
        return [fail(CHECK, f"int8 vs fp32: none of the {m['examples']} test examples has a known label; the "
                     "paired bootstrap needs labels")]
    return []


def agreement(m: dict[str, Any], spec: ExportSpec) -> list[Reason]:
    """Top-1 agreement of int8 with fp32 at least ``int8_min_agreement``."""
    value, floor = m.get("agreement"), spec.int8_min_agreement
    if not finite(value):
        return [fail(CHECK, f"top-1 agreement int8 vs fp32 is missing (got {value!r}), minimum {floor:g}",
                     metric="agreement", threshold=floor)]
    ok = float(value) >= floor  # type: ignore[arg-type]  # finite() checked it is a number
    return [verdict(ok, CHECK, f"top-1 agreement int8 vs fp32 {value:.4f} ({m.get('disagreements')} of "
                    f"{m.get('examples')} test examples differ) {'>=' if ok else '<'} minimum {floor:g}",
                    metric="agreement", threshold=floor)]


def metric_bound(m: dict[str, Any], spec: ExportSpec) -> list[Reason]:
    """The bound of int8 - fp32 on the measured metric within ``int8_margin`` (oriented: a worse int8 is the
    risk; for a lower-is-better metric the upper bound must stay <= margin)."""
    metric, margin = str(m.get("metric")), spec.int8_margin
    iv = _interval(m, "diff_interval")
    level = f"{float(m.get('confidence') or 0):.0%}"
    if iv is None:
        return [fail(CHECK, f"{metric} int8 - fp32: no finite bootstrap interval (got {m.get('diff_interval')!r})",
                     metric=metric, threshold=margin)]
    if metric in LOWER_IS_BETTER:
        ok = iv[1] <= margin
        bound = f"upper bound {iv[1]:+.4f} {'<=' if ok else '>'} +{margin:g}"
    else:
        ok = iv[0] >= -margin
        bound = f"lower bound {iv[0]:+.4f} {'>=' if ok else '<'} -{margin:g}"
    return [verdict(ok, CHECK, f"{metric} int8 - fp32 on {m.get('labelled')} labelled test examples: {level} "
                    f"interval {fmt_interval(iv)}, {bound}", metric=metric, interval=iv, threshold=margin)]


def ece_bound(m: dict[str, Any], spec: ExportSpec) -> list[Reason]:
    """The upper bound of ECE(int8) - ECE(fp32) at most ``int8_ece_tolerance``."""
    tol = spec.int8_ece_tolerance
    iv = _interval(m, "ece_diff_interval")
    if iv is None:
        return [fail(CHECK, f"ECE int8 - fp32: no finite bootstrap interval (got {m.get('ece_diff_interval')!r})",
                     metric="ece", threshold=tol)]
    ok = iv[1] <= tol
    return [verdict(ok, CHECK, f"ECE int8 - fp32 (int8 {m.get('ece_int8', float('nan')):.4f}, fp32 "
                    f"{m.get('ece_fp32', float('nan')):.4f}): interval {fmt_interval(iv)}, upper bound "
                    f"{iv[1]:+.4f} {'<=' if ok else '>'} tolerance {tol:g}", metric="ece", interval=iv, threshold=tol)]


INT8_CHECKS: tuple[Int8Check, ...] = (agreement, metric_bound, ece_bound)


def decide_int8(measured: dict[str, Any], spec: ExportSpec) -> tuple[bool, list[Reason]]:
    """(passed, reasons): every check's reasons, or the missing measurement's alone."""
    reasons = missing_measurement(measured, spec)
    if not reasons:
        reasons = [r for check in INT8_CHECKS for r in check(measured, spec)]
    return all(r.status != "FAIL" for r in reasons), reasons
