"""The frozen-backbone baseline: cached embeddings + a multinomial logistic-regression head.

Embeddings are computed once in inference mode and cached in the store, keyed by backbone id and
revision, the weights' fingerprint (etag of store weights, content hash of local ones), the
preprocessing config and each example's content hash; a nightly run embeds only the
examples it has not seen. Cache layout: ``cache/embeddings/<cache_key>/<shard>.npz`` with arrays
``content_hash`` and ``embedding``; each run adds one shard with what it embedded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tl_core.config import ModelSpec
from tl_core.errors import SpecError
from tl_core.models.backbones import Backbone, Classifier
from tl_core.models.preprocessing import ALPHA_BACKGROUND, Encoded
from tl_core.models.weights import weights_fingerprint
from tl_core.store import ObjectStore, join_key
from tl_core.train.data import iterate
from tl_core.train.objective import improves, validation_score

logger = logging.getLogger(__name__)


def cache_key(spec: ModelSpec, preprocessing: dict[str, Any]) -> str:
    ident: dict[str, Any] = {
        "library": spec.backbone.library, "name": spec.backbone.name, "revision": spec.backbone.revision,
        "weights": spec.backbone.weights, "path": spec.backbone.path, "model_kwargs": spec.backbone.model_kwargs,
        "weights_fingerprint": weights_fingerprint(spec.backbone), "preprocessing": preprocessing,
    }
    if spec.backbone.weights == "package":  # the same file through another key map is other weights
        ident["key_map"] = spec.backbone.key_map
    if spec.backbone.library == "timm":  # images: how transparency is flattened is part of what the model sees
        ident["alpha_background"] = list(ALPHA_BACKGROUND)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    embed_s: float = 0.0


class EmbeddingCache:
    def __init__(self, store: ObjectStore, key: str) -> None:
        self.store, self.prefix = store, join_key("cache", "embeddings", key)
        self._table: dict[str, np.ndarray] | None = None

    def table(self) -> dict[str, np.ndarray]:
        if self._table is None:
            self._table = {}
            for shard in self.store.list(self.prefix + "/"):
                with np.load(io.BytesIO(self.store.get_bytes(shard)), allow_pickle=False) as z:
                    for h, e in zip(z["content_hash"].tolist(), z["embedding"], strict=True):
                        self._table[h] = e
        return self._table

    def add(self, shard_name: str, hashes: list[str], embeddings: np.ndarray) -> None:
        if not hashes:
            return
        buf = io.BytesIO()
        np.savez(buf, content_hash=np.array(hashes), embedding=embeddings.astype(np.float32))
        self.store.put_bytes(join_key(self.prefix, f"{shard_name}.npz"), buf.getvalue())
        table = self.table()
        for h, e in zip(hashes, embeddings, strict=True):
            table[h] = e


@torch.inference_mode()
def embed(model: Classifier, data: Encoded, batch_size: int, device: torch.device, pad_id: int,
          transform: Any) -> np.ndarray:
    model.eval().to(device)
    out = np.zeros((len(data), model.head.in_features), dtype=np.float32)
    for idx, inputs in iterate(data, batch_size, False, None, pad_id, transform):
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                feats = model.features(*(x.to(device) for x in inputs))
        else:
            feats = model.features(*inputs)
        out[idx] = feats.float().cpu().numpy()
    return out


def embed_with_cache(model: Classifier, backbone: Backbone, spec: ModelSpec, data: Encoded, hashes: list[str],
                     cache: EmbeddingCache, shard_name: str, transform: Any, stats: CacheStats,
                     device: torch.device) -> np.ndarray:
    table = cache.table()
    missing = [i for i, h in enumerate(hashes) if h not in table]
    stats.hits += len(hashes) - len(missing)
    stats.misses += len(missing)
    if missing:
        sub = Encoded(data.kind, [data.ids[i] for i in missing], [data.values[i] for i in missing],
                      data.labels[missing])
        t0 = time.perf_counter()
        pad_id = int(getattr(backbone.tokenizer, "pad_token_id", 0) or 0)
        new = embed(model, sub, spec.train.eval_batch_size, device, pad_id, transform)
        stats.embed_s += time.perf_counter() - t0
        # One shard per (run, split); unique hashes only.
        uniq: dict[str, int] = {}
        for j, i in enumerate(missing):
            uniq.setdefault(hashes[i], j)
        cache.add(shard_name, list(uniq), new[list(uniq.values())])
    return np.stack([table[h] for h in hashes]) if hashes else np.zeros((0, model.head.in_features), np.float32)


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
