"""`tl split`: deterministic, group-aware, stratified train / validation / calibration / test.

Test = the newest ``test_days`` labeling days (production-like). Rows sharing a group_id, an exact input or a near-
duplicate cluster (tl_core.data.dedup: normalised text; images by a confirmed perceptual hash, leader clusters that
never chain) form one split cluster (connected components over those keys), and a cluster never straddles splits: it
goes wholly to the side of its newest member. The other clusters are stratified by their majority label and ordered
by a seeded hash of their smallest example id; within each label, validation and calibration take their shares of
rows (by each cluster's midpoint), the rest is train. Same snapshot, audit and seed = same split. For image_uri
specs the images are read through the snapshot's image list (confined to the data root and verified), and
``examples.parquet`` carries each image's recorded ``image_sha256`` for the steps after.

``split/report.json`` says what the split achieved against what it was asked for (rows and share per split,
per class) and fails closed: the split is refused (BlockingAuditFinding, after the report is written, before
any example file) when clusters pulled into test raise the test share by more than ``data.split_tolerance``
(naming how many clusters, the largest's size and example ids), when a class has no rows in a split of
``data.split_required_classes``, or when a slice of ``gate.required_slices`` has no test rows.
A refusal (these, or an empty split) that would not happen were the rows of the inputs under more than one label
free to go to any split is blamed on them: "N rows of one input carry K different labels (...): fix the labels
(see the audit's conflicting_labels)" instead of advice about the window or the tolerance.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from tl_core.artifacts import AuditReport, SnapshotManifest, SplitCheck, SplitReport
from tl_core.data.audit import (
    QUARANTINE,
    REPORT,
    conflict_text,
    describe_conflict,
    label_conflicts,
    load_snapshot_rows,
    newest_days,
)
from tl_core.data.dedup import NearRule, row_clusters
from tl_core.data.partitions import ImageReader
from tl_core.data.snapshot import read_image_hashes, read_manifest
from tl_core.errors import BlockingAuditFinding, DataError, NoSuchKey
from tl_core.runs import SPLITS, ArtifactMissing, RunContext, artifact_rel

SPLIT_REPORT = artifact_rel(SplitCheck)

logger = logging.getLogger(__name__)

IMAGE_SHA256 = "image_sha256"  # examples column (image_uri specs): the sha256 the snapshot recorded per image


def _seeded_unit(values: pd.Series, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per value, a pure function of (seed, value)."""
    key = hashlib.sha256(f"tl-split:{seed}".encode()).hexdigest()[:16]
    h = pd.util.hash_pandas_object(values.astype(str), index=False, hash_key=key).to_numpy()
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign_splits(rows: pd.DataFrame, column: str, test_days: int, val_frac: float, cal_frac: float,
                  seed: int, near: NearRule | int, images: ImageReader | None = None) -> np.ndarray:
    """Split name per row (object array, row order). Needs example_id, label, dt, the input column and
    optionally group_id; image_uri inputs are read through ``images`` (confined, verified). ``near``: the
    near-duplicate rule (an int is the 64-bit hash distance with the other thresholds at their defaults)."""
    return plan_split(rows, column, test_days, val_frac, cal_frac, seed, near, images)[0]


