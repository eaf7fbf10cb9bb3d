"""Production-labeled partitions: ``<data_root>/<dataset>/dt=YYYY-MM-DD/*.parquet`` (DESIGN.md).

Required columns: example_id (str, unique), label (str), labeled_at (timestamp), the input column
(text | image | image_uri); optional group_id; the spec's slice columns.
"""

from __future__ import annotations

import hashlib
import io
import re
import string
from datetime import date

import numpy as np
import pandas as pd

from tl_core.config import ModelSpec
from tl_core.errors import DataError
from tl_core.store import ObjectStore, join_key, open_store

DT_PATTERN = re.compile(r"^dt=(\d{4}-\d{2}-\d{2})$")
REQUIRED = ("example_id", "label", "labeled_at")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def data_store(spec: ModelSpec) -> ObjectStore:
    return open_store(spec.data.root)


def partition_dates(store: ObjectStore, dataset: str) -> dict[date, list[str]]:
    """dt -> sorted parquet keys, for every partition folder of the dataset."""
    out: dict[date, list[str]] = {}
    for key in store.list(dataset + "/"):
        parts = key[len(dataset) + 1 :].split("/")
        if len(parts) != 2 or not parts[1].endswith(".parquet"):
            continue
        m = DT_PATTERN.match(parts[0])
        if m:
            out.setdefault(date.fromisoformat(m.group(1)), []).append(key)
    return {d: sorted(v) for d, v in sorted(out.items())}


def read_partition_file(store: ObjectStore, key: str, expected_sha256: str | None = None) -> tuple[pd.DataFrame, str]:
    data = store.get_bytes(key)
    digest = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and digest != expected_sha256:
        raise DataError(f"partition file {key} changed after the snapshot (sha256 {digest[:12]}..., snapshot says "
                        f"{expected_sha256[:12]}...): partitions are immutable; write late labels to a new file")
    return pd.read_parquet(io.BytesIO(data)), digest


def validate_schema(df: pd.DataFrame, spec: ModelSpec, key: str) -> None:
    needed = [*REQUIRED, spec.data.input_column, *spec.data.slice_columns]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"partition file {key}: missing column(s) {missing}; expected at least {needed} "
                        f"(has {list(df.columns)})")
    if len(df) and not pd.api.types.is_datetime64_any_dtype(df["labeled_at"]):
        raise DataError(f"partition file {key}: column labeled_at must be a timestamp, got {df['labeled_at'].dtype}")


def normalised_text_hash(texts: pd.Series) -> np.ndarray:
    """Near-duplicate key for text: lowercase, punctuation removed, whitespace collapsed, then hashed."""
    norm = texts.fillna("").astype(str).str.lower().str.translate(_PUNCT).str.split().str.join(" ")
    return pd.util.hash_pandas_object(norm, index=False).to_numpy()


def dhash(image_bytes: bytes, size: int = 8) -> int:
    """Perceptual difference hash (64 bits): robust to rescaling, mild blur and contrast changes."""
    from PIL import Image

    img = Image.open(io.BytesIO(image_bytes)).convert("L").resize((size + 1, size), Image.Resampling.BILINEAR)
    px = np.asarray(img, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).flatten()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def partition_key(dataset: str, day: date, name: str) -> str:
    return join_key(dataset, f"dt={day.isoformat()}", name)
