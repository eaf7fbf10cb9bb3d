"""Duplicate keys and clusters shared by the audit and the split.

Two rows belong to one cluster when they share a group_id, an exact input (raw text / image bytes), a
near-duplicate key (normalised text; images: 64-bit dHash within ``near_bits`` bits, confirmed by a
256-bit dHash within ``FINE_FACTOR * near_bits`` bits), directly or through a chain. The confirmation
matters for low-detail images such as 8x8 digit scans: at 64 bits most handwritten zeros are within 4
bits of each other, so one coarse hash would chain a whole class into one cluster.
Clusters are the connected components of that graph (scipy), so they never depend on row order.
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from tl_core.data.partitions import (
    ImageReader,
    bytes_exact_keys,
    dhash_image,
    dhash_words,
    hamming,
    image_too_large,
    normalised_text_hash,
    text_exact_keys,
)
from tl_core.errors import DataError, UnsafeImageUri

logger = logging.getLogger(__name__)

# Image status codes returned by image_keys.
OK, ZERO_SIZE, UNDECODABLE, UNREADABLE = "ok", "zero_size", "undecodable", "unreadable"
OUTSIDE_ROOT, OVERSIZED = "outside_root", "oversized"
_CHUNK = 512
FINE_FACTOR = 6
FINE_WORDS = 4


def describe_row(rows: pd.DataFrame) -> Callable[[int], str]:
    """A function naming row i for messages: its example_id and, when known, its file and row in the file."""
    def describe(i: int) -> str:
        row = rows.iloc[i]
        where = f" ({row['partition']} row {row['row_in_file']})" if "partition" in rows and "row_in_file" in rows \
            else ""
        return f"example {row.get('example_id')!r}{where}"

    return describe


def _load_image(value: Any, reader: ImageReader | None, where: Callable[[], str]) -> tuple[bytes, str]:
    """(bytes, status) of one image cell; image_uri cells are read through ``reader`` (confined, verified)."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        return data, OK if data else ZERO_SIZE
    if not isinstance(value, str) or not value.strip():
        return b"", ZERO_SIZE
    if reader is None:
        raise RuntimeError("image_uri cells are read only through an ImageReader holding the snapshot's hashes")
    try:
        got = reader.read(value.strip(), where)
    except UnsafeImageUri:
        return b"", OUTSIDE_ROOT
    if got is None:
        return b"", UNREADABLE
    return got, OK if got else ZERO_SIZE


def _decode_hashes(data: bytes) -> tuple[str, int, np.ndarray]:
    """(status, 64-bit dHash, 256-bit dHash words) of image bytes; the size is checked from the header
    (``Image.open`` is lazy) before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    fine = np.zeros(FINE_WORDS, dtype=np.uint64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            if image_too_large(img.size):
                return OVERSIZED, 0, fine
            img.load()
            return OK, dhash_image(img), dhash_words(img)
    except Image.DecompressionBombError:
        return OVERSIZED, 0, fine
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return UNDECODABLE, 0, fine


def image_keys(values: pd.Series, reader: ImageReader | None = None,
               describe: Callable[[int], str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(exact key, 64-bit dHash, 256-bit dHash as n x 4 words, status) per image cell (bytes, or an
    ``image_uri`` read through ``reader``: confined to the data root, verified against the snapshot).

    status is ``ok``, ``zero_size`` (empty or null), ``undecodable`` (PIL cannot decode it), ``oversized``
    (more than MAX_IMAGE_PIXELS pixels, never decoded), ``unreadable`` (the snapshot could not read the
    URI) or ``outside_root`` (the URI is not under the data root, never read). Keys of rows that are not
    ``ok`` are unique placeholders. A URI whose object changed since the snapshot raises DataError.
    """
    n = len(values)
    raw: list[bytes] = []
    status = np.full(n, OK, dtype=object)
    near = np.zeros(n, dtype=np.uint64)
    fine = np.zeros((n, FINE_WORDS), dtype=np.uint64)
    name = describe or (lambda i: f"row {i}")
    for i, v in enumerate(values.tolist()):
        data, status[i] = _load_image(v, reader, functools.partial(name, i))
        if status[i] == OK:
            status[i], h, fine[i] = _decode_hashes(data)
            near[i] = np.uint64(h)
        raw.append(data if status[i] == OK else f"\x00bad-row-{i}".encode())
    exact = bytes_exact_keys(raw)
    bad = status != OK
    near[bad] = exact[bad]
    fine[bad] = exact[bad, None]
    return exact, near, fine, status


ImageHashes = tuple[np.ndarray, np.ndarray]  # (64-bit dHash per row, 256-bit dHash as n x 4 words)


def input_keys(rows: pd.DataFrame, column: str, reader: ImageReader | None = None
               ) -> tuple[np.ndarray, np.ndarray, ImageHashes | None]:
    """(exact key, near key, image hashes or None) per row of usable input (image_uri: read through
    ``reader``)."""
    if column == "text":
        return text_exact_keys(rows[column]), normalised_text_hash(rows[column]), None
    exact, near, fine, status = image_keys(rows[column], reader, describe_row(rows))
    if (status != OK).any():
        i = int(np.flatnonzero(status != OK)[0])
        raise DataError(f"{describe_row(rows)(i)}: image is {status[i]} although the audit passed it; re-run "
                        "`tl audit`")
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


def row_clusters(rows: pd.DataFrame, column: str, near_bits: int, reader: ImageReader | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster id, exact key, near key) per usable row: group_id, exact and near duplicates joined."""
    exact, near, hashes = input_keys(rows, column, reader)
    keys = [exact, near] if hashes is None else [exact]  # images: near-duplicates by (confirmed) distance
    g = group_keys(rows)
    if g is not None:
        keys.append(g)
    return cluster_ids(len(rows), keys, hashes, near_bits), exact, near
