"""Production-labeled partitions: ``<data_root>/<dataset>/dt=YYYY-MM-DD/*.parquet`` (DESIGN.md), and the
hashing helpers the audit and the split share.

Required columns: example_id (str, unique), label (str), labeled_at (timestamp), the input column
(text: str | image: bytes | image_uri: str), optional group_id; the spec's slice columns.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Iterable
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tl_core.config import ModelSpec
from tl_core.errors import DataError
from tl_core.store import ObjectStore, join_key, open_store

DT_PATTERN = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
REQUIRED = ("example_id", "label", "labeled_at")
_NON_WORD = r"[\W_]+"


def data_store(spec: ModelSpec) -> ObjectStore:
    return open_store(spec.data.root)


def partition_key(dataset: str, day: date, name: str) -> str:
    return join_key(dataset, f"dt={day.isoformat()}", name)


def partition_dates(store: ObjectStore, dataset: str) -> dict[date, list[str]]:
    """dt -> sorted parquet keys, for every ``dt=YYYY-MM-DD`` folder of the dataset (other keys are ignored)."""
    out: dict[date, list[str]] = {}
    for key in store.list(dataset + "/"):
        parts = key[len(dataset) + 1 :].split("/")
        if len(parts) != 2 or not parts[1].endswith(".parquet") or parts[1].startswith((".", "_")):
            continue
        m = DT_PATTERN.match(parts[0])
        if not m:
            continue
        try:
            day = date.fromisoformat(m.group(1))
        except ValueError:
            raise DataError(f"partition folder {dataset}/{parts[0]}: {m.group(1)!r} is not a valid date "
                            "(expected dt=YYYY-MM-DD)") from None
        out.setdefault(day, []).append(key)
    return {d: sorted(v) for d, v in sorted(out.items())}


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


def read_schema(data: bytes, key: str) -> pa.Schema:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(io.BytesIO(data))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"partition file {key}: not a readable parquet file ({exc})") from None


_STRING = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
_BINARY = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view, pa.types.is_fixed_size_binary)


def _is(t: pa.DataType, preds: Iterable[Any]) -> bool:
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


def image_bytes(value: Any) -> bytes:
    """The bytes of an ``image`` cell, or of the object an ``image_uri`` cell names (s3:// or file://)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        from tl_core.store import read_uri

        return read_uri(value)
    raise DataError(f"image value must be bytes or an s3:// / file:// URI, got {type(value).__name__}")
