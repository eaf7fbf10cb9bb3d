"""`tl split`: deterministic, group-aware, stratified train / validation / calibration / test.

Test = the newest ``test_days`` labeling days (production-like). Rows sharing a group_id, an exact input
or a near-duplicate key (normalised text; image dHash within ``near_duplicate_bits``) form one cluster
(connected components, so chains join too), and a cluster never straddles splits: it goes wholly to the
side of its newest member. The other clusters are stratified by their majority label and ordered by a
seeded hash of their smallest example id; within each label, validation and calibration take their
shares of rows (by each cluster's midpoint), the rest is train. Same snapshot, audit and seed = same split.
For image_uri specs the images are read through the snapshot's image list (confined to the data root and
verified), and ``examples.parquet`` carries each image's recorded ``image_sha256`` for the steps after.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from tl_core.data.audit import QUARANTINE, REPORT, json_bytes, load_snapshot_rows, newest_days
from tl_core.data.dedup import row_clusters
from tl_core.data.partitions import ImageReader
from tl_core.data.snapshot import read_image_hashes, read_manifest
from tl_core.errors import BlockingAuditFinding, DataError, NoSuchKey
from tl_core.runs import SPLITS, RunContext

logger = logging.getLogger(__name__)

IMAGE_SHA256 = "image_sha256"  # examples column (image_uri specs): the sha256 the snapshot recorded per image


def _seeded_unit(values: pd.Series, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per value, a pure function of (seed, value)."""
    key = hashlib.sha256(f"tl-split:{seed}".encode()).hexdigest()[:16]
    h = pd.util.hash_pandas_object(values.astype(str), index=False, hash_key=key).to_numpy()
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_splits(rows: pd.DataFrame, column: str, test_days: int, val_frac: float, cal_frac: float,
                  seed: int, near_bits: int, images: ImageReader | None = None) -> np.ndarray:
    """Split name per row (object array, row order). Needs example_id, label, dt, the input column and
    optionally group_id; image_uri inputs are read through ``images`` (confined, verified)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=object)
    cid, _, _ = row_clusters(rows, column, near_bits, images)
    dt = rows["dt"].astype(str).to_numpy()
    test_set = newest_days(rows["dt"], test_days)
    frame = pd.DataFrame({"cid": cid, "dt": dt, "label": rows["label"].astype(str).to_numpy(),
                          "example_id": rows["example_id"].astype(str).to_numpy()})
    newest = frame.groupby("cid")["dt"].max()
    is_test = frame["cid"].map(newest.isin(test_set)).to_numpy(dtype=bool)
    split = np.full(len(rows), "train", dtype=object)
    split[is_test] = "test"
    rest = frame[~is_test]
    if len(rest):
        # Majority label per cluster (ties: the alphabetically first label), anchor = smallest example id.
        counts = rest.groupby(["cid", "label"]).size().rename("n").reset_index()
        counts = counts.sort_values(["cid", "n", "label"], ascending=[True, False, True], kind="stable")
        meta = counts.drop_duplicates("cid").set_index("cid")[["label"]]
        meta["anchor"] = rest.groupby("cid")["example_id"].min()
        meta["size"] = rest.groupby("cid").size()
        meta["u"] = _seeded_unit(meta["anchor"], seed)
        meta = meta.sort_values(["label", "u", "anchor"], kind="stable")
        total = meta.groupby("label")["size"].transform("sum")
        start = meta.groupby("label")["size"].cumsum() - meta["size"]
        mid = (start + meta["size"] / 2) / total
        meta["split"] = np.where(mid < val_frac, "validation", np.where(mid < val_frac + cal_frac, "calibration",
                                                                         "train"))
        split[~is_test] = rest["cid"].map(meta["split"]).to_numpy()
    return split


def split_hash(ids: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(ids, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _usable_rows(ctx: RunContext) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The snapshot's rows minus the audit's quarantine (checked against the report), and the manifest."""
    manifest = read_manifest(ctx)
    try:
        report = ctx.read_json(REPORT)
        quarantine = pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key(QUARANTINE))),
                                     columns=["partition", "row_in_file"])
    except NoSuchKey:
        raise DataError(f"run {ctx.run_id}: no {REPORT} / {QUARANTINE}; run `tl audit` before `tl split`") from None
    if report.get("snapshot_hash") != manifest["content_hash"]:
        raise DataError(f"run {ctx.run_id}: the audit report is for snapshot {report.get('snapshot_hash')}, the "
                        f"manifest says {manifest['content_hash']}; re-run `tl audit`")
    if report.get("blocking"):
        raise BlockingAuditFinding(f"run {ctx.run_id}: the audit has blocking findings, refusing to split:\n  "
                                   + "\n  ".join(report.get("blocking_messages", [])))
    rows = load_snapshot_rows(ctx, manifest)
    bad = pd.MultiIndex.from_frame(quarantine.astype({"partition": str, "row_in_file": np.int64}))
    here = pd.MultiIndex.from_arrays([rows["partition"].astype(str), rows["row_in_file"].astype(np.int64)])
    usable = rows[~here.isin(bad)].reset_index(drop=True)
    if len(usable) != report["usable_rows"]:
        raise DataError(f"run {ctx.run_id}: {len(usable)} usable rows after removing the quarantine, the audit "
                        f"report says {report['usable_rows']}; re-run `tl audit`")
    return usable, manifest


