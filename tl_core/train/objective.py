"""The validation objective: `train.primary_metric`, its direction and its value on validation logits.

One place decides what "better on validation" means, for early stopping and best-epoch choice
(finetune), the frozen head's C (frozen) and model selection (select). No torch import: selection runs
on CPU workers.
"""

from __future__ import annotations

import math

import numpy as np

from tl_core.config import LOWER_IS_BETTER
from tl_core.errors import DataError
from tl_core.evaluate.metrics import metric_value, softmax


def validation_score(metric: str, logits: np.ndarray, y: np.ndarray) -> float:
    """``metric`` (a value of config.Metric) of softmax(logits) against labels ``y``; refuses an undefined value."""
    value = metric_value(metric, softmax(logits), y)
    if math.isnan(value):
        present = sorted({int(v) for v in np.unique(y)})
        raise DataError(
            f"train.primary_metric {metric!r} is undefined on the validation split ({len(y)} examples, "
            f"class indices present: {present}); auroc needs at least two classes in validation: "
            "add validation data or choose another primary_metric"
        )
    return value


def improves(metric: str, new: float, best: float | None) -> bool:
    """Whether ``new`` is strictly better than ``best`` (None: nothing yet) for ``metric``."""
    if best is None or not math.isfinite(best):
        return True
    return new < best if metric in LOWER_IS_BETTER else new > best


