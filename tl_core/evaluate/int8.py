"""int8 vs fp32 on the same examples: what the int8 gate (tl_core.gate.int8) judges.

Both artifacts score the same test rows; the differences are paired (one bootstrap draw scores both), so the
interval of int8 - fp32 is narrow when they agree and the gate's margin applies to its bound, as for the
promotion gate. Pure numpy on probabilities; no model is loaded here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_core.evaluate.bootstrap import COUNT_METRICS, interval, paired_bootstrap
from tl_core.evaluate.metrics import ece, metric_value


def _diff_interval(fp32: np.ndarray, int8: np.ndarray, confidence: float) -> list[float]:
    lo, hi = interval(int8 - fp32, confidence)
    return [lo, hi]


def measure_int8(y: np.ndarray, fp32: np.ndarray, int8: np.ndarray, metric: str, n_boot: int, seed: int,
                 confidence: float) -> dict[str, Any]:
    """Agreement, ``metric`` and ECE of int8 against fp32 (calibrated probabilities, N x C each).

    ``y``: class indices, -1 for rows without a known label (they count for agreement only). Returns a JSON-able
    dict: ``examples``, ``labelled``, ``agreement`` (share of rows with the same top-1), point values of ``metric``
    and ECE for both, and the paired-bootstrap intervals of int8 - fp32 at ``confidence`` (None without labels).
    """
    if fp32.shape != int8.shape or fp32.ndim != 2 or len(y) != len(fp32):
        raise ValueError(f"int8 and fp32 probabilities must both have shape ({len(y)}, C), got {fp32.shape} and "
                         f"{int8.shape}")
    n = len(y)
    differs = fp32.argmax(1) != int8.argmax(1)
    known = y >= 0
    out: dict[str, Any] = {"examples": int(n), "labelled": int(known.sum()), "disagreements": int(differs.sum()),
                           "agreement": float(1.0 - differs.mean()) if n else float("nan"),
                           "metric": metric, "confidence": confidence, "n_bootstrap": n_boot}
    if not known.any():
        return {**out, "fp32": None, "int8": None, "diff_interval": None, "ece_fp32": None, "ece_int8": None,
                "ece_diff_interval": None}
    yk, pf, pi = y[known], fp32[known], int8[known]
    continuous = ("ece",) if metric in COUNT_METRICS or metric == "ece" else (metric, "ece")
    boot = paired_bootstrap(yk, {"fp32": pf, "int8": pi}, {"overall": np.ones(len(yk), bool)}, n_boot, seed,
                            continuous=continuous)
    s = boot.samples
    return {
        **out,
        "fp32": metric_value(metric, pf, yk), "int8": metric_value(metric, pi, yk),
        "diff_interval": _diff_interval(s["fp32"][metric][:, 0], s["int8"][metric][:, 0], confidence),
        "ece_fp32": ece(pf, yk), "ece_int8": ece(pi, yk),
        "ece_diff_interval": _diff_interval(s["fp32"]["ece"][:, 0], s["int8"]["ece"][:, 0], confidence),
    }
