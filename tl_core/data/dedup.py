"""Duplicate keys and clusters shared by the audit and the split.

Two rows belong to one split cluster when they share a group_id, an exact input (raw text / image bytes) or
a near-duplicate cluster, directly or through a chain of those (connected components over equal keys, so
they never depend on row order). Near-duplicate clusters themselves never chain:

* text: equal normalised text (case, punctuation and whitespace ignored): an equivalence, so it cannot
  chain; a text that normalises to nothing (only punctuation) is nobody's near-duplicate.
* images: hashed as the model sees them (transparency composited on the preprocessing background,
  :func:`tl_core.models.preprocessing.model_rgb`). A candidate pair has 64-bit dHashes within
  ``data.near_duplicate_bits``; it is confirmed only when the 256-bit dHashes are within
  ``data.near_duplicate_confirm_bits`` and the 16x16 grey thumbnails differ by at most
  ``data.near_duplicate_max_pixel_diff`` grey levels on average. Near-blank images (thumbnail std below
  ``data.near_blank_max_std``) are only exact duplicates. Confirmed pairs form clusters by greedy leader
  clustering in content order: the first unassigned image becomes a leader and takes every unassigned image
  confirmed close to it, so every member is close to its leader and a chain of neighbours of neighbours
  never joins (a connected component did: one cluster swallowed 3,130 of 4,086 icons).
"""

from __future__ import annotations

import functools
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tl_core.config import DataSpec
from tl_core.data.partitions import (
    ImageReader,
    bytes_exact_keys,
    dhash_image,
    dhash_words,
    hamming,
    image_too_large,
    normalise_text,
    text_exact_keys,
)
from tl_core.errors import DataError, UnsafeImageUri

logger = logging.getLogger(__name__)

# Image status codes returned by image_keys.
OK, ZERO_SIZE, UNDECODABLE, UNREADABLE = "ok", "zero_size", "undecodable", "unreadable"
OUTSIDE_ROOT, OVERSIZED = "outside_root", "oversized"
_CHUNK = 512
FINE_WORDS = 4
THUMB = 16  # side of the grey thumbnail used by the pixel test and the near-blank test


@dataclass(frozen=True)
class NearRule:
    """The near-duplicate thresholds of the spec (``data.near_duplicate_*``, ``data.near_blank_max_std``)."""

    bits: int = 4
    confirm_bits: int = 24
    max_pixel_diff: float = 16.0
    blank_std: float = 4.0

    @classmethod
    def of(cls, data: DataSpec) -> NearRule:
        return cls(data.near_duplicate_bits, data.near_duplicate_confirm_bits, data.near_duplicate_max_pixel_diff,
                   data.near_blank_max_std)


@dataclass
class ImageHashes:
    """Per image row: 64-bit dHash, 256-bit dHash (n x 4 words), 16x16 grey thumbnail (n x 256), near-blank."""

    coarse: np.ndarray
    fine: np.ndarray
    thumb: np.ndarray
    blank: np.ndarray

    @classmethod
    def empty(cls, n: int) -> ImageHashes:
        return cls(np.zeros(n, np.uint64), np.zeros((n, FINE_WORDS), np.uint64), np.zeros((n, THUMB * THUMB), np.uint8),
                   np.ones(n, dtype=bool))

    def take(self, idx: np.ndarray) -> ImageHashes:
        return ImageHashes(self.coarse[idx], self.fine[idx], self.thumb[idx], self.blank[idx])


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


def _decode_hashes(data: bytes, blank_std: float) -> tuple[str, int, np.ndarray, np.ndarray, bool]:
    """(status, 64-bit dHash, 256-bit dHash words, grey thumbnail, near-blank) of image bytes, hashed as the
    model sees the image; the size is checked from the header (``Image.open`` is lazy) before decoding."""
    from PIL import Image, UnidentifiedImageError

    from tl_core.models.preprocessing import model_rgb

    fine = np.zeros(FINE_WORDS, dtype=np.uint64)
    thumb = np.zeros(THUMB * THUMB, dtype=np.uint8)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # palette transparency: handled by model_rgb
            img = Image.open(io.BytesIO(data))
            with img:
                if image_too_large(img.size):
                    return OVERSIZED, 0, fine, thumb, True
                img.load()
                grey = model_rgb(img).convert("L")
        thumb = np.asarray(grey.resize((THUMB, THUMB), Image.Resampling.LANCZOS), dtype=np.uint8).reshape(-1)
        blank = float(thumb.std()) < blank_std
        return OK, dhash_image(grey), dhash_words(grey), thumb, blank
    except Image.DecompressionBombError:
        return OVERSIZED, 0, fine, thumb, True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return UNDECODABLE, 0, fine, thumb, True


def image_keys(values: pd.Series, reader: ImageReader | None = None, describe: Callable[[int], str] | None = None,
               rule: NearRule | None = None) -> tuple[np.ndarray, ImageHashes, np.ndarray]:
    """(exact key, image hashes, status) per image cell (bytes, or an ``image_uri`` read through ``reader``:
    confined to the data root, verified against the snapshot).

    status is ``ok``, ``zero_size`` (empty or null), ``undecodable`` (PIL cannot decode it), ``oversized``
    (more than MAX_IMAGE_PIXELS pixels, never decoded), ``unreadable`` (the snapshot could not read the
    URI) or ``outside_root`` (the URI is not under the data root, never read). Rows that are not ``ok`` get
    a unique placeholder exact key and count as near-blank (no near-duplicates). A URI whose object changed
    since the snapshot raises DataError.
    """
    rule = rule or NearRule()
    n = len(values)
    raw: list[bytes] = []
    status = np.full(n, OK, dtype=object)
    hashes = ImageHashes.empty(n)
    name = describe or (lambda i: f"row {i}")
    for i, v in enumerate(values.tolist()):
        data, status[i] = _load_image(v, reader, functools.partial(name, i))
        if status[i] == OK:
            status[i], h, hashes.fine[i], hashes.thumb[i], hashes.blank[i] = _decode_hashes(data, rule.blank_std)
            hashes.coarse[i] = np.uint64(h)
        raw.append(data if status[i] == OK else f"\x00bad-row-{i}".encode())
    return bytes_exact_keys(raw), hashes, status


