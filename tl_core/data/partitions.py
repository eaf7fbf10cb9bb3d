"""Production-labeled partitions: ``<data_root>/<dataset>/dt=YYYY-MM-DD/*.parquet`` (DESIGN.md), and the
hashing helpers the audit and the split share.

Required columns: example_id (str, unique), label (str), labeled_at (timestamp), the input column
(text: str | image: bytes | image_uri: str), optional group_id; the spec's slice columns.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tl_core.config import ModelSpec
from tl_core.errors import AccessDenied, DataError, NoSuchKey, UnsafeImageUri
from tl_core.store import ObjectStore, join_key, open_store

DT_PATTERN = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
REQUIRED = ("example_id", "label", "labeled_at")
_NON_WORD = r"[\W_]+"


def data_store(spec: ModelSpec) -> ObjectStore:
    return open_store(spec.data.root)


def partition_key(dataset: str, day: date, name: str) -> str:
    return join_key(dataset, f"dt={day.isoformat()}", name)


class PartitionScan(NamedTuple):
    """What lies under a dataset: the partition files, the keys that are not read, and the completed days."""

    files: dict[date, list[str]]
    """dt -> sorted parquet keys of every ``<dataset>/dt=YYYY-MM-DD/*.parquet`` file"""
    ignored: list[dict[str, str]]
    """every other key with the reason it is not read (``{"key", "dt", "reason"}``; ``dt`` "" when unparseable)"""
    marked: set[date]
    """the days whose folder holds the completion marker (empty when no marker name is given)"""


def scan_partitions(store: ObjectStore, dataset: str, marker: str | None = None) -> PartitionScan:
    """Every key under ``<dataset>/``: partition files, completion markers named ``marker`` directly inside a
    dt= folder, and the rest (ignored, with the reason). A folder named like ``dt=YYYY-MM-DD`` with an
    impossible date raises DataError naming it."""
    out: dict[date, list[str]] = {}
    ignored: list[dict[str, str]] = []
    marked: set[date] = set()
    for key in store.list(dataset + "/"):
        parts = key[len(dataset) + 1 :].split("/")
        if len(parts) == 1:
            ignored.append({"key": key, "dt": "", "reason": "not inside a dt=YYYY-MM-DD folder"})
            continue
        m = DT_PATTERN.match(parts[0])
        if not m:
            ignored.append({"key": key, "dt": "", "reason": f"folder name {parts[0]!r} is not dt=YYYY-MM-DD"})
            continue
        try:
            day = date.fromisoformat(m.group(1))
        except ValueError:
            raise DataError(f"partition folder {dataset}/{parts[0]}: {m.group(1)!r} is not a valid date "
                            "(expected dt=YYYY-MM-DD)") from None
        if marker is not None and parts[1:] == [marker]:
            marked.add(day)
            continue
        reason = _file_ignored_reason(parts[1:])
        if reason:
            ignored.append({"key": key, "dt": day.isoformat(), "reason": reason})
            continue
        out.setdefault(day, []).append(key)
    return PartitionScan({d: sorted(v) for d, v in sorted(out.items())}, ignored, marked)


def write_marker(store: ObjectStore, dataset: str, day: date, marker: str | None) -> str | None:
    """Write the completion marker of ``<dataset>/dt=day/`` (empty object; None: markers not used, nothing
    written). A partition's writer calls it LAST, after every data file of the day is in place. Returns the key."""
    if marker is None:
        return None
    key = partition_key(dataset, day, marker)
    store.put_bytes(key, b"")
    return key


def mark_complete(spec: ModelSpec, day: date) -> str | None:
    """Write the completion marker of the spec's partition for ``day`` (see :func:`write_marker`); its URI as the
    DAG's sensor waits for it (:meth:`DataSpec.marker_uri`), or None when markers are not used."""
    write_marker(data_store(spec), spec.data.dataset, day, spec.data.completion_marker)
    return spec.data.marker_uri(day.isoformat())


def _file_ignored_reason(rest: list[str]) -> str:
    """Why a key inside a dt= folder is not a partition file ("" when it is one)."""
    if len(rest) > 1:
        return "nested below the dt= folder (only <dataset>/dt=YYYY-MM-DD/*.parquet is read)"
    if rest[0].startswith((".", "_")):
        return "hidden or temporary file (name starts with '.' or '_')"
    if not rest[0].endswith(".parquet"):
        return "not a .parquet file"
    return ""


def partition_dates(store: ObjectStore, dataset: str) -> dict[date, list[str]]:
    """dt -> sorted parquet keys, for every ``dt=YYYY-MM-DD`` folder of the dataset (see :func:`scan_partitions`
    for the keys that are not read)."""
    return scan_partitions(store, dataset).files


def read_partition_bytes(store: ObjectStore, key: str, expected_sha256: str | None = None) -> tuple[bytes, str]:
    """A partition file's bytes and sha256; raises DataError naming the file when it no longer matches."""
    data = store.get_bytes(key)
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise DataError(f"partition file {key} changed after the snapshot (sha256 {digest[:12]}..., snapshot says "
                        f"{expected_sha256[:12]}...): partitions are immutable; write late labels to a new file "
                        "and start a new run")
    return data, digest


def read_table(data: bytes, key: str, columns: list[str] | None = None) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(io.BytesIO(data), columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"partition file {key}: not a readable parquet file ({exc})") from None


def normalise_table(table: pa.Table) -> tuple[pa.Table, dict[str, np.ndarray], str | None]:
    """(table, invalid UTF-8 rows per column, labeled_at's timezone or None), read-side normalisation of one
    partition file: dictionary (categorical) columns become plain columns of their values; string columns
    with invalid UTF-8 get U+FFFD in place of the bad bytes and their rows are reported (so the audit can
    quarantine them instead of failing on the whole file); a timezone-aware ``labeled_at`` becomes tz-naive
    UTC and an all-null one a timestamp column, so files of one window concatenate and sort."""
    bad: dict[str, np.ndarray] = {}
    tz: str | None = None
    for i, field in enumerate(table.schema):
        col = table.column(i)
        if pa.types.is_dictionary(field.type):
            col = col.cast(field.type.value_type)
        if _is_string(col.type):
            repaired = _repair_utf8(col)
            if repaired is not None:
                col, bad[field.name] = repaired
        if field.name == "labeled_at":
            if pa.types.is_timestamp(col.type) and col.type.tz is not None:
                tz = str(col.type.tz)
                col = col.cast(pa.timestamp(col.type.unit))
            elif pa.types.is_null(col.type):
                col = col.cast(pa.timestamp("us"))
        if col is not table.column(i):
            table = table.set_column(i, pa.field(field.name, col.type), col)
    return table, bad, tz


def _is_string(t: pa.DataType) -> bool:
    return any(p(t) for p in _STRING)


def _repair_utf8(col: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray] | None:
    """None when the column is valid UTF-8, else (the column with U+FFFD replacements, bad-row mask)."""
    try:
        col.validate(full=True)
        return None
    except pa.ArrowInvalid:
        pass
    raw = col.cast(pa.large_binary()).to_pylist()
    bad = np.zeros(len(raw), dtype=bool)
    values: list[str | None] = []
    for i, v in enumerate(raw):
        if v is None:
            values.append(None)
            continue
        try:
            values.append(v.decode("utf-8"))
        except UnicodeDecodeError:
            bad[i] = True
            values.append(v.decode("utf-8", errors="replace"))
    return pa.chunked_array([pa.array(values, type=pa.large_string())]), bad


def read_schema(data: bytes, key: str) -> pa.Schema:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"partition file {key}: not a readable parquet file ({exc})") from None


_STRING = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
_BINARY = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view, pa.types.is_fixed_size_binary)


def _is(t: pa.DataType, preds: Iterable[Any]) -> bool:
    if pa.types.is_dictionary(t):  # a categorical column (pandas category / arrow dictionary) of that type
        t = t.value_type
    return any(p(t) for p in preds) or pa.types.is_null(t)


def validate_schema(schema: pa.Schema, spec: ModelSpec, key: str) -> None:
    """Required columns are present with the contract's types; raises DataError naming file, column and types."""
    needed = [*REQUIRED, spec.data.input_column, *spec.data.slice_columns]
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise DataError(f"partition file {key}: missing column(s) {missing}; expected at least {needed} "
                        f"(has {schema.names})")
    expect: dict[str, tuple[str, Iterable[Any]]] = {
        "example_id": ("string", _STRING), "label": ("string", _STRING),
        "labeled_at": ("timestamp", (pa.types.is_timestamp,)),
        "text": ("string", _STRING), "image_uri": ("string", _STRING), "image": ("binary", _BINARY),
    }
    for col in [*REQUIRED, spec.data.input_column, *(["group_id"] if "group_id" in schema.names else [])]:
        if col == "group_id":
            want: tuple[str, Iterable[Any]] = ("string", _STRING)
        else:
            want = expect[col]
        t = schema.field(col).type
        if not _is(t, want[1]):
            raise DataError(f"partition file {key}: column {col!r} must be {want[0]}, got {t}")


# ----------------------------------------------------------------------------------------------- hashing

def text_exact_keys(texts: pd.Series) -> np.ndarray:
    """64-bit key per row of the raw text (exact duplicates share it)."""
    return pd.util.hash_pandas_object(texts.fillna("").astype(str), index=False).to_numpy()


def normalise_text(texts: pd.Series) -> pd.Series:
    """Lowercase; every run of punctuation / whitespace / underscores becomes one space; trimmed."""
    arr = pa.array(texts.fillna("").astype(str), type=pa.large_string())
    norm = pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(arr), _NON_WORD, " "))
    return pd.Series(pd.arrays.ArrowExtensionArray(norm), index=texts.index)


def normalised_text_hash(texts: pd.Series) -> np.ndarray:
    """Near-duplicate key for text: the 64-bit hash of :func:`normalise_text`."""
    return pd.util.hash_pandas_object(normalise_text(texts), index=False).to_numpy()


def bytes_exact_keys(values: Iterable[Any]) -> np.ndarray:
    """64-bit key per value from sha256 of its bytes (str values are UTF-8 encoded)."""
    out = []
    for v in values:
        raw = bytes(v) if isinstance(v, bytes | bytearray | memoryview) else str(v).encode()
        out.append(int.from_bytes(hashlib.sha256(raw).digest()[:8], "little"))
    return np.array(out, dtype=np.uint64)


def dhash_image(img: Any, size: int = 8) -> int:
    """dHash of a decoded PIL image: grey, resized to (size+1) x size, one bit per horizontal gradient sign."""
    from PIL import Image

    px = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def dhash_words(img: Any, size: int = 16, margin: int = 2) -> np.ndarray:
    """A finer dHash (size*size bits, 256 by default) as uint64 words, used to confirm 64-bit matches. A bit
    is set where the gradient exceeds ``margin`` grey levels, so flat areas do not flip under mild blur."""
    from PIL import Image

    px = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.int16)
    packed = np.packbits((px[:, 1:] - px[:, :-1] > margin).flatten())
    return np.frombuffer(packed.tobytes(), dtype=">u8").astype(np.uint64)


def dhash(image_bytes: bytes, size: int = 8) -> int:
    """Perceptual difference hash (size*size bits, 64 by default): stable under rescaling, mild blur and
    contrast changes. Raises DataError if the bytes are not a decodable image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image_bytes)) as img:
            img.load()
            return dhash_image(img, size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot decode image ({len(image_bytes)} bytes) for a perceptual hash: {exc}") from None


def hamming(a: np.ndarray, b: np.ndarray | np.uint64) -> np.ndarray:
    """Bitwise Hamming distance of uint64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


# ------------------------------------------------------------------------------------------------- images

MAX_IMAGE_PIXELS = 50_000_000
"""Largest image (width x height, read from the file header before anything is decoded) the audit keeps;
larger ones are quarantined as ``oversized_image``. 50 megapixels is far above what any backbone's input
size needs (a 224 px model downsamples a 7000 x 7000 scan 30-fold) and bounds a single decode at about
150 MB of RGB. No spec field covers it; change this constant if a dataset legitimately needs more."""

_URI_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\?#]")


def confine_image_uri(uri: str, root: str) -> str:
    """The key, relative to the data root, of the object an ``image_uri`` cell names. Only URIs under the
    data root (``spec.data.root``) are accepted: same scheme and bucket, no ``.``/``..``/empty segments, no
    query, fragment, backslash or control characters; for file:// roots the (percent-decoded) path is
    resolved, symlinks included, and must stay inside the resolved root. Raises UnsafeImageUri naming the URI otherwise.
    Nothing is read."""
    def refuse(why: str) -> UnsafeImageUri:
        return UnsafeImageUri(f"image_uri {uri[:200]!r} is not under the data root {root}: {why}")

    for scheme in ("s3://", "file://"):
        if root.startswith(scheme):
            break
    else:
        raise refuse("unsupported data root scheme")
    if not uri.startswith(scheme):
        raise refuse(f"expected a {scheme} URI under the data root (relative paths and other schemes are refused)")
    rest = uri[len(scheme):]
    if scheme == "file://":  # file URIs are percent-encoded (RFC 8089, Path.as_uri); check what would be read
        rest = unquote(rest)
    if _URI_FORBIDDEN.search(uri) or _URI_FORBIDDEN.search(rest):
        raise refuse("it contains a query, fragment, backslash or control character")
    segments = (rest[1:] if rest.startswith("/") else rest).split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise refuse("'.', '..' and empty ('//') path segments are refused")
    if scheme == "s3://":
        prefix = root[len(scheme):].strip("/") + "/"
        if not rest.startswith(prefix) or rest == prefix:
            raise refuse("a different bucket or prefix")
        return rest[len(prefix):]
    base = Path(root[len(scheme):]).resolve()
    try:
        rel = Path(rest).resolve().relative_to(base)
    except ValueError:
        raise refuse("the path resolves outside the data root") from None
    if not rel.parts:
        raise refuse("it names the data root itself")
    return rel.as_posix()


def fetch_image(store: ObjectStore, uri: str, root: str) -> bytes | None:
    """The bytes of a confined ``image_uri`` (see :func:`confine_image_uri`, which raises first for a URI
    outside the root), or None when the object cannot be read (missing, a folder, or access denied)."""
    key = confine_image_uri(uri, root)
    try:
        return store.get_bytes(key)
    except (NoSuchKey, AccessDenied):
        return None


class ImageReader:
    """Reads ``image_uri`` cells for the run after the snapshot: confined to the data root and verified
    against the sha256 the snapshot recorded per URI (``None`` there: unreadable at snapshot time)."""

    def __init__(self, root: str, recorded: Mapping[str, str | None]) -> None:
        self.root = root
        self.recorded = recorded
        self._store: ObjectStore | None = None

    def read(self, uri: str, where: Callable[[], str]) -> bytes | None:
        """The image's bytes, or None when the snapshot found it unreadable. Raises UnsafeImageUri for a URI
        outside the data root (nothing is read) and DataError naming the row (``where()``) and the URI when
        the object is not what the snapshot recorded."""
        confine_image_uri(uri, self.root)
        if uri not in self.recorded:
            raise DataError(f"{where()}: image_uri {uri!r} has no hash in the run's snapshot (the snapshot and the "
                            "partition files disagree); start a new run")
        expected = self.recorded[uri]
        if expected is None:
            return None
        if self._store is None:
            self._store = open_store(self.root)
        data = fetch_image(self._store, uri, self.root)
        digest = hashlib.sha256(data).hexdigest() if data is not None else "nothing (unreadable)"
        if digest != expected:
            raise DataError(f"{where()}: image {uri} changed after the snapshot (sha256 {digest[:12]}..., snapshot "
                            f"says {expected[:12]}...): images are immutable like partitions; write a changed "
                            "image under a new key and start a new run")
        return data


def image_too_large(size: tuple[int, int]) -> bool:
    """Whether an image of (width, height) is above :data:`MAX_IMAGE_PIXELS`."""
    return int(size[0]) * int(size[1]) > MAX_IMAGE_PIXELS
