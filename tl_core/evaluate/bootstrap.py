"""Vectorised paired bootstrap.

Every replicate resamples the test examples once (n draws with replacement) and scores every model on
the same draw, so differences between models are paired. Count metrics (accuracy, balanced accuracy,
macro-F1) depend on an example only through its slice memberships and its (label, prediction per
model) code, so examples sharing those are exchangeable: one multinomial draw over the distinct keys
per replicate is exactly the resampling of n examples, at a cost independent of n. Continuous metrics
(log loss, Brier, ECE) are resampled overall by index, in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tl_core.evaluate.metrics import ECE_BINS, per_example, scores_from_confusion

COUNT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
CONTINUOUS_METRICS = ("log_loss", "brier", "ece")


@dataclass
class BootstrapResult:
    """samples[model][metric]: array (n_boot, n_groups) - NaN where a group is empty in a replicate."""

    groups: list[str]
    samples: dict[str, dict[str, np.ndarray]]


def paired_bootstrap(
    y: np.ndarray,
    probs: dict[str, np.ndarray],
    groups: dict[str, np.ndarray],
    n_boot: int,
    seed: int,
    continuous: tuple[str, ...] = (),
) -> BootstrapResult:
    """Bootstrap distributions of count metrics for every group and model, plus ``continuous`` metrics overall.

    groups: name -> boolean mask over examples (include an all-True "overall").
    """
    n = len(y)
    if n == 0:
        raise ValueError("paired bootstrap needs at least one test example, got 0")
    names = list(groups)
    models = list(probs)
    c = next(iter(probs.values())).shape[1]
    membership = np.stack([groups[g] for g in names], axis=1)  # n x G
    preds = np.stack([probs[m].argmax(1) for m in models], axis=1)  # n x M
    # One integer key per example: memberships + label + every model's prediction.
    key_cols = np.concatenate([membership.astype(np.int64), y[:, None], preds], axis=1)
    keys, inverse, counts = np.unique(key_cols, axis=0, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_boot).astype(np.float64)  # n_boot x K
    k_members = keys[:, : len(names)].astype(bool)  # K x G
    k_label = keys[:, len(names)]
    samples: dict[str, dict[str, np.ndarray]] = {m: {} for m in models}
    for mi, m in enumerate(models):
        k_pred = keys[:, len(names) + 1 + mi]
        code = k_label * c + k_pred  # K
        # (K x G*C*C) indicator, contracted with the draws: confusion counts per replicate and group.
        onehot = np.zeros((len(keys), c * c))
        onehot[np.arange(len(keys)), code] = 1.0
        per_group = (k_members[:, :, None] * onehot[:, None, :]).reshape(len(keys), -1)
        cm = (draws @ per_group).reshape(n_boot, len(names), c, c)
        for metric, values in scores_from_confusion(cm).items():
            samples[m][metric] = values
    if continuous:
        idx_chunks = _index_chunks(rng, n, n_boot)
        for m in models:
            pe = per_example(probs[m], y)
            conf = probs[m].max(1)
            correct = (probs[m].argmax(1) == y).astype(np.float64)
            which = np.clip(np.ceil(conf * ECE_BINS).astype(int) - 1, 0, ECE_BINS - 1)
            out = {k: [] for k in continuous}  # type: dict[str, list[np.ndarray]]
            for idx in idx_chunks:
                r = len(idx)
                if "log_loss" in continuous:
                    out["log_loss"].append(pe["log_loss"][idx].mean(1))
                if "brier" in continuous:
                    out["brier"].append(pe["brier"][idx].mean(1))
                if "ece" in continuous:
                    flat = (which[idx] + ECE_BINS * np.arange(r)[:, None]).ravel()
                    # ECE = sum over bins of |sum(correct - confidence)| / n
                    gap = np.bincount(flat, weights=(correct[idx] - conf[idx]).ravel(),
                                      minlength=r * ECE_BINS).reshape(r, ECE_BINS)
                    out["ece"].append(np.abs(gap).sum(1) / n)
            for k, parts in out.items():
                col = np.full((n_boot, len(names)), np.nan)
                col[:, names.index("overall") if "overall" in names else 0] = np.concatenate(parts)
                samples[m][k] = col
    return BootstrapResult(groups=names, samples=samples)


def _index_chunks(rng: np.random.Generator, n: int, n_boot: int, budget: int = 4_000_000) -> list[np.ndarray]:
    per_chunk = max(1, budget // n)
    return [rng.integers(0, n, size=(min(per_chunk, n_boot - s), n)) for s in range(0, n_boot, per_chunk)]


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
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def adjust(p_values: list[float], method: str) -> list[float]:
    if method == "holm":
        return holm(p_values)
    if method == "bonferroni":
        return [min(1.0, p * len(p_values)) for p in p_values]
    if method == "none":
        return list(p_values)
    raise ValueError(f"unknown multiple-comparison correction {method!r}: expected holm, bonferroni or none")
