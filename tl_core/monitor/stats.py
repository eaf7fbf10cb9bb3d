"""The statistics of drift monitoring, as pure functions of arrays (no I/O, no models).

* ``mmd_permutation_test``: two-sample test on embeddings; RBF kernel with the median heuristic, biased MMD^2,
  p-value from label permutations (all permutations evaluated at once as ``diag(W' K W)``).
* ``psi`` and ``chi_square``: shift of the predicted-class distribution against a reference sample of
  predictions (a two-sample contingency test, since the reference is a sample too, not a known distribution).
* ``expected_accuracy``: the confidence-based performance estimate (NannyML's CBPE for accuracy): with calibrated
  probabilities, the chance that the predicted class is right is its probability, so the expected accuracy is the
  mean of the top probability.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PSI_FLOOR = 1e-4  # shares below this count as this in PSI (an empty class would make it infinite)
NULL_QUANTILES = (0.5, 0.9, 0.95, 0.99)
_BLOCK = 64  # permutations evaluated per matrix product


def _sq_distances(z: np.ndarray) -> np.ndarray:
    sq = (z * z).sum(1)
    return np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> dict[str, Any]:
    """MMD^2 of samples ``x`` (reference) and ``y`` (current), its permutation p-value and the null's quantiles.

    p = (1 + #{null >= observed}) / (1 + permutations): exact level under exchangeability.
    """
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the MMD test needs at least 2 rows on each side, got {len(x)} and {len(y)}")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"the MMD test needs two (n, d) arrays of the same width, got {x.shape} and {y.shape}")
    z = np.vstack([x, y]).astype(np.float64)
    d2 = _sq_distances(z)
    off = d2[np.triu_indices(len(z), 1)]
    bandwidth = float(np.median(off[off > 0])) if (off > 0).any() else 1.0
    kernel = np.exp(-d2 / bandwidth)
    n1, n = len(x), len(z)
    w0 = np.where(np.arange(n) < n1, 1.0 / n1, -1.0 / (n - n1))
    observed = float(w0 @ kernel @ w0)
    rng = np.random.default_rng(seed)
    null = np.empty(permutations)
    for start in range(0, permutations, _BLOCK):
        count = min(_BLOCK, permutations - start)
        w = np.stack([w0[rng.permutation(n)] for _ in range(count)], axis=1)
        null[start:start + count] = np.einsum("ip,ip->p", w, kernel @ w)
    p_value = float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))
    return {"statistic": observed, "p_value": p_value, "bandwidth": bandwidth, "permutations": permutations,
            "null_quantiles": {str(q): float(np.quantile(null, q)) for q in NULL_QUANTILES}}


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two count vectors over the same classes (shares floored at PSI_FLOOR); 0.0
    when either side has no counts (nothing to compare, as :func:`chi_square` gives p = 1 then)."""
    if not np.asarray(reference).sum() or not np.asarray(current).sum():
        return 0.0
    ref = np.maximum(_shares(np.asarray(reference, np.float64)), PSI_FLOOR)
    cur = np.maximum(_shares(np.asarray(current, np.float64)), PSI_FLOOR)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def chi_square(reference: np.ndarray, current: np.ndarray) -> dict[str, float]:
    """Chi-square test of homogeneity of two count vectors (classes empty on both sides dropped)."""
    from scipy.stats import chi2_contingency

    table = np.vstack([reference, current]).astype(np.float64)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2 or (table.sum(1) == 0).any():
        return {"statistic": 0.0, "p_value": 1.0, "dof": 0}
    result = chi2_contingency(table, correction=False)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "dof": int(result.dof)}


def expected_accuracy(probabilities: np.ndarray) -> float:
    """CBPE: the mean top calibrated probability (NaN for no rows)."""
    if len(probabilities) == 0:
        return float("nan")
    return float(np.asarray(probabilities).max(1).mean())