def plan_split(rows: pd.DataFrame, column: str, test_days: int, val_frac: float, cal_frac: float, seed: int,
               near: NearRule | int, images: ImageReader | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(split per row, split cluster id per row, whether the row is on the newest ``test_days`` days)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    rule = near if isinstance(near, NearRule) else NearRule(bits=near)
    cid, _, _ = row_clusters(rows, column, rule, images)
    split, on_test_days = assign_clusters(rows, cid, test_days, val_frac, cal_frac, seed)
    return split, cid, on_test_days


def assign_clusters(rows: pd.DataFrame, cid: np.ndarray, test_days: int, val_frac: float, cal_frac: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(split per row, whether the row is on the newest ``test_days`` days) for given split clusters: a cluster
    goes wholly to the side of its newest member; the others are stratified as the module docstring says."""
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
        _every_label_everywhere(meta, (val_frac, cal_frac))
        split[~is_test] = rest["cid"].map(meta["split"]).to_numpy()
    return split, np.isin(dt, test_set)


def _every_label_everywhere(meta: pd.DataFrame, fractions: tuple[float, float]) -> None:
    """With few, large clusters a label's midpoints can skip validation or calibration: then its first train
    cluster (seeded order) moves there, as long as train keeps at least one cluster (in place)."""
    for name, frac in zip(("validation", "calibration"), fractions, strict=True):
        if frac <= 0:
            continue
        for _, g in meta.groupby("label", sort=False):
            train = g.index[g["split"] == "train"]
            if (g["split"] == name).any() or len(train) < 2:
                continue
            meta.loc[train[0], "split"] = name


class ConflictCause(NamedTuple):
    """Inputs that carry more than one label, and the split their rows would get if each row were free to go
    to any split: a refusal the free split does not have is caused by those inputs."""

    advice: str
    """'N rows of one input carry K different labels (...): fix the labels (see the audit's conflicting_labels)'"""
    free_split: np.ndarray


def conflict_cause(rows: pd.DataFrame, cid: np.ndarray, exact: np.ndarray, spec: Any) -> ConflictCause | None:
    """The inputs (``exact`` keys) of ``rows`` under more than one label (None: none) and the split the clusters
    ``cid`` give with each of their rows made a cluster of its own."""
    d = spec.data
    groups = label_conflicts(exact, rows["label"])
    if not groups:
        return None
    free = cid.copy()
    pos = np.concatenate(groups)
    free[pos] = int(cid.max()) + 1 + np.arange(len(pos))
    free_split, _ = assign_clusters(rows, free, d.test_days, d.validation_fraction, d.calibration_fraction,
                                    d.split_seed)
    text = conflict_text(describe_conflict(rows, groups[0], d.input_column))
    more = f" and {len(groups) - 1} more input(s) carry more than one label" if len(groups) > 1 else ""
    return ConflictCause(f"{text}{more}: fix the labels (see the audit's conflicting_labels)", free_split)


def _shares(split: np.ndarray) -> dict[str, dict[str, float]]:
    n = max(len(split), 1)
    return {s: {"rows": int((split == s).sum()), "share": float((split == s).sum()) / n} for s in SPLITS}


def _pulled_into_test(rows: pd.DataFrame, split: np.ndarray, cid: np.ndarray, on_test_days: np.ndarray
                      ) -> dict[str, Any]:
    """The clusters that test took from earlier days: how many, their rows, the largest and its example ids."""
    pulled = (split == "test") & ~on_test_days
    clusters = pd.Series(cid[pulled]).unique()
    if not len(clusters):
        return {"clusters": 0, "rows": 0, "largest_cluster": 0, "largest_cluster_ids": []}
    sizes = pd.Series(cid[np.isin(cid, clusters)]).value_counts()
    ids = sorted(rows["example_id"].astype(str).to_numpy()[cid == sizes.index[0]].tolist())
    return {"clusters": int(len(clusters)), "rows": int(pulled.sum()), "largest_cluster": int(sizes.iloc[0]),
            "largest_cluster_ids": ids[:5]}


def split_report(rows: pd.DataFrame, split: np.ndarray, cid: np.ndarray, on_test_days: np.ndarray,
                 spec: Any, cause: ConflictCause | None = None) -> SplitCheck:
    """Achieved against requested (rows and share per split, per class) and the findings; ``blocking`` lists
    the messages that refuse the split (a refusal that ``cause``'s free split does not have names the input
    under several labels instead of the window or the tolerance)."""
    d = spec.data
    requested_test = float(on_test_days.mean()) if len(rows) else 0.0
    rest = 1.0 - requested_test
    requested = {"test": requested_test, "validation": rest * d.validation_fraction,
                 "calibration": rest * d.calibration_fraction,
                 "train": rest * (1.0 - d.validation_fraction - d.calibration_fraction)}
    labels = rows["label"].astype(str).to_numpy()
    per_class = {lab: {s: int(((labels == lab) & (split == s)).sum()) for s in SPLITS} for lab in spec.labels}
    achieved = _shares(split)
    pulled = _pulled_into_test(rows, split, cid, on_test_days)
    blocking: list[str] = []
    excess = achieved["test"]["share"] - requested_test
    if excess > d.split_tolerance:
        free_excess = float((cause.free_split == "test").mean()) - requested_test if cause else excess
        advice = f": {cause.advice}" if cause and free_excess <= d.split_tolerance else \
            " (look at the audit's near_duplicates / group_id, or raise the tolerance)"
        blocking.append(
            f"test_share: test holds {achieved['test']['rows']} of {len(rows)} rows ({achieved['test']['share']:.1%}), "
            f"the newest data.test_days {d.test_days} days hold {requested_test:.1%}: {pulled['clusters']} duplicate/"
            f"group clusters with rows on earlier days were pulled in ({pulled['rows']} rows), the largest has "
            f"{pulled['largest_cluster']} rows, e.g. example ids {pulled['largest_cluster_ids']}; that is "
            f"{excess:.1%} more than requested, above data.split_tolerance {d.split_tolerance:.0%}{advice}")
    blocking += _class_and_slice_findings(rows, split, per_class, spec, cause)
    return SplitCheck(requested=requested, achieved=achieved, per_class=per_class, pulled_into_test=pulled,
                      blocking=blocking)


def _class_and_slice_findings(rows: pd.DataFrame, split: np.ndarray, per_class: dict[str, dict[str, int]],
                              spec: Any, cause: ConflictCause | None = None) -> list[str]:
    out = []
    labels = rows["label"].astype(str).to_numpy()
    for lab, counts in per_class.items():
        total = sum(counts.values())
        for s in spec.data.split_required_classes:
            if total and counts[s] == 0:
                freed = cause is not None and bool(((labels == lab) & (cause.free_split == s)).any())
                advice = f": {cause.advice}" if cause is not None and freed else \
                    " (more days in data.window_days, fewer data.test_days, or more rows of this class)"
                out.append(f"class_missing: class {lab!r} has no {s} rows ({total} usable rows: {counts}); "
                           f"data.split_required_classes {list(spec.data.split_required_classes)} needs it in {s}"
                           f"{advice}")
    test = rows[split == "test"]
    for name in spec.gate.required_slices:
        col, _, value = name.partition("=")
        present = col in test and bool((test[col].astype(str) == value).any())
        if not present:
            out.append(f"required_slice_missing: gate.required_slices names {name!r}, which has no test rows "
                       f"({len(test)} test rows); the gate would fail on it")
    return out


def split_hash(ids: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(ids, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _usable_rows(ctx: RunContext) -> tuple[pd.DataFrame, SnapshotManifest]:
    """The snapshot's rows minus the audit's quarantine (checked against the report), and the manifest."""
    manifest = read_manifest(ctx)
    try:
        report = ctx.read(AuditReport)
        quarantine = pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key(QUARANTINE))),
                                     columns=["partition", "row_in_file"])
    except (ArtifactMissing, NoSuchKey):
        raise DataError(f"run {ctx.run_id}: no {REPORT} / {QUARANTINE}; run `tl audit` before `tl split`") from None
    if report.snapshot_hash != manifest.content_hash:
        raise DataError(f"run {ctx.run_id}: the audit report is for snapshot {report.snapshot_hash}, the "
                        f"manifest says {manifest.content_hash}; re-run `tl audit`")
    if report.blocking:
        raise BlockingAuditFinding(f"run {ctx.run_id}: the audit has blocking findings, refusing to split:\n  "
                                   + "\n  ".join(report.blocking_messages))
    rows = load_snapshot_rows(ctx, manifest)
    bad = pd.MultiIndex.from_frame(quarantine.astype({"partition": str, "row_in_file": np.int64}))
    here = pd.MultiIndex.from_arrays([rows["partition"].astype(str), rows["row_in_file"].astype(np.int64)])
    usable = rows[~here.isin(bad)].reset_index(drop=True)
    if len(usable) != report.usable_rows:
        raise DataError(f"run {ctx.run_id}: {len(usable)} usable rows after removing the quarantine, the audit "
                        f"report says {report.usable_rows}; re-run `tl audit`")
    return usable, manifest


