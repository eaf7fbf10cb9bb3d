"""`tl audit`: check the snapshot's rows before any training.

Findings carry a severity: ``info``, ``warning`` (rows quarantined, run continues) or ``blocking`` (the
run stops with a message naming partition, column, count and up to five example ids). Quarantined
rows go to audit/quarantine.parquet with their reason; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from tl_core.data.partitions import data_store, dhash, normalised_text_hash, read_partition_file
from tl_core.errors import BlockingAuditFinding, NoSuchKey
from tl_core.runs import RunContext

logger = logging.getLogger(__name__)


def load_snapshot_rows(ctx: RunContext) -> pd.DataFrame:
    """All rows of the snapshot's partitions (checksums verified), with `dt`, `partition` and `_row` identity."""
    try:
        manifest = ctx.read_json("snapshot/manifest.json")
    except NoSuchKey:
        raise BlockingAuditFinding(f"run {ctx.run_id}: no snapshot/manifest.json; run `tl snapshot` first") from None
    store = data_store(ctx.spec)
    frames = []
    for p in manifest["partitions"]:
        df, _ = read_partition_file(store, p["key"], p["sha256"])
        df = df.assign(dt=p["dt"], partition=p["key"])
        df["_row"] = p["key"] + "#" + pd.Series(np.arange(len(df)), index=df.index).astype(str)
        frames.append(df)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    rows["example_id"] = rows["example_id"].astype(str)
    return rows


def _ids(df: pd.DataFrame) -> list[str]:
    return df["example_id"].astype(str).head(5).tolist()


def _where(df: pd.DataFrame) -> str:
    parts = df["partition"].value_counts()
    return ", ".join(f"{k} ({v})" for k, v in parts.head(3).items())


