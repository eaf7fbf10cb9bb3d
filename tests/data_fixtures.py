"""Helpers for the data-plane tests: crafted specs, partitions and small images (no tests here)."""

from __future__ import annotations

import io
import json
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tl_core.config import ModelSpec, parse_spec
from tl_core.data.partitions import partition_key, write_marker
from tl_core.runs import RunContext
from tl_core.store import open_store

LABELS = ["billing", "login", "shipping"]
WORDS = ["refund", "invoice", "password", "parcel", "courier", "screen", "error", "wallet", "plan", "card",
         "address", "token", "receipt", "upgrade", "delay", "crash"]


def text_spec(uri: str, **data: Any) -> ModelSpec:
    return parse_spec({
        "name": "tickets", "modality": "text", "labels": LABELS,
        "backbone": {"library": "transformers", "name": "x", "weights": "none"},
        "data": {"root": uri + "/data", "dataset": "t", "window_days": 3, "slice_columns": ["region"],
                 "min_examples_per_class": 2, "test_days": 1, "max_unknown_label_fraction": 0.2, **data},
        "gate": {"min_slice_size": 1},
        "store": uri + "/store",
    })


def image_spec(uri: str, column: str = "image", **data: Any) -> ModelSpec:
    return parse_spec({
        "name": "digits", "modality": "image", "labels": [str(i) for i in range(10)],
        "backbone": {"library": "timm", "name": "x", "weights": "none"},
        "data": {"root": uri + "/data", "dataset": "digits", "input_column": column,
                 "slice_columns": ["scanner"], "window_days": 3, "test_days": 1, "min_examples_per_class": 1,
                 "max_unknown_label_fraction": 0.5, **data},
        "store": uri + "/store",
    })


def text_rows(day: date, n: int = 12, prefix: str = "", **over: Any) -> pd.DataFrame:
    """n distinct tickets (no two normalise to the same text), labels cycling through LABELS."""
    rng = np.random.default_rng(day.toordinal() + len(prefix))
    df = pd.DataFrame({
        "example_id": [f"{prefix}{day:%m%d}-{i}" for i in range(n)],
        "label": [LABELS[i % 3] for i in range(n)],
        "text": [f"{prefix} ticket {day:%m%d} {i} " + " ".join(rng.choice(WORDS, 4)) for i in range(n)],
        "labeled_at": [datetime(day.year, day.month, day.day, 10, i % 60) for i in range(n)],
        "region": ["eu" if i % 2 else "us" for i in range(n)],
    })
    for k, v in over.items():
        df[k] = v
    return df


def put(spec: ModelSpec, day: date, df: pd.DataFrame, name: str = "part-0.parquet", complete: bool = True) -> str:
    """Write a partition file; then (``complete``) the day's completion marker, as a real writer does last."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    key = partition_key(spec.data.dataset, day, name)
    store = open_store(spec.data.root)
    store.put_bytes(key, buf.getvalue())
    if complete:
        write_marker(store, spec.data.dataset, day, spec.data.completion_marker)
    return key


def base(spec: ModelSpec, days: tuple[int, ...] = (1, 2, 3, 4), n: int = 12) -> None:
    for d in days:
        put(spec, date(2026, 11, d), text_rows(date(2026, 11, d), n))


def png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def distinct_image(i: int, size: int = 32) -> np.ndarray:
    """Images that differ a lot from each other (random blocks seeded by i)."""
    rng = np.random.default_rng(1000 + i)
    blocks = rng.integers(0, 256, (8, 8)).astype(np.float64)
    return np.kron(blocks, np.ones((size // 8, size // 8)))


def examples(ctx: RunContext) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("split/examples.parquet"))))


def quarantine(ctx: RunContext) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("audit/quarantine.parquet"))))


def finding(report: dict[str, Any], check: str) -> dict[str, Any]:
    matches = [f for f in report["findings"] if f["check"] == check]
    if len(matches) != 1:
        raise LookupError(f"expected one finding {check!r}, got {len(matches)}")
    return matches[0]


def image_frame(day: date, images: list[Any], prefix: str = "i", column: str = "image") -> pd.DataFrame:
    """One row per image (bytes or image_uri), labels cycling through the digits, one scanner."""
    n = len(images)
    return pd.DataFrame({"example_id": [f"{prefix}-{i}" for i in range(n)], "label": [str(i % 10) for i in range(n)],
                         "labeled_at": [datetime(day.year, day.month, day.day, 9)] * n,
                         "scanner": ["flatbed"] * n, column: images})


def put_table(spec: ModelSpec, day: date, table: Any, name: str = "part-0.parquet") -> str:
    """Write a pyarrow table as a partition file (for values pandas cannot hold, e.g. invalid UTF-8)."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    key = partition_key(spec.data.dataset, day, name)
    store = open_store(spec.data.root)
    store.put_bytes(key, buf.getvalue())
    write_marker(store, spec.data.dataset, day, spec.data.completion_marker)
    return key


def strict_json(data: bytes) -> Any:
    """Parse JSON as any strict reader would: NaN / Infinity are errors."""
    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    return json.loads(data, parse_constant=refuse)


FIXTURES = Path(__file__).parent / "fixtures"  # regenerated by tests/fixtures/make_fixtures.py


def real_frame(name: str) -> pd.DataFrame:
    """A committed real-data fixture: ``tango_icons`` (Debian tango-icon-theme) or ``debian_descriptions``
    (``apt-cache dumpavail``), with its labeling day in ``dt``."""
    return pd.read_parquet(FIXTURES / f"{name}.parquet")


def put_days(spec: ModelSpec, df: pd.DataFrame) -> None:
    """One partition per ``dt`` value of ``df`` (the dt column itself is not written)."""
    for dt, part in df.groupby("dt"):
        put(spec, date.fromisoformat(str(dt)), part.drop(columns=["dt"]).reset_index(drop=True))


def icon_spec(uri: str, **data: Any) -> ModelSpec:
    df = real_frame("tango_icons")
    return parse_spec({
        "name": "icons", "modality": "image", "labels": sorted(df["label"].unique()),
        "backbone": {"library": "timm", "name": "x", "weights": "none"},
        "data": {"root": uri + "/data", "dataset": "icons", "input_column": "image", "slice_columns": ["size"],
                 "window_days": 9, "test_days": 2, "min_examples_per_class": 5, **data},
        "gate": {"min_slice_size": 1}, "store": uri + "/store",
    })


def descriptions_spec(uri: str, **data: Any) -> ModelSpec:
    """Debian package descriptions labelled by Section, slice ``shard``, on the real pretrained MiniLM."""
    from model_fixtures import MINILM_DIR

    df = real_frame("debian_descriptions")
    return parse_spec({
        "name": "packages", "modality": "text", "labels": sorted(df["label"].unique()),
        "backbone": {"library": "transformers", "name": "sentence-transformers/all-MiniLM-L6-v2",
                     "weights": "local", "path": str(MINILM_DIR)},
        "data": {"root": uri + "/data", "dataset": "packages", "slice_columns": ["shard"], "window_days": 7,
                 "test_days": 1, "min_examples_per_class": 5, **data},
        "gate": {"min_slice_size": 1}, "train": {"device": "cpu"}, "store": uri + "/store",
    })
