"""Vectorised paired bootstrap.

Every replicate resamples the n test examples once (n draws with replacement, one index matrix per chunk
of replicates) and every model is scored on that same draw, so differences between models are paired.
Then:

* count metrics (accuracy, balanced accuracy, macro-F1) depend on an example only through its slice
  memberships and its (label, prediction of every model) code; examples sharing that key are
  exchangeable, so the draws are counted per distinct key (one ``bincount``) and confusion matrices for
  every group and model follow from one small sparse product;
* log loss, Brier and ECE are weighted sums of per-example values (ECE: signed gaps per confidence bin):
  the draws become a count matrix ``W`` (replicates x examples, one ``bincount``) and one dense product per
  requested group and model gives them;
* macro one-vs-rest AUROC is a weighted Mann-Whitney statistic over the score order (costly: only when
  asked for).

Metrics of a replicate in which a group received no draw are NaN.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tl_core.evaluate.metrics import ECE_BINS, per_example, scores_from_confusion

COUNT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
CONTINUOUS_METRICS = ("log_loss", "brier", "ece", "auroc")
CHUNK_BUDGET = 5_000_000  # elements of W per chunk of replicates (float64: 40 MB)


@dataclass
class BootstrapResult:
    """samples[model][metric]: array (n_boot, n_groups) - NaN where a group is empty in a replicate or the
    metric was not requested for that group."""

    groups: list[str]
    samples: dict[str, dict[str, np.ndarray]]


def _check_inputs(y: np.ndarray, probs: dict[str, np.ndarray], groups: dict[str, np.ndarray], n_boot: int,
                  continuous: tuple[str, ...], continuous_groups: tuple[str, ...]) -> int:
    n = len(y)
    if n == 0:
        raise ValueError("paired bootstrap needs at least one test example, got 0")
    if n_boot < 1:
        raise ValueError(f"paired bootstrap needs n_boot >= 1, got {n_boot}")
    if not probs:
        raise ValueError("paired bootstrap needs at least one model, got none")
    c = next(iter(probs.values())).shape[1]
    for name, p in probs.items():
        if p.ndim != 2 or p.shape != (n, c):
            raise ValueError(f"probabilities of model {name!r} must have shape ({n}, {c}), got {p.shape}")
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels must be class indices in [0, {c}), got values in [{y.min()}, {y.max()}]")
    for g, mask in groups.items():
        if mask.shape != (n,):
            raise ValueError(f"group {g!r}: mask must have shape ({n},), got {mask.shape}")
    unknown = [m for m in continuous if m not in CONTINUOUS_METRICS]
    if unknown:
        raise ValueError(f"unknown continuous metrics {unknown}: expected a subset of {list(CONTINUOUS_METRICS)}")
    missing = [g for g in continuous_groups if g not in groups]
    if missing:
        raise ValueError(f"continuous_groups names groups that are not defined: {missing} (groups: {list(groups)})")
    return c


def _dense_ids(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One dense id per distinct row of the given integer columns; returns (ids, first index of each id)."""
    ids = np.zeros(len(columns[0]), dtype=np.int64)
    for col in columns:
        _, ids = np.unique(ids * (int(col.max()) + 1) + col, return_inverse=True)
        ids = ids.ravel()
    _, first = np.unique(ids, return_index=True)
    return ids, first