def input_keys(rows: pd.DataFrame, column: str, with_perceptual: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(exact key, near-duplicate key) per row: raw-content hash and normalised text / perceptual image hash."""
    if column == "text":
        exact = pd.util.hash_pandas_object(rows[column].fillna("").astype(str), index=False).to_numpy()
        return exact, normalised_text_hash(rows[column])
    raw = rows[column].map(lambda v: bytes(v) if isinstance(v, bytes | bytearray) else str(v).encode())
    exact = pd.util.hash_pandas_object(raw.map(lambda b: hashlib.sha1(b, usedforsecurity=False).hexdigest()),
                                       index=False).to_numpy()
    if not with_perceptual or column != "image":
        return exact, exact
    near = []
    for v in rows[column]:
        try:
            near.append(dhash(bytes(v)))
        except (OSError, ValueError, TypeError):
            near.append(-1)
    return exact, np.array(near, dtype=np.int64)


def audit_rows(ctx: RunContext, rows: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    spec = ctx.spec
    col = spec.data.input_column
    findings: list[dict[str, Any]] = []
    quarantine: list[pd.DataFrame] = []
    blocking: list[str] = []

    def finding(check: str, severity: str, bad: pd.DataFrame, column: str, message: str, reason: str | None) -> None:
        findings.append({"check": check, "severity": severity, "count": int(len(bad)), "column": column,
                         "example_ids": _ids(bad), "partitions": _where(bad) if len(bad) else "",
                         "message": message})
        if reason is not None and len(bad):
            quarantine.append(bad.assign(reason=reason))
        if severity == "blocking":
            blocking.append(f"{check}: {message}; column {column!r}, {len(bad)} rows in {_where(bad)}, "
                            f"e.g. example ids {_ids(bad)}")

    n = len(rows)
    labels = rows["label"]
    missing = rows[labels.isna() | (labels.astype(str).str.strip() == "")]
    if len(missing):
        finding("missing_label", "warning", missing, "label", f"{len(missing)} rows have no label", "missing label")
    known = labels.isin(spec.labels)
    unknown = rows[~known & ~rows.index.isin(missing.index)]
    if len(unknown):
        frac = len(unknown) / max(n, 1)
        sev = "blocking" if frac > spec.data.max_unknown_label_fraction else "warning"
        finding("unknown_label", sev, unknown, "label",
                f"{len(unknown)} rows ({frac:.2%}) have labels outside the label set "
                f"{sorted(unknown['label'].astype(str).unique())[:5]} (allowed fraction "
                f"{spec.data.max_unknown_label_fraction:.2%})", "label not in the spec's label set")
    bad_input = pd.DataFrame()
    if col == "text":
        bad_input = rows[rows[col].isna() | (rows[col].astype(str).str.strip() == "")]
        if len(bad_input):
            finding("empty_text", "warning", bad_input, col, f"{len(bad_input)} rows have empty or whitespace-only "
                    "text", "empty or whitespace-only text")
    elif col == "image":
        sizes = rows[col].map(lambda v: len(v) if isinstance(v, bytes | bytearray) else 0)
        zero = rows[sizes == 0]
        if len(zero):
            finding("zero_size_image", "warning", zero, col, f"{len(zero)} rows have zero-size images",
                    "zero-size image")
        undecodable = []
        from PIL import Image

        for idx, v in rows[sizes > 0][col].items():
            try:
                Image.open(io.BytesIO(bytes(v))).verify()
            except (OSError, ValueError, SyntaxError):
                undecodable.append(idx)
        if undecodable:
            finding("undecodable_image", "warning", rows.loc[undecodable], col,
                    f"{len(undecodable)} images cannot be decoded", "undecodable image")
        bad_input = pd.concat([zero, rows.loc[undecodable]])
    dup_ids = rows[rows.sort_values(["labeled_at", "_row"]).duplicated("example_id", keep="first")
                   .reindex(rows.index, fill_value=False)]
    if len(dup_ids):
        finding("duplicate_example_id", "warning", dup_ids, "example_id",
                f"{len(dup_ids)} rows repeat an earlier example_id (the earliest labeled one is kept)",
                "duplicate example_id")
    quarantined_rows = set(pd.concat(quarantine)["_row"]) if quarantine else set()
    usable = rows[~rows["_row"].isin(quarantined_rows)]

    exact, near = input_keys(usable, col)
    exact_dup = pd.Series(exact).duplicated(keep=False).to_numpy()
    near_dup = pd.Series(near).duplicated(keep=False).to_numpy() & ~exact_dup
    test_days = sorted(usable["dt"].unique())[-spec.data.test_days:]
    is_test_day = usable["dt"].isin(test_days).to_numpy()
    key_df = pd.DataFrame({"k": near, "t": is_test_day})
    straddle = key_df.groupby("k")["t"].agg(["min", "max"])
    straddling = int(((straddle["min"] != straddle["max"])).sum())
    conflicting = pd.DataFrame({"k": exact, "label": usable["label"].to_numpy()}).groupby("k")["label"].nunique()
    findings.append({"check": "duplicates", "severity": "warning" if straddling else "info",
                     "count": int(exact_dup.sum() + near_dup.sum()), "column": col,
                     "example_ids": usable["example_id"][exact_dup | near_dup].head(5).tolist(), "partitions": "",
                     "message": f"{int(exact_dup.sum())} rows in exact-duplicate groups, {int(near_dup.sum())} more "
                                f"near-duplicates; {straddling} groups span the test days and earlier days (the "
                                f"split keeps each group on one side); {int((conflicting > 1).sum())} exact groups "
                                "carry conflicting labels"})
    counts = usable["label"].value_counts()
    class_counts = {lab: int(counts.get(lab, 0)) for lab in spec.labels}
    small = {k: v for k, v in class_counts.items() if v < spec.data.min_examples_per_class}
    if small:
        bad = usable[usable["label"].isin(small)]
        finding("class_too_small", "blocking", bad, "label",
                f"classes below min_examples_per_class {spec.data.min_examples_per_class}: {small}", None)
    present = [v for v in class_counts.values() if v > 0]
    imbalance = max(present) / min(present) if present else float("inf")
    slice_sizes = {f"{c}={v}": int(k) for c in spec.data.slice_columns for v, k in
                   usable[c].astype(str).value_counts().sort_index().items()}
    shift = label_shift(ctx, class_counts)
    if shift and shift["p_value"] < 0.01:
        findings.append({"check": "label_shift", "severity": "warning", "count": 0, "column": "label",
                         "example_ids": [], "partitions": "",
                         "message": f"label distribution shifted vs run {shift['previous_run']} (TVD "
                                    f"{shift['tvd']:.3f}, chi-square p {shift['p_value']:.2g})"})
    report = {
        "run_id": ctx.run_id, "total_rows": int(n), "usable_rows": int(len(usable)),
        "quarantined_rows": int(len(quarantined_rows)), "blocking": bool(blocking), "blocking_messages": blocking,
        "findings": findings, "class_counts": class_counts, "imbalance_ratio": imbalance,
        "slice_sizes": slice_sizes, "label_shift": shift, "test_days": [str(d) for d in test_days],
    }
    q = pd.concat(quarantine, ignore_index=True) if quarantine else rows.head(0).assign(reason="")
    return report, q


def label_shift(ctx: RunContext, class_counts: dict[str, int]) -> dict[str, Any] | None:
    """Total variation distance and chi-square test against the previous snapshot of this model."""
    from scipy.stats import chi2_contingency

    me = ctx.read_json("snapshot/manifest.json")["logical_date"]
    best: tuple[str, str, dict[str, Any]] | None = None
    prefix = f"runs/{ctx.spec.name}/"
    for key in ctx.store.list(prefix):
        if not key.endswith("/snapshot/manifest.json") or key.startswith(ctx.prefix + "/"):
            continue
        m = json.loads(ctx.store.get_bytes(key))
        if m.get("logical_date", "") < me and (best is None or m["logical_date"] > best[0]):
            best = (m["logical_date"], key.split("/")[2], m)
    if best is None:
        return None
    prev = best[2]["rows_per_label"]
    labels = list(class_counts)
    a = np.array([class_counts[k] for k in labels], float)
    b = np.array([prev.get(k, 0) for k in labels], float)
    if a.sum() == 0 or b.sum() == 0:
        return None
    tvd = 0.5 * np.abs(a / a.sum() - b / b.sum()).sum()
    keep = (a + b) > 0
    p = float(chi2_contingency(np.stack([a[keep], b[keep]]))[1]) if keep.sum() > 1 else 1.0
    return {"previous_run": best[1], "previous_logical_date": best[0], "tvd": float(tvd), "p_value": p}


def run_audit(ctx: RunContext) -> str:
    rows = load_snapshot_rows(ctx)
    report, quarantine = audit_rows(ctx, rows)
    buf = io.BytesIO()
    quarantine.drop(columns=[c for c in ("image",) if c in quarantine]).to_parquet(buf, index=False)
    ctx.store.put_bytes(ctx.key("audit/quarantine.parquet"), buf.getvalue())
    ctx.write_json("audit/report.json", report)
    if report["blocking"]:
        raise BlockingAuditFinding(f"run {ctx.run_id}: blocking data audit findings:\n  "
                                   + "\n  ".join(report["blocking_messages"]))
    logger.info("audit: %d usable rows, %d quarantined", report["usable_rows"], report["quarantined_rows"])
    return ctx.uri("audit/report.json")
