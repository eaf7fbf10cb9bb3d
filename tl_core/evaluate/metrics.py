"""Classification and calibration metrics on arrays (probabilities in, numbers out). Pure numpy."""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_core.config import LOWER_IS_BETTER

ECE_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def confusion(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray) -> dict[str, np.ndarray]:
    """accuracy, balanced accuracy and macro-F1 from confusion counts of shape (..., C, C).

    As in scikit-learn: balanced accuracy averages recall over classes present in y_true; macro-F1 averages
    over classes present in y_true or in the predictions.
    """
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support = cm.sum(-1).astype(np.float64)
    predicted = cm.sum(-2).astype(np.float64)
    total = support.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = tp.sum(-1) / total
        recall = np.where(support > 0, tp / np.maximum(support, 1e-300), 0.0)
        balanced = recall.sum(-1) / (support > 0).sum(-1)
        denom = support + predicted
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), 0.0)
        macro_f1 = f1.sum(-1) / (denom > 0).sum(-1)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "macro_f1": macro_f1}


def ece_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per-bin counts, mean confidence and accuracy (equal-width bins on top-1 confidence, right-closed)."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    acc_sum = np.bincount(which, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count, "confidence": conf_sum / count, "accuracy": acc_sum / count}


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    b = ece_bins(probs, y, bins)
    n = b["count"].sum()
    if n == 0:
        return float("nan")
    gaps = np.nan_to_num(np.abs(b["accuracy"] - b["confidence"]))
    return float((b["count"] / n * gaps).sum())


def mce(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    b = ece_bins(probs, y, bins)
    gaps = np.abs(b["accuracy"] - b["confidence"])[b["count"] > 0]
    return float(gaps.max()) if len(gaps) else float("nan")


def per_example(probs: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example log loss and Brier score (their means are the metrics)."""
    p_true = np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(y)), y] = 1.0
    return {"log_loss": -np.log(p_true), "brier": ((probs - onehot) ** 2).sum(1)}


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy.stats.rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auroc_macro_ovr(probs: np.ndarray, y: np.ndarray) -> float:
    """Macro one-vs-rest AUROC over classes present with both positives and negatives (rank formula)."""
    aucs = []
    for c in range(probs.shape[1]):
        pos = y == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = average_ranks(probs[:, c])
        aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def all_metrics(probs: np.ndarray, y: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Every reported metric for one model on one set of examples."""
    c = len(labels)
    if len(y) == 0:
        return {"n": 0}
    cm = confusion(y, probs.argmax(1), c)
    s = scores_from_confusion(cm)
    pe = per_example(probs, y)
    tp = np.diag(cm).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(cm.sum(0) > 0, tp / cm.sum(0), 0.0)
        recall = np.where(cm.sum(1) > 0, tp / cm.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {
        "n": int(len(y)),
        "accuracy": float(s["accuracy"]),
        "balanced_accuracy": float(s["balanced_accuracy"]),
        "macro_f1": float(s["macro_f1"]),
        "auroc": auroc_macro_ovr(probs, y),
        "log_loss": float(pe["log_loss"].mean()),
        "brier": float(pe["brier"].mean()),
        "ece": ece(probs, y),
        "mce": mce(probs, y),
        "per_class": {labels[i]: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                  "support": int(cm[i].sum())} for i in range(c)},
        "confusion": cm.tolist(),
    }


def metric_value(metric: str, probs: np.ndarray, y: np.ndarray) -> float:
    """One metric by name (a value of config.Metric) for probabilities ``probs`` (N x C) and labels ``y``."""
    if metric in ("accuracy", "balanced_accuracy", "macro_f1"):
        return float(scores_from_confusion(confusion(y, probs.argmax(1), probs.shape[1]))[metric])
    if metric in ("log_loss", "brier"):
        return float(per_example(probs, y)[metric].mean()) if len(y) else float("nan")
    if metric == "ece":
        return ece(probs, y)
    if metric == "auroc":
        return auroc_macro_ovr(probs, y)
    raise ValueError(
        f"unknown metric {metric!r}; expected one of accuracy, balanced_accuracy, macro_f1, auroc, log_loss, "
        "brier, ece"
    )


def rank_key(metric: str, value: float) -> float:
    """Sort key where smaller ranks first (the best value of ``metric`` first)."""
    return value if metric in LOWER_IS_BETTER else -value
