"""Temperature scaling: one scalar T per model, fitted on the calibration split by minimising NLL."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = logits.astype(np.float64) / temperature
    return float((logsumexp(z, axis=1) - z[np.arange(len(y)), y]).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """argmin_T NLL(logits / T, y) over T in [0.05, 20]; 1.0 when there is nothing to fit on."""
    if len(y) == 0:
        return 1.0
    if logits.ndim != 2 or len(logits) != len(y):
        raise ValueError(f"logits must be (n, C) with n = len(y) = {len(y)}, got shape {logits.shape}")
    res = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=(np.log(0.05), np.log(20.0)),
                          method="bounded", options={"xatol": 1e-5})
    return float(np.exp(res.x))


def fit_on_labelled(logits: np.ndarray, y: np.ndarray) -> float:
    """fit_temperature on the rows whose label is known (``y >= 0``; -1 marks a label outside the spec)."""
    keep = np.asarray(y) >= 0
    return fit_temperature(np.asarray(logits)[keep], np.asarray(y)[keep])
