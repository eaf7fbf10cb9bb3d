"""Batching for training and embedding: length-bucketed, optionally shuffled batches of a split already
encoded by the preprocessing contract (tl_core.models.preprocessing)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from tl_core.models.preprocessing import Encoded, collate


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