def _refuse_empty_splits(ctx: RunContext, usable: pd.DataFrame, cause: ConflictCause | None) -> None:
    """DataError when a split would be empty, naming the input under several labels when it is the cause (its
    free split has every split that is empty), else advising a wider window."""
    d = ctx.spec.data
    counts = usable["split"].value_counts()
    empty = [s for s in SPLITS if counts.get(s, 0) == 0]
    if not empty:
        return
    advice = "widen data.window_days or lower data.test_days"
    if cause is not None and all(bool((cause.free_split == s).any()) for s in empty):
        advice = cause.advice
    raise DataError(
        f"run {ctx.run_id}: split(s) {empty} would be empty ({ {s: int(counts.get(s, 0)) for s in SPLITS} } "
        f"of {len(usable)} usable rows over {usable['dt'].nunique()} days; data.test_days {d.test_days}, "
        f"validation_fraction {d.validation_fraction}, calibration_fraction {d.calibration_fraction}): {advice}")


def run_split(ctx: RunContext) -> str:
    """Write split/examples.parquet and split/split.json; returns the URI of split.json."""
    d = ctx.spec.data
    usable, manifest = _usable_rows(ctx)
    if usable.empty:
        raise DataError(f"run {ctx.run_id}: no usable rows left after the audit")
    hashes = read_image_hashes(ctx, manifest)
    reader = ImageReader(d.root, hashes) if hashes is not None else None
    cid, exact, _ = row_clusters(usable, d.input_column, NearRule.of(d), reader)
    split, on_test_days = assign_clusters(usable, cid, d.test_days, d.validation_fraction, d.calibration_fraction,
                                          d.split_seed)
    cause = conflict_cause(usable, cid, exact, ctx.spec)
    usable["split"] = split
    if hashes is not None:  # what training must find when it reads each image
        usable[IMAGE_SHA256] = [hashes.get(str(u).strip()) for u in usable[d.input_column].tolist()]
    _refuse_empty_splits(ctx, usable, cause)
    report = split_report(usable, split, cid, on_test_days, ctx.spec, cause)
    ctx.write(report)
    if report.blocking:
        raise BlockingAuditFinding(f"run {ctx.run_id}: the split degenerates, refusing it (report "
                                   f"{ctx.uri(SPLIT_REPORT)}):\n  " + "\n  ".join(report.blocking))
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
    payload = SplitReport(
        split_hash=split_hash(ids), snapshot_hash=manifest.content_hash, seed=d.split_seed,
        test_days=newest_days(usable["dt"], d.test_days), counts={s: len(v) for s, v in ids.items()},
        label_counts=per_label, example_ids=ids, achieved=report.achieved, requested=report.requested)
    uri = ctx.write(payload)
    logger.info("split: %s (hash %s)", payload.counts, payload.split_hash[:12])
    return uri
