"""Frozen-backbone embeddings and their cache: shared by training (the frozen baseline, label issues) and
monitoring (input drift), so neither imports the other.

Embeddings are computed once in inference mode and cached in the store, keyed by backbone id and revision, the
weights' fingerprint (etag of store weights, content hash of local ones), the preprocessing config and each
example's content hash; a nightly run embeds only the examples it has not seen. Cache layout:
``cache/embeddings/<cache_key>/<shard>.npz`` with arrays ``content_hash`` and ``embedding``; each run adds one
shard with what it embedded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tl_core.config import ModelSpec
from tl_core.models.backbones import Backbone, Classifier
from tl_core.models.preprocessing import ALPHA_BACKGROUND, Encoded, collate
from tl_core.models.weights import weights_fingerprint
from tl_core.store import ObjectStore, join_key

logger = logging.getLogger(__name__)


def choose_device(preference: str) -> torch.device:
    """The device for ``preference`` ('auto': CUDA when present, 'cuda', 'cpu')."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
        return torch.device("cuda")
    return torch.device("cpu")


def batch_indices(
    encoded: Encoded, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
) -> list[np.ndarray]:
    """Batches of example indices. Text is length-bucketed: shuffle, sort within windows of 50 batches by
    length, cut batches, shuffle the batches - so padding stays small without a fixed order."""
    n = len(encoded)
    order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
    if encoded.kind == "text":
        lengths = encoded.lengths()
        window = batch_size * 50
        chunks = [order[i : i + window] for i in range(0, n, window)]
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks]) if chunks else order
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if shuffle and len(batches) > 1:
        perm = torch.randperm(len(batches), generator=generator).numpy()
        batches = [batches[i] for i in perm]
    return batches


def iterate(
    encoded: Encoded, batch_size: int, shuffle: bool, generator: torch.Generator | None, pad_id: int, transform: Any
) -> Iterator[tuple[np.ndarray, tuple[torch.Tensor, ...]]]:
    for idx in batch_indices(encoded, batch_size, shuffle, generator):
        yield idx, collate(encoded, idx, pad_id, transform)


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
