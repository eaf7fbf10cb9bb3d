"""Duplicate keys and clusters shared by the audit and the split.

Two rows belong to one cluster when they share a group_id, an exact input (raw text / image bytes), a
near-duplicate key (normalised text; images: 64-bit dHash within ``near_bits`` bits, confirmed by a
256-bit dHash within ``FINE_FACTOR * near_bits`` bits), directly or through a chain. The confirmation
matters for low-detail images such as 8x8 digit scans: at 64 bits most handwritten zeros are within 4
bits of each other, so one coarse hash would chain a whole class into one cluster.
Clusters are the connected components of that graph (scipy), so they never depend on row order.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from tl_core.data.partitions import (
    bytes_exact_keys,
    dhash_image,
    dhash_words,
    hamming,
    normalised_text_hash,
    text_exact_keys,
)
from tl_core.errors import StoreError
from tl_core.store import ObjectStore, split_uri

logger = logging.getLogger(__name__)

# Image status codes returned by image_keys.
OK, ZERO_SIZE, UNDECODABLE, UNREADABLE = "ok", "zero_size", "undecodable", "unreadable"
_CHUNK = 512
FINE_FACTOR = 6
FINE_WORDS = 4


def _uri_fetcher() -> Callable[[str], bytes]:
    """get_bytes for s3:// and file:// URIs, reusing one store (one boto3 client) per bucket / folder."""
    stores: dict[str, ObjectStore] = {}

    def fetch(uri: str) -> bytes:
        if not uri.startswith(("s3://", "file://")):
            raise ValueError(f"expected an s3:// or file:// URI, got {uri[:80]!r}")
        store_key = f"s3://{urlparse(uri).netloc}" if uri.startswith("s3://") else uri.rsplit("/", 1)[0]
        _, key = split_uri(uri)
        if store_key not in stores:
            stores[store_key] = split_uri(uri)[0]
        return stores[store_key].get_bytes(key)

    return fetch


def image_keys(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(exact key, 64-bit dHash, 256-bit dHash as n x 4 words, status) per image cell (bytes, or an s3://
    or file:// URI that is fetched).

    status is ``ok``, ``zero_size`` (empty or null), ``undecodable`` (PIL cannot decode it) or ``unreadable``
    (the URI cannot be fetched). Keys of rows that are not ``ok`` are unique placeholders.
    """
    from PIL import Image, UnidentifiedImageError

    fetch = _uri_fetcher()
    n = len(values)
    raw: list[bytes] = []
    status = np.full(n, OK, dtype=object)
    near = np.zeros(n, dtype=np.uint64)
    fine = np.zeros((n, FINE_WORDS), dtype=np.uint64)
    for i, v in enumerate(values.tolist()):
        data = b""
        if isinstance(v, bytes | bytearray | memoryview):
            data = bytes(v)
        elif isinstance(v, str) and v.strip():
            try:
                data = fetch(v.strip())
            except (StoreError, ValueError, OSError):
                status[i] = UNREADABLE
        if status[i] == OK and not data:
            status[i] = ZERO_SIZE
        if status[i] == OK:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    img.load()
                    near[i] = np.uint64(dhash_image(img))
                    fine[i] = dhash_words(img)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                status[i] = UNDECODABLE
        raw.append(data if status[i] == OK else f"\x00bad-row-{i}".encode())
    exact = bytes_exact_keys(raw)
    bad = status != OK
    near[bad] = exact[bad]
    fine[bad] = exact[bad, None]
    return exact, near, fine, status


ImageHashes = tuple[np.ndarray, np.ndarray]  # (64-bit dHash per row, 256-bit dHash as n x 4 words)


def input_keys(rows: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, ImageHashes | None]:
    """(exact key, near key, image hashes or None) per row of usable input."""
    if column == "text":
        return text_exact_keys(rows[column]), normalised_text_hash(rows[column]), None
    exact, near, fine, _ = image_keys(rows[column])
    return exact, near, (near, fine)


def _equal_key_edges(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    return order[same], order[same + 1]


def hamming_edges(hashes: ImageHashes, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) whose 64-bit dHashes differ in at most ``max_bits`` bits and whose 256-bit dHashes
    differ in at most ``FINE_FACTOR * max_bits`` bits (chunked, exact, no sampling)."""
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    h = hashes[0].astype(np.uint64)
    fine = hashes[1].astype(np.uint64)
    for lo in range(0, len(h), _CHUNK):
        block = h[lo : lo + _CHUNK]
        dist = hamming(block[:, None], h[None, :])
        i, j = np.nonzero(dist <= max_bits)
        i = i + lo
        keep = j > i
        i, j = i[keep], j[keep]
        fine_dist = hamming(fine[i], fine[j]).sum(axis=1)
        keep = fine_dist <= FINE_FACTOR * max_bits
        src.append(i[keep])
        dst.append(j[keep])
    if not src:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(src), np.concatenate(dst)


def cluster_ids(n: int, key_arrays: list[np.ndarray], hashes: ImageHashes | None = None,
                near_bits: int = 0) -> np.ndarray:
    """Connected components over equal keys (each array) and, for images, dHash distance <= near_bits."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    src: list[Any] = []
    dst: list[Any] = []
    for keys in key_arrays:
        a, b = _equal_key_edges(keys)
        src.append(a)
        dst.append(b)
    if hashes is not None and near_bits > 0:
        if n > 50_000:
            logger.info("near-duplicate image search over %d rows (pairwise, chunked)", n)
        a, b = hamming_edges(hashes, near_bits)
        src.append(a)
        dst.append(b)
    i = np.concatenate(src) if src else np.zeros(0, dtype=np.int64)
    j = np.concatenate(dst) if dst else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def group_keys(rows: pd.DataFrame) -> np.ndarray | None:
    """Key per row from group_id; rows without one get a unique key (they group with nobody by id)."""
    if "group_id" not in rows:
        return None
    gid = rows["group_id"]
    has = gid.notna().to_numpy() & (gid.fillna("").astype(str).str.len() > 0).to_numpy()
    hashed = pd.util.hash_pandas_object(gid.fillna("").astype(str), index=False).to_numpy()
    # Unique placeholders for rows without a group: distinct from each other (and, with overwhelming
    # probability, from real 64-bit hashes).
    placeholder = np.uint64(0xA5A5_0000_0000_0000) + np.arange(len(rows), dtype=np.uint64)
    return np.where(has, hashed, placeholder)


def row_clusters(rows: pd.DataFrame, column: str, near_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster id, exact key, near key) per usable row: group_id, exact and near duplicates joined."""
    exact, near, hashes = input_keys(rows, column)
    keys = [exact, near] if hashes is None else [exact]  # images: near-duplicates by (confirmed) distance
    g = group_keys(rows)
    if g is not None:
        keys.append(g)
    return cluster_ids(len(rows), keys, hashes, near_bits), exact, near