def text_near_keys(texts: pd.Series) -> np.ndarray:
    """Near-duplicate key per text: the hash of its normalised form; a text that normalises to nothing gets a
    unique placeholder (only-punctuation texts are not each other's near-duplicates)."""
    norm = normalise_text(texts)
    keys = pd.util.hash_pandas_object(norm, index=False).to_numpy()
    empty = (norm.astype(str).str.len() == 0).to_numpy()
    placeholder = np.uint64(0x5A5A_0000_0000_0000) + np.arange(len(texts), dtype=np.uint64)
    return np.where(empty, placeholder, keys)


def input_keys(rows: pd.DataFrame, column: str, reader: ImageReader | None = None, rule: NearRule | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(exact key, near-duplicate cluster key) per row of usable input (image_uri: read through ``reader``)."""
    if column == "text":
        return text_exact_keys(rows[column]), text_near_keys(rows[column])
    rule = rule or NearRule()
    exact, hashes, status = image_keys(rows[column], reader, describe_row(rows), rule)
    if (status != OK).any():
        i = int(np.flatnonzero(status != OK)[0])
        raise DataError(f"{describe_row(rows)(i)}: image is {status[i]} although the audit passed it; re-run "
                        "`tl audit`")
    return exact, near_image_clusters(hashes, exact, rule)


def _equal_key_edges(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    same = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    return order[same], order[same + 1]


def confirmed_pairs(hashes: ImageHashes, rule: NearRule) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of images that are not near-blank, whose 64-bit dHashes differ in at most
    ``rule.bits`` bits, confirmed by the 256-bit dHash and the thumbnail test (chunked, exact, no sampling)."""
    src: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    dst: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    live = np.flatnonzero(~hashes.blank)
    h = hashes.coarse[live].astype(np.uint64)
    for lo in range(0, len(h), _CHUNK):
        dist = hamming(h[lo : lo + _CHUNK, None], h[None, :])
        i, j = np.nonzero(dist <= rule.bits)
        i = i + lo
        keep = j > i
        i, j = live[i[keep]], live[j[keep]]
        fine_ok = hamming(hashes.fine[i], hashes.fine[j]).sum(axis=1) <= rule.confirm_bits
        diff = np.abs(hashes.thumb[i].astype(np.int16) - hashes.thumb[j].astype(np.int16)).mean(axis=1)
        keep = fine_ok & (diff <= rule.max_pixel_diff)
        src.append(i[keep])
        dst.append(j[keep])
    return np.concatenate(src), np.concatenate(dst)


def leader_clusters(n: int, src: np.ndarray, dst: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Greedy leader clustering: in ``order``, each unassigned row leads a cluster and takes its unassigned
    neighbours (pairs src-dst). Returns the leader's row index per row; members are all neighbours of it."""
    from scipy.sparse import csr_matrix

    adj = csr_matrix((np.ones(2 * len(src), dtype=np.int8), (np.concatenate([src, dst]), np.concatenate([dst, src]))),
                     shape=(n, n))
    leader = np.full(n, -1, dtype=np.int64)
    indptr, indices = adj.indptr, adj.indices
    for i in order.tolist():
        if leader[i] >= 0:
            continue
        leader[i] = i
        nb = indices[indptr[i] : indptr[i + 1]]
        leader[nb[leader[nb] < 0]] = i
    return leader


def near_image_clusters(hashes: ImageHashes, exact: np.ndarray, rule: NearRule) -> np.ndarray:
    """Near-duplicate cluster key per image: the leader's row index, leaders taken in content order (exact key,
    then row), so the clusters do not depend on how rows are ordered across files. rule.bits 0 turns it off."""
    n = len(exact)
    if n > 50_000:
        logger.info("near-duplicate image search over %d rows (pairwise, chunked)", n)
    if rule.bits <= 0:
        return np.arange(n, dtype=np.int64)
    src, dst = confirmed_pairs(hashes, rule)
    order = np.lexsort((hashes.coarse, exact))
    leader = leader_clusters(n, src, dst, order)
    # Name each cluster by its leader's exact key (a content key), not by a row position.
    return exact[leader].astype(np.uint64)


def cluster_ids(n: int, key_arrays: list[np.ndarray]) -> np.ndarray:
    """Connected components over equal keys (each array is one kind of key: group, exact, near cluster)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.zeros(0, dtype=np.int64)
    src: list[Any] = [np.zeros(0, dtype=np.int64)]
    dst: list[Any] = [np.zeros(0, dtype=np.int64)]
    for keys in key_arrays:
        a, b = _equal_key_edges(keys)
        src.append(a)
        dst.append(b)
    i, j = np.concatenate(src), np.concatenate(dst)
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


def row_clusters(rows: pd.DataFrame, column: str, rule: NearRule, reader: ImageReader | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster id, exact key, near-duplicate cluster key) per usable row: group_id, exact and near duplicates
    joined."""
    exact, near = input_keys(rows, column, reader, rule)
    keys = [exact, near]
    g = group_keys(rows)
    if g is not None:
        keys.append(g)
    return cluster_ids(len(rows), keys), exact, near
