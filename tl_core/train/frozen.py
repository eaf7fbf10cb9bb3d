"""The frozen-backbone baseline: cached embeddings (tl_core.models.embeddings, shared with monitoring) + a
multinomial logistic-regression head."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from tl_core.config import ModelSpec
from tl_core.errors import SpecError
from tl_core.train.objective import improves, validation_score

logger = logging.getLogger(__name__)


def _folded_head(clf: Any, num_classes: int, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fitted classifier as a linear head on raw features: standardisation folded in, all classes."""
    coef = np.zeros((num_classes, len(mean)))
    intercept = np.full(num_classes, -1e4)  # classes never seen in training are never predicted
    if len(clf.classes_) == 2:  # binary sklearn has one row: the logit of the second class
        coef[clf.classes_[1]], intercept[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        intercept[clf.classes_[0]] = 0.0
    else:
        coef[clf.classes_], intercept[clf.classes_] = clf.coef_, clf.intercept_
    # w'x + b' == w((x - mean)/std) + b
    return (coef / std).astype(np.float32), (intercept - (coef * (mean / std)).sum(1)).astype(np.float32)


def fit_head(spec: ModelSpec, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
             y_val: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Standardise, fit multinomial logistic regression per C, keep the best on the validation primary metric.

    Returns head weight (C x D) and bias with the standardisation folded in, and the primary metric per C
    (computed on the logits of the head that would be kept, so it is the head's validation value).
    """
    from sklearn.linear_model import LogisticRegression

    metric = spec.train.primary_metric
    if not spec.train.frozen_c_grid:
        raise SpecError("train.frozen_c_grid is empty; the frozen head needs at least one C value, e.g. [0.1, 1.0]")
    num_classes = len(spec.labels)
    mean = x_train.mean(0)
    std = x_train.std(0) + 1e-6
    weight_mode = "balanced" if spec.train.class_weighting == "balanced" else None
    best: tuple[np.ndarray, np.ndarray] | None = None
    best_score: float | None = None
    scores: dict[str, float] = {}
    for c in spec.train.frozen_c_grid:
        clf = LogisticRegression(C=c, max_iter=2000, class_weight=weight_mode, random_state=spec.train.seed)
        clf.fit((x_train - mean) / std, y_train)
        weight, bias = _folded_head(clf, num_classes, mean, std)
        score = validation_score(metric, x_val @ weight.T + bias, y_val)
        scores[str(c)] = score
        if improves(metric, score, best_score):
            best, best_score = (weight, bias), score
    weight, bias = best  # type: ignore[misc]  # the grid is non-empty: the first C always improves on None
    return weight, bias, scores