def run_split(ctx: RunContext) -> str:
    """Write split/examples.parquet and split/split.json; returns the URI of split.json."""
    d = ctx.spec.data
    usable, manifest = _usable_rows(ctx)
    if usable.empty:
        raise DataError(f"run {ctx.run_id}: no usable rows left after the audit")
    hashes = read_image_hashes(ctx, manifest)
    reader = ImageReader(d.root, hashes) if hashes is not None else None
    usable["split"] = assign_splits(usable, d.input_column, d.test_days, d.validation_fraction,
                                    d.calibration_fraction, d.split_seed, d.near_duplicate_bits, reader)
    if hashes is not None:  # what training must find when it reads each image
        usable[IMAGE_SHA256] = [hashes.get(str(u).strip()) for u in usable[d.input_column].tolist()]
    counts = usable["split"].value_counts()
    empty = [s for s in SPLITS if counts.get(s, 0) == 0]
    if empty:
        raise DataError(
            f"run {ctx.run_id}: split(s) {empty} would be empty ({ {s: int(counts.get(s, 0)) for s in SPLITS} } "
            f"of {len(usable)} usable rows over {usable['dt'].nunique()} days; data.test_days {d.test_days}, "
            f"validation_fraction {d.validation_fraction}, calibration_fraction {d.calibration_fraction}): "
            "widen data.window_days or lower data.test_days")
    keep = ["example_id", "label", "labeled_at", "dt", "split", d.input_column,
            *([IMAGE_SHA256] if IMAGE_SHA256 in usable else []),
            *(["group_id"] if "group_id" in usable else []), *d.slice_columns]
    out = usable[list(dict.fromkeys(keep))].copy()
    out["dt"] = out["dt"].astype(str)
    out = out.sort_values(["split", "dt", "example_id"], kind="stable").reset_index(drop=True)
    buf = io.BytesIO()
    out.to_parquet(buf, index=False)
    ctx.store.put_bytes(ctx.key("split/examples.parquet"), buf.getvalue())
    ids = {s: sorted(out.loc[out["split"] == s, "example_id"].astype(str).tolist()) for s in SPLITS}
    per_label = {s: {k: int(v) for k, v in out.loc[out["split"] == s, "label"].value_counts().sort_index().items()}
                 for s in SPLITS}
    payload = {
        "schema_version": 1, "split_hash": split_hash(ids), "snapshot_hash": manifest["content_hash"],
        "seed": d.split_seed, "test_days": newest_days(usable["dt"], d.test_days),
        "counts": {s: len(v) for s, v in ids.items()}, "label_counts": per_label, "example_ids": ids,
    }
    ctx.store.put_bytes(ctx.key("split/split.json"), json_bytes(payload))
    uri = ctx.uri("split/split.json")
    logger.info("split: %s (hash %s)", payload["counts"], payload["split_hash"][:12])
    return uri