def paired_bootstrap(
    y: np.ndarray,
    probs: dict[str, np.ndarray],
    groups: dict[str, np.ndarray],
    n_boot: int,
    seed: int,
    continuous: tuple[str, ...] = (),
    continuous_groups: tuple[str, ...] = ("overall",),
) -> BootstrapResult:
    """Bootstrap distributions of the count metrics for every group and model, and of the ``continuous``
    metrics for the groups named in ``continuous_groups``.

    y: class indices (n,); probs: model -> (n, C) probabilities; groups: name -> boolean mask over the
    examples (include an all-True "overall").
    """
    c = _check_inputs(y, probs, groups, n_boot, continuous, continuous_groups)
    n = len(y)
    names = list(groups)
    models = list(probs)
    membership = np.stack([np.asarray(groups[g], dtype=bool) for g in names], axis=1)  # n x G
    preds = {m: probs[m].argmax(1) for m in models}

    # Distinct keys: slice-membership pattern + label + every model's prediction.
    packed = np.packbits(membership, axis=1)
    _, pattern = np.unique(np.ascontiguousarray(packed).view(np.dtype((np.void, packed.shape[1]))).ravel(),
                           return_inverse=True)
    key, first = _dense_ids(pattern.ravel(), y, *(preds[m] for m in models))
    n_keys = len(first)
    k_groups, k_idx = np.nonzero(membership[first].T)  # (group, key) pairs
    cc = c * c
    to_confusion = {}
    for m in models:
        code = y[first] * c + preds[m][first]
        to_confusion[m] = sp.csr_matrix((np.ones(len(k_idx)), (k_groups * cc + code[k_idx], k_idx)),
                                        shape=(len(names) * cc, n_keys))

    # Continuous metrics: per model, columns log loss, Brier and the signed gap (correct - confidence) in the
    # example's confidence bin; one dense product per model and group (same shapes for every model, so
    # identical models get bit-identical replicates).
    cont_idx = [names.index(g) for g in continuous_groups] if continuous else []
    members = {gi: np.flatnonzero(membership[:, gi]) for gi in cont_idx}
    values: dict[str, np.ndarray] = {}
    for m in models if continuous else ():
        pe = per_example(probs[m], y)
        conf = probs[m].max(1)
        which = np.clip(np.ceil(conf * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
        v = np.zeros((n, 2 + ECE_BINS))
        v[:, 0], v[:, 1] = pe["log_loss"], pe["brier"]
        v[np.arange(n), 2 + which] = (preds[m] == y) - conf
        values[m] = v

    samples = {m: {k: np.full((n_boot, len(names)), np.nan) for k in (*COUNT_METRICS, *continuous)}
               for m in models}
    rng = np.random.default_rng(seed)
    per_chunk = max(1, CHUNK_BUDGET // n)
    with _single_threaded_blas():
        _replicates(rng, n, n_boot, per_chunk, key, n_keys, to_confusion, names, c, cont_idx, members, values,
                    continuous, y, probs, samples)
    return BootstrapResult(groups=names, samples=samples)


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """The products here are small and memory-bound: BLAS threads only spin (and on a shared 2-core machine
    they fight other processes), so they are limited to one while the replicates run."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a scikit-learn dependency; without it BLAS keeps its own setting
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _replicates(rng: np.random.Generator, n: int, n_boot: int, per_chunk: int, key: np.ndarray, n_keys: int,
                to_confusion: dict[str, sp.csr_matrix], names: list[str], c: int, cont_idx: list[int],
                members: dict[int, np.ndarray], values: dict[str, np.ndarray], continuous: tuple[str, ...],
                y: np.ndarray, probs: dict[str, np.ndarray],
                samples: dict[str, dict[str, np.ndarray]]) -> None:
    """Fill ``samples`` chunk by chunk of replicates (see paired_bootstrap)."""
    models = list(probs)
    for start in range(0, n_boot, per_chunk):
        r = min(per_chunk, n_boot - start)
        rows = slice(start, start + r)
        idx = rng.integers(0, n, size=(r, n))  # the replicates' draws, shared by every model
        key_counts = np.bincount((key[idx] + np.arange(r)[:, None] * n_keys).ravel(),
                                 minlength=r * n_keys).reshape(r, n_keys).T.astype(np.float64)
        for m in models:
            cm = (to_confusion[m] @ key_counts).T.reshape(r, len(names), c, c)
            for metric, vals in scores_from_confusion(cm).items():
                samples[m][metric][rows] = vals
        if not cont_idx:
            continue
        idx += np.arange(r)[:, None] * n
        w = np.bincount(idx.ravel(), minlength=r * n).reshape(r, n).astype(np.float64)  # draws per example
        for gi in cont_idx:
            cols = members[gi]
            wg = w if len(cols) == n else w[:, cols]
            size = wg.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                for m in models:
                    sums = wg @ (values[m] if len(cols) == n else values[m][cols])  # r x (2 + bins)
                    if "log_loss" in continuous:
                        samples[m]["log_loss"][rows, gi] = sums[:, 0] / size
                    if "brier" in continuous:
                        samples[m]["brier"][rows, gi] = sums[:, 1] / size
                    if "ece" in continuous:
                        samples[m]["ece"][rows, gi] = np.abs(sums[:, 2:]).sum(1) / size
                    if "auroc" in continuous:
                        samples[m]["auroc"][rows, gi] = weighted_auroc(wg, y[cols], probs[m][cols])


def weighted_auroc(w: np.ndarray, y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest AUROC for each row of example weights ``w`` (r x n): the Mann-Whitney statistic with
    ties counted half, averaged over classes that have both positive and negative weight in that row."""
    r = w.shape[0]
    total = np.zeros(r)
    used = np.zeros(r)
    for k in range(probs.shape[1]):
        pos = y == k
        if not pos.any() or pos.all():
            continue
        order = np.argsort(probs[:, k], kind="stable")
        s = probs[order, k]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        ws = w[:, order]
        pos_w = np.add.reduceat(ws * pos[order], starts, axis=1)
        neg_w = np.add.reduceat(ws * ~pos[order], starts, axis=1)
        below = np.cumsum(neg_w, axis=1) - neg_w
        n_pos, n_neg = pos_w.sum(1), neg_w.sum(1)
        ok = (n_pos > 0) & (n_neg > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = (pos_w * (below + 0.5 * neg_w)).sum(1) / (n_pos * n_neg)
        total += np.where(ok, auc, 0.0)
        used += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(used > 0, total / used, np.nan)


def interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval ignoring replicates where the group was empty."""
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return float(lo), float(hi)


def holm(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (monotone, capped at 1)."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()  # type: ignore[no-any-return]


def adjust(p_values: list[float], method: str) -> list[float]:
    """Adjusted p-values for the named multiple-comparison correction (holm, bonferroni or none)."""
    if method == "holm":
        return holm(p_values)
    if method == "bonferroni":
        return [min(1.0, p * len(p_values)) for p in p_values]
    if method == "none":
        return list(p_values)
    raise ValueError(f"unknown multiple-comparison correction {method!r}: expected holm, bonferroni or none")
