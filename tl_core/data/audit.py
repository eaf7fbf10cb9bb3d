"""`tl audit`: check the snapshot's rows before any training.

Every check appears in ``audit/report.json`` as a finding with a severity: ``info`` (nothing wrong, or a
figure), ``warning`` (rows quarantined or something to look at; the run continues) or ``blocking`` (the
run stops with a message naming partition, column, count and up to five example ids - after the report
and the quarantine file are written). Rows excluded from training go to ``audit/quarantine.parquet``
with their ``reason`` (and their file ``partition`` and ``row_in_file``), so nothing is dropped silently.

Checks: empty_window, missing_example_id, missing_labeled_at, invalid_utf8, labeled_at_timezone,
missing_label, unknown_label, empty_text | zero_size_image / undecodable_image / oversized_image /
unreadable_image / image_uri_outside_root, duplicate_example_id, exact_duplicates, conflicting_labels, near_duplicates,
duplicates_straddle_test, class_too_small, class_imbalance, slice_sizes, label_shift. ``report.json`` is
strict JSON (no NaN).

``conflicting_labels`` (one input - exact duplicate rows - under more than one label) names each input (a short
excerpt), its rows per label and example ids, and is a warning, not blocking: a short generic input ("hi",
"see attached") under several labels is ordinary noise in production labels, no spec field could tune a
spec-free rule, and the run already fails closed where such a cluster matters: the split refuses a split it
degenerates and names the input and its labels (tl_core.data.split), and the label-issue step
(data.label_issues) judges the labels themselves.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tl_core.artifacts import ArtifactError, AuditReport, SnapshotManifest, parse_artifact
from tl_core.data.dedup import (
    OUTSIDE_ROOT,
    OVERSIZED,
    UNDECODABLE,
    UNREADABLE,
    ZERO_SIZE,
    ImageHashes,
    NearRule,
    cluster_ids,
    describe_row,
    group_keys,
    image_keys,
    near_image_clusters,
    text_near_keys,
)
from tl_core.data.partitions import (
    MAX_IMAGE_PIXELS,
    ImageReader,
    data_store,
    normalise_table,
    read_partition_bytes,
    read_table,
    text_exact_keys,
)
from tl_core.data.snapshot import MANIFEST, read_image_hashes, read_manifest
from tl_core.errors import BlockingAuditFinding, NoSuchKey, TLError
from tl_core.runs import RunContext, artifact_rel
from tl_core.store import key_safe

logger = logging.getLogger(__name__)

REPORT = artifact_rel(AuditReport)
QUARANTINE = "audit/quarantine.parquet"
INVALID_UTF8 = "_invalid_utf8"  # internal row column: the columns whose value was not valid UTF-8
LABELED_AT_TZ = "_labeled_at_tz"  # internal row column: labeled_at's timezone in the row's file ("" = naive)
INTERNAL = (INVALID_UTF8, LABELED_AT_TZ)

REASONS = {
    "missing_label": "missing label",
    "unknown_label": "label not in the spec's label set",
    "empty_text": "empty or whitespace-only text",
    "zero_size_image": "zero-size image",
    "undecodable_image": "undecodable image",
    "unreadable_image": "image_uri cannot be read",
    "duplicate_example_id": "duplicate example_id",
    "missing_example_id": "missing example_id",
    "missing_labeled_at": "missing labeled_at",
    "invalid_utf8": "invalid UTF-8",
    "image_uri_outside_root": "image_uri outside the data root",
    "oversized_image": "image above the pixel limit",
}


def _file_frame(table: pa.Table, key: str, dt: str) -> pd.DataFrame:
    """One partition file as rows: normalised (:func:`normalise_table`), with dt, partition, row_in_file and
    the internal columns naming invalid UTF-8 columns and labeled_at's original timezone per row."""
    table, bad_utf8, tz = normalise_table(table)
    df = table.to_pandas()
    if "labeled_at" in df and isinstance(df["labeled_at"].dtype, pd.DatetimeTZDtype):  # pandas metadata re-adds tz
        df["labeled_at"] = df["labeled_at"].dt.tz_convert("UTC").dt.tz_localize(None)
    df["dt"] = dt
    df["partition"] = key
    df["row_in_file"] = np.arange(len(df), dtype=np.int64)
    marks = np.full(len(df), "", dtype=object)
    for col, mask in bad_utf8.items():
        marks[mask] = np.where(marks[mask] == "", col, marks[mask] + "," + col)
    df[INVALID_UTF8] = marks
    df[LABELED_AT_TZ] = tz or ""
    return df


def load_snapshot_rows(ctx: RunContext, manifest: SnapshotManifest | None = None) -> pd.DataFrame:
    """Every row of the snapshot's files (sha256 verified against the manifest), in manifest order, with
    ``dt``, ``partition`` (the file key) and ``row_in_file`` added (and the internal columns of
    :data:`INTERNAL`). Missing example ids stay missing (None); every other id is a str."""
    manifest = manifest or read_manifest(ctx)
    store = data_store(ctx.spec)
    frames = []
    for p in manifest.partitions:
        for f in p.files:
            data, _ = read_partition_bytes(store, f.key, f.sha256)
            frames.append(_file_frame(read_table(data, f.key), f.key, p.dt))
            del data
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["example_id", "label", "labeled_at", "dt", "partition", "row_in_file", *INTERNAL])
    for c in ("dt", "partition", *INTERNAL):
        rows[c] = rows[c].astype(str).astype("category")
    ids = rows["example_id"]
    missing = ids.isna().to_numpy()
    rows["example_id"] = pd.Series(np.where(missing, None, ids.astype(object).astype(str)), index=rows.index,
                                   dtype=object)
    if "labeled_at" in rows and not pd.api.types.is_datetime64_any_dtype(rows["labeled_at"]):
        rows["labeled_at"] = pd.to_datetime(rows["labeled_at"])
    return rows


def newest_days(dts: pd.Series, n: int) -> list[str]:
    """The newest ``n`` labeling days (dt strings) present."""
    return sorted(str(d) for d in pd.unique(dts.astype(str)))[-n:]


def _where(bad: pd.DataFrame) -> list[dict[str, Any]]:
    counts = bad["partition"].astype(str).value_counts(sort=False).sort_index()
    return [{"partition": k, "count": int(v)} for k, v in counts.items()]


def _where_text(bad: pd.DataFrame) -> str:
    parts = _where(bad)
    shown = ", ".join(f"{p['partition']} ({p['count']})" for p in parts[:5])
    return shown + (f" and {len(parts) - 5} more" if len(parts) > 5 else "")


class _Audit:
    def __init__(self, ctx: RunContext, rows: pd.DataFrame, images: ImageReader | None = None) -> None:
        self.ctx = ctx
        self.rows = rows
        self.images = images
        self.findings: list[dict[str, Any]] = []
        self.blocking: list[str] = []
        self.reason = np.full(len(rows), "", dtype=object)
        self.image_exact: np.ndarray | None = None

    def add(self, check: str, severity: str, mask: np.ndarray | None, column: str, message: str,
            quarantine: bool = False, count: int | None = None, **extra: Any) -> None:
        bad = self.rows[mask] if mask is not None else self.rows.iloc[:0]
        n = int(len(bad)) if count is None else count
        ids = [None if pd.isna(x) else str(x) for x in bad["example_id"].head(5).tolist()]
        self.findings.append({"check": check, "severity": severity if n or severity == "blocking" else "info",
                              "count": n, "column": column, "example_ids": ids, "partitions": _where(bad),
                              "message": message, **extra})
        if quarantine and mask is not None and mask.any():
            r = REASONS[check]
            cur = self.reason[mask]
            self.reason[mask] = np.where(cur == "", r, cur + "; " + r)
        if severity == "blocking":
            where = _where_text(bad) if len(bad) else "the whole window"
            self.blocking.append(f"{check}: {message}; partition(s) {where}, column {column!r}, count {n}, "
                                 f"example ids {ids}")

    @property
    def quarantined(self) -> np.ndarray:
        return np.asarray(self.reason != "", dtype=bool)


def _label_checks(a: _Audit) -> None:
    spec, rows = a.ctx.spec, a.rows
    label = rows["label"]
    missing = (label.isna() | (label.fillna("").astype(str).str.strip() == "")).to_numpy()
    a.add("missing_label", "warning", missing, "label", f"{int(missing.sum())} rows have no label", quarantine=True)
    unknown = ~label.isin(spec.labels).to_numpy() & ~missing
    frac = float(unknown.sum()) / max(len(rows), 1)
    allowed = spec.data.max_unknown_label_fraction
    values = sorted(label[unknown].astype(str).unique().tolist())
    a.add("unknown_label", "blocking" if frac > allowed else "warning", unknown, "label",
          f"{int(unknown.sum())} rows ({frac:.2%}) have labels outside the label set, e.g. {values[:5]} "
          f"(allowed: at most {allowed:.2%} (data.max_unknown_label_fraction); expected one of {spec.labels})",
          quarantine=True, fraction=frac, values=values[:20])


def _row_refs(rows: pd.DataFrame, mask: np.ndarray) -> list[dict[str, Any]]:
    """The first five flagged rows as (partition file, row in file): for rows without a usable example id."""
    bad = rows.loc[mask, ["partition", "row_in_file"]].head(5)
    return [{"partition": str(p), "row_in_file": int(r)} for p, r in zip(bad["partition"], bad["row_in_file"],
                                                                           strict=True)]


def _row_checks(a: _Audit) -> None:
    """Rows that cannot be used whatever their input: no example id, no labeled_at, invalid UTF-8."""
    rows = a.rows
    ids = rows["example_id"]
    no_id = (ids.isna() | (ids.fillna("").astype(str).str.strip() == "")).to_numpy()
    a.add("missing_example_id", "warning", no_id, "example_id", f"{int(no_id.sum())} rows have no example_id",
          quarantine=True, rows=_row_refs(rows, no_id))
    no_time = rows["labeled_at"].isna().to_numpy()
    a.add("missing_labeled_at", "warning", no_time, "labeled_at",
          f"{int(no_time.sum())} rows have no labeled_at (null / NaT)", quarantine=True, rows=_row_refs(rows, no_time))
    marks = rows[INVALID_UTF8].astype(str)
    bad = (marks != "").to_numpy()
    cols = sorted({c for m in marks[bad].unique() for c in str(m).split(",")})
    a.add("invalid_utf8", "warning", bad, ",".join(cols) or "text",
          f"{int(bad.sum())} rows have invalid UTF-8 in column(s) {cols} (the quarantine shows the bad bytes as "
          "U+FFFD)" if bad.any() else "every string value is valid UTF-8", quarantine=True,
          columns=cols, rows=_row_refs(rows, bad))
    _timezone_check(a)


def _timezone_check(a: _Audit) -> None:
    tz = a.rows[LABELED_AT_TZ].astype(str)
    aware = (tz != "").to_numpy()
    files = a.rows.loc[aware, "partition"].astype(str)
    zones = sorted(tz[aware].unique().tolist())
    if not aware.any():
        a.add("labeled_at_timezone", "info", None, "labeled_at", "labeled_at has no timezone in any file", count=0)
        return
    mixed = not aware.all()
    a.add("labeled_at_timezone", "warning" if mixed else "info", aware, "labeled_at",
          f"labeled_at is timezone-aware ({', '.join(zones)}) in {files.nunique()} file(s)"
          + (f" and naive in {a.rows.loc[~aware, 'partition'].astype(str).nunique()}: aware values are "
             "converted to UTC and naive ones are read as UTC" if mixed else "; converted to UTC"),
          timezones=zones)


def _input_checks(a: _Audit) -> ImageHashes | None:
    """Input checks; for images returns the dHashes per row (placeholders for bad rows)."""
    col, rows = a.ctx.spec.data.input_column, a.rows
    if col == "text":
        text = rows[col]
        empty = (text.isna() | (text.fillna("").astype(str).str.strip() == "")).to_numpy()
        a.add("empty_text", "warning", empty, col, f"{int(empty.sum())} rows have empty or whitespace-only text",
              quarantine=True)
        return None
    exact, hashes, status = image_keys(rows[col], a.images, describe_row(rows), NearRule.of(a.ctx.spec.data))
    a.add("zero_size_image", "warning", status == ZERO_SIZE, col,
          f"{int((status == ZERO_SIZE).sum())} rows have an empty or missing image", quarantine=True)
    a.add("undecodable_image", "warning", status == UNDECODABLE, col,
          f"{int((status == UNDECODABLE).sum())} images cannot be decoded", quarantine=True)
    a.add("oversized_image", "warning", status == OVERSIZED, col,
          f"{int((status == OVERSIZED).sum())} images have more than {MAX_IMAGE_PIXELS} pixels (read from the "
          "header; never decoded)", quarantine=True, max_pixels=MAX_IMAGE_PIXELS)
    if col == "image_uri":
        a.add("unreadable_image", "warning", status == UNREADABLE, col,
              f"{int((status == UNREADABLE).sum())} image URIs could not be read at snapshot time (missing object "
              "or access)", quarantine=True)
        outside = status == OUTSIDE_ROOT
        uris = [str(u) for u in rows.loc[outside, col].head(20).tolist()]
        a.add("image_uri_outside_root", "warning", outside, col,
              f"{int(outside.sum())} image URIs are not under the data root {a.ctx.spec.data.root} and were not "
              f"read (relative paths, other schemes, buckets or folders, '..'), e.g. {uris[:5]}", quarantine=True,
              values=uris)
    a.image_exact = exact
    return hashes


def _duplicate_ids(a: _Audit) -> None:
    rows = a.rows
    order = np.lexsort((np.arange(len(rows)), rows["labeled_at"].to_numpy()))
    ids = rows["example_id"].iloc[order]
    dup_sorted = (ids.duplicated(keep="first") & ids.notna()).to_numpy()
    dup = np.zeros(len(rows), dtype=bool)
    dup[order] = dup_sorted
    a.add("duplicate_example_id", "warning", dup, "example_id",
          f"{int(dup.sum())} rows repeat an example_id seen earlier (the earliest labeled row is kept)",
          quarantine=True)


def _cluster_sizes(rows: pd.DataFrame, cid: np.ndarray, members: np.ndarray) -> dict[str, Any]:
    """Count, largest size and the largest's first example ids of the clusters with more than one row."""
    sizes = pd.Series(cid[members]).value_counts()
    if sizes.empty:
        return {"clusters": 0, "largest_cluster": 0, "largest_cluster_ids": []}
    ids = rows["example_id"].to_numpy()[members][cid[members] == sizes.index[0]]
    return {"clusters": int(len(sizes)), "largest_cluster": int(sizes.iloc[0]),
            "largest_cluster_ids": [str(x) for x in ids[:5]]}


MAX_CONFLICTS_LISTED = 20  # conflicting_labels: the largest inputs listed in the finding


def label_conflicts(exact: np.ndarray, labels: pd.Series) -> list[np.ndarray]:
    """Row positions of each input (rows sharing an exact-input key) that carries more than one label, largest
    first (ties: the input whose first row comes first)."""
    if not len(exact):
        return []
    frame = pd.DataFrame({"k": exact, "label": labels.astype(str).to_numpy()})
    several = frame.groupby("k", sort=False)["label"].transform("nunique").to_numpy() > 1
    pos = np.flatnonzero(several)
    groups = [g.to_numpy() for _, g in pd.Series(pos).groupby(exact[pos], sort=False)]
    return sorted(groups, key=lambda p: (-len(p), int(p[0])))


def input_excerpt(value: Any, column: str) -> str:
    """A short, printable stand-in for one input value: the quoted text (80 characters at most), the image URI,
    or an image's size and sha256 prefix."""
    if column == "image" and isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return f"image of {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:12]}"
    text = "" if value is None else str(value)
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def describe_conflict(rows: pd.DataFrame, positions: np.ndarray, column: str) -> dict[str, Any]:
    """A LabelConflict (as a dict) of the rows at ``positions`` (one input): rows, rows per label (most first,
    then by name), the input's excerpt and the first five example ids in row order."""
    counts = pd.Series(rows["label"].astype(str).to_numpy()[positions]).value_counts()
    labels = dict(sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0])))
    ids = [str(x) for x in rows["example_id"].to_numpy()[positions][:5]]
    return {"rows": int(len(positions)), "labels": labels,
            "input": input_excerpt(rows[column].iloc[int(positions[0])], column), "example_ids": ids}


def conflict_text(conflict: dict[str, Any]) -> str:
    """'N rows of one input carry K different labels (a: 2, b: 1; input '...'; example ids [...])'."""
    shown = ", ".join(f"{k}: {v}" for k, v in conflict["labels"].items())
    return (f"{conflict['rows']} rows of one input carry {len(conflict['labels'])} different labels ({shown}; "
            f"input {conflict['input']}; example ids {conflict['example_ids']})")


def _conflict_check(a: _Audit, sub: pd.DataFrame, idx: np.ndarray, exact: np.ndarray) -> None:
    """Inputs that carry more than one label (a warning: the model sees one input with different answers, and
    the split keeps the input's rows in one split; see the module docstring for why it does not block)."""
    col = a.ctx.spec.data.input_column
    groups = label_conflicts(exact, sub["label"])
    mask = np.zeros(len(a.rows), dtype=bool)
    for positions in groups:
        mask[idx[positions]] = True
    listed = [describe_conflict(sub, p, col) for p in groups[:MAX_CONFLICTS_LISTED]]
    message = (f"{len(groups)} input(s) carry more than one label ({int(mask.sum())} rows); the largest: "
               f"{conflict_text(listed[0])}; training sees one input with different answers and the split keeps "
               "each input's rows together: fix the labels at the source" if groups else
               "no input carries more than one label")
    a.add("conflicting_labels", "warning", mask, col, message, conflicts=listed)


def _near_method(spec: Any) -> str:
    d = spec.data
    if d.input_column == "text":
        return "normalised text (case, punctuation and whitespace ignored)"
    return (f"perceptual hash as the model sees the image (transparency on the preprocessing background) within "
            f"{d.near_duplicate_bits} bits, confirmed by a 256-bit hash within {d.near_duplicate_confirm_bits} bits "
            f"and thumbnails within {d.near_duplicate_max_pixel_diff:g} grey levels; near-blank images only as "
            "exact duplicates; clusters are all within reach of one leader image (no chaining)")


def _duplicate_checks(a: _Audit, hashes: ImageHashes | None, test_days: list[str]) -> None:
    spec, rows = a.ctx.spec, a.rows
    col = spec.data.input_column
    idx = np.flatnonzero(~a.quarantined)
    needed = [c for c in ("example_id", "label", "dt", col, "group_id") if c in rows]
    sub = rows[needed] if len(idx) == len(rows) else rows[needed].iloc[idx]
    if col == "text":
        exact, near = text_exact_keys(sub[col]), text_near_keys(sub[col])
    else:
        if a.image_exact is None or hashes is None:
            raise RuntimeError("image keys are computed by the input checks before the duplicate checks")
        exact = a.image_exact[idx]
        near = near_image_clusters(hashes.take(idx), exact, NearRule.of(spec.data))
    n = len(sub)
    exact_cluster = cluster_ids(n, [exact])
    near_cluster = cluster_ids(n, [exact, near])
    in_exact = pd.Series(exact_cluster).duplicated(keep=False).to_numpy()
    in_near_any = pd.Series(near_cluster).duplicated(keep=False).to_numpy()
    in_near = in_near_any & ~in_exact
    conflicting = pd.DataFrame({"c": exact_cluster, "label": sub["label"].astype(str).to_numpy()}).groupby(
        "c")["label"].nunique()
    n_conflict = int((conflicting > 1).sum())
    mask = np.zeros(len(rows), dtype=bool)
    mask[idx[in_exact]] = True
    a.add("exact_duplicates", "warning" if n_conflict else "info", mask, col,
          f"{int(in_exact.sum())} rows share their exact input with another row "
          f"({int(pd.Series(exact_cluster[in_exact]).nunique())} groups, {n_conflict} with conflicting labels"
          f"{': see conflicting_labels' if n_conflict else ''})", conflicting_label_groups=n_conflict)
    _conflict_check(a, sub, idx, exact)
    mask = np.zeros(len(rows), dtype=bool)
    mask[idx[in_near]] = True
    stats = _cluster_sizes(sub, near_cluster, in_near_any)
    a.add("near_duplicates", "info", mask, col,
          f"{int(in_near.sum())} more rows are near-duplicates by {_near_method(spec)}; {stats['clusters']} clusters, "
          f"the largest has {stats['largest_cluster']} rows (e.g. {stats['largest_cluster_ids'][:3]})", **stats)
    _straddle_check(a, sub, idx, [exact, near], test_days)


def _straddle_check(a: _Audit, sub: pd.DataFrame, idx: np.ndarray, keys: list[np.ndarray],
                    test_days: list[str]) -> None:
    """A split cluster (group_id, exact or near duplicates) with members on the test days and before."""
    col = a.ctx.spec.data.input_column
    g = group_keys(sub)
    cid = cluster_ids(len(sub), keys + ([g] if g is not None else []))
    on_test = sub["dt"].astype(str).isin(test_days).to_numpy()
    span = pd.DataFrame({"c": cid, "t": on_test}).groupby("c")["t"].agg(["min", "max"])
    straddling = span.index[span["min"] != span["max"]]
    pulled = np.isin(cid, straddling)
    mask = np.zeros(len(a.rows), dtype=bool)
    mask[idx[pulled]] = True
    stats = _cluster_sizes(sub, cid, pulled)
    a.add("duplicates_straddle_test", "warning", mask, col,
          f"{len(straddling)} duplicate/group clusters have members both on the test days {test_days} and on "
          f"earlier days; the split moves each such cluster wholly to test (its newest side); the largest has "
          f"{stats['largest_cluster']} rows (e.g. {stats['largest_cluster_ids'][:3]})",
          **stats, pulled_rows=int((pulled & ~on_test).sum()))


def _class_checks(a: _Audit) -> dict[str, int]:
    spec, rows = a.ctx.spec, a.rows
    usable = rows[~a.quarantined]
    counts = usable["label"].astype(str).value_counts()
    class_counts = {lab: int(counts.get(lab, 0)) for lab in spec.labels}
    minimum = spec.data.min_examples_per_class
    small = {k: v for k, v in class_counts.items() if v < minimum}
    mask = ~a.quarantined & rows["label"].isin(list(small)).to_numpy()
    a.add("class_too_small", "blocking" if small else "info", mask, "label",
          f"classes below min_examples_per_class {minimum}: {small}" if small else
          f"every class has at least {minimum} usable examples", count=sum(small.values()), classes=small)
    present = [v for v in class_counts.values() if v > 0]
    ratio = max(present) / min(present) if present else None
    a.add("class_imbalance", "info", None, "label",
          f"largest / smallest class = {ratio:.2f}" if ratio is not None else "no usable rows",
          count=0, ratio=ratio)
    return class_counts


def _slice_sizes(a: _Audit, test_days: list[str]) -> dict[str, int]:
    spec, rows = a.ctx.spec, a.rows
    usable = rows[~a.quarantined]
    sizes: dict[str, int] = {}
    test_sizes: dict[str, int] = {}
    on_test = usable["dt"].astype(str).isin(test_days)
    # Named like the evaluation's slices: "col=value" and "a=x&b=y" for crosses.
    names = [(c, usable[c].astype(str)) for c in spec.data.slice_columns]
    for x, y in spec.data.slice_crosses:
        names.append(("", x + "=" + usable[x].astype(str) + "&" + y + "=" + usable[y].astype(str)))
    for col, values in names:
        label = values if not col else col + "=" + values
        for v, k in label.value_counts().sort_index().items():
            sizes[str(v)] = int(k)
        for v, k in label[on_test].value_counts().sort_index().items():
            test_sizes[str(v)] = int(k)
    small = {k: test_sizes.get(k, 0) for k in sizes if test_sizes.get(k, 0) < spec.gate.min_slice_size}
    a.add("slice_sizes", "warning" if small else "info", None, ",".join(spec.data.slice_columns),
          f"{len(small)} slices have fewer than gate.min_slice_size {spec.gate.min_slice_size} rows on the test "
          f"days: {dict(list(small.items())[:10])}" if small else f"{len(sizes)} slices, all large enough on the "
          "test days", count=len(small), sizes=sizes, test_sizes=test_sizes)
    return sizes


def previous_snapshot(ctx: RunContext, logical_date: str) -> tuple[str, SnapshotManifest] | None:
    """(run id, manifest) of the most recent other run of this model whose logical date is earlier."""
    best: tuple[str, str, SnapshotManifest] | None = None
    base = f"runs/{ctx.spec.name}/"
    for key in ctx.store.list(base):
        parts = key[len(base) :].split("/")
        if len(parts) != 3 or "/".join(parts[1:]) != MANIFEST or parts[0] == ctx.run_id:
            continue
        try:
            m = parse_artifact(SnapshotManifest, ctx.store.get_bytes(key), ctx.store.url(key))
        except (ArtifactError, NoSuchKey) as exc:
            logger.warning("ignoring unreadable snapshot manifest %s: %s", key, exc)
            continue
        d = m.logical_date
        if d and d < logical_date and (best is None or (d, parts[0]) > (best[0], best[1])):
            best = (d, parts[0], m)
    return (best[1], best[2]) if best else None


def label_shift(spec_labels: list[str], current: dict[str, int], previous: dict[str, int]) -> dict[str, float]:
    """Total variation distance and chi-square (2 x k contingency) p-value between two label count tables."""
    from scipy.stats import chi2_contingency

    a = np.array([current.get(k, 0) for k in spec_labels], float)
    b = np.array([previous.get(k, 0) for k in spec_labels], float)
    if a.sum() == 0 or b.sum() == 0:
        return {"tvd": 0.0, "p_value": 1.0, "chi2": 0.0}
    tvd = 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())
    keep = (a + b) > 0
    if keep.sum() < 2:
        return {"tvd": tvd, "p_value": 1.0, "chi2": 0.0}
    res = chi2_contingency(np.stack([a[keep], b[keep]]), correction=False)
    return {"tvd": tvd, "p_value": float(res[1]), "chi2": float(res[0])}


def slice_label_counts(rows: pd.DataFrame, slice_columns: list[str]) -> dict[str, dict[str, int]]:
    """{"col=value": {label: rows}} of the usable rows (what the label shift per slice compares)."""
    out: dict[str, dict[str, int]] = {}
    for col in slice_columns:
        if col not in rows:
            continue
        counts = rows.groupby([rows[col].astype(str), rows["label"].astype(str)], observed=True).size()
        for (value, label), k in counts.items():
            out.setdefault(f"{col}={value}", {})[str(label)] = int(k)
    return out


def champion_reference(ctx: RunContext) -> dict[str, Any] | None:
    """What the champion was trained on: {version, run_id, logical_date, class_counts, slice_label_counts (None
    when its run's audit report is gone)}, or None without a (readable) champion. Reads the champion run's
    audit report, else the snapshot manifest registered with the version."""
    from tl_core.registry import Registry
    from tl_core.store import join_key

    try:
        reg = Registry.for_spec(ctx.spec)
        champion = reg.champion(repair=False)
        if champion is None:
            return None
        info = reg.show(champion.version)
    except (TLError, ValueError, KeyError) as exc:
        logger.warning("label shift: the champion of %s cannot be read (%s); comparing with the previous snapshot",
                       ctx.spec.name, exc)
        return None
    run_id = str(info.get("run_id", ""))
    ref: dict[str, Any] = {"version": champion.version, "run_id": run_id, "slice_label_counts": None}
    try:
        rep = RunContext(spec=ctx.spec, store=ctx.store, run_id=key_safe(run_id)).read(AuditReport)
        ref.update(logical_date=rep.logical_date, class_counts=rep.class_counts,
                   slice_label_counts=rep.slice_label_counts)
        return ref
    except (NoSuchKey, ArtifactError) as exc:
        logger.info("label shift: the champion run's audit report is not readable (%s); using the manifest "
                    "registered with %s", exc, champion.version)
    key = join_key(reg.prefix, "versions", champion.version, MANIFEST)
    try:
        m = parse_artifact(SnapshotManifest, reg.store.get_bytes(key), reg.store.url(key))
    except (NoSuchKey, ArtifactError):
        return None
    ref.update(logical_date=m.logical_date, class_counts=m.rows_per_label)
    return ref


def _shift_per_slice(spec: Any, current: dict[str, dict[str, int]], previous: dict[str, dict[str, int]] | None
                     ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in sorted(set(current) & set(previous or {})):
        stats = label_shift(spec.labels, current[name], (previous or {})[name])
        flagged = stats["p_value"] < spec.data.label_shift_alpha and stats["tvd"] >= spec.data.label_shift_min_tvd
        out[name] = {**stats, "flagged": flagged}
    return out


def _label_shift(a: _Audit, manifest: SnapshotManifest, class_counts: dict[str, int],
                 slices: dict[str, dict[str, int]]) -> dict[str, Any] | None:
    """Label distribution against the champion's training data (else the previous snapshot of this model),
    overall and per slice value."""
    spec = a.ctx.spec
    ref = champion_reference(a.ctx)
    if ref is not None:
        against = f"the champion {ref['version']} (run {ref['run_id']}, {ref.get('logical_date')})"
    else:
        prev = previous_snapshot(a.ctx, manifest.logical_date)
        if prev is None:
            a.add("label_shift", "info", None, "label", "no champion and no earlier snapshot of this model to "
                  "compare with", count=0)
            return None
        ref = {"run_id": prev[0], "logical_date": prev[1].logical_date, "version": None,
               "class_counts": prev[1].rows_per_label, "slice_label_counts": None}
        against = f"run {ref['run_id']} ({ref['logical_date']}; no champion)"
    stats = label_shift(spec.labels, class_counts, ref["class_counts"])
    flagged = stats["p_value"] < spec.data.label_shift_alpha and stats["tvd"] >= spec.data.label_shift_min_tvd
    per_slice = _shift_per_slice(spec, slices, ref["slice_label_counts"])
    shifted = sorted((k for k, v in per_slice.items() if v["flagged"]), key=lambda k: -per_slice[k]["tvd"])
    result = {"previous_run": ref["run_id"], "previous_logical_date": ref["logical_date"],
              "champion_version": ref["version"], **stats, "flagged": flagged, "per_slice": per_slice,
              "flagged_slices": shifted}
    slice_text = ("; per slice: " + (", ".join(f"{k} TVD {per_slice[k]['tvd']:.3f}" for k in shifted[:5])
                                     if shifted else f"none of {len(per_slice)} flagged")
                  if ref["slice_label_counts"] is not None else "; per slice: not recorded for the reference")
    a.add("label_shift", "warning" if flagged or shifted else "info", None, "label",
          f"label distribution vs {against}: TVD {stats['tvd']:.3f}, chi-square p {stats['p_value']:.3g} (flagged "
          f"when p < {spec.data.label_shift_alpha} and TVD >= {spec.data.label_shift_min_tvd}){slice_text}",
          count=int(flagged) + len(shifted), **result)
    return result


def _run_checks(a: _Audit, manifest: SnapshotManifest, timings: dict[str, float]) -> dict[str, Any]:
    """Every check in order, timed (seconds per check group into ``timings``); the report's figures."""
    spec, rows = a.ctx.spec, a.rows
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        clock = now

    _row_checks(a)
    _label_checks(a)
    lap("rows_and_labels")
    hashes = _input_checks(a)
    lap("inputs")
    _duplicate_ids(a)
    usable_dt = rows.loc[~a.quarantined, "dt"]
    test_days = newest_days(usable_dt, spec.data.test_days) if len(usable_dt) else []
    if len(rows):
        _duplicate_checks(a, hashes, test_days)
    lap("duplicates")
    class_counts = _class_checks(a)
    slice_sizes = _slice_sizes(a, test_days)
    slices = slice_label_counts(rows[~a.quarantined], spec.data.slice_columns)
    lap("classes_and_slices")
    shift = _label_shift(a, manifest, class_counts, slices)
    lap("label_shift")
    return {"class_counts": class_counts, "slice_sizes": slice_sizes, "slice_label_counts": slices,
            "label_shift": shift, "test_days": test_days}


def audit_rows(ctx: RunContext, rows: pd.DataFrame, manifest: SnapshotManifest,
               timings: dict[str, float] | None = None) -> tuple[AuditReport, pd.DataFrame]:
    """(report, quarantine rows with `reason`) for the snapshot's rows. Pure apart from reading earlier manifests,
    the champion's reference counts and, for image_uri specs, the snapshot's image list and the images (verified
    against it). ``timings`` (if given) receives the seconds each group of checks took (never in the report,
    which must be the same bytes on a re-run)."""
    for c in INTERNAL:
        if c not in rows:
            rows = rows.assign(**{c: ""})
    recorded = read_image_hashes(ctx, manifest)
    a = _Audit(ctx, rows, ImageReader(ctx.spec.data.root, recorded) if recorded is not None else None)
    col = ctx.spec.data.input_column
    a.add("empty_window", "blocking" if len(rows) == 0 else "info", None, col,
          f"the snapshot window {manifest.window.start} .. {manifest.window.end} has no rows"
          if len(rows) == 0 else f"{len(rows)} rows in the window", count=len(rows))
    figures = _run_checks(a, manifest, timings if timings is not None else {})
    q = a.quarantined
    reasons = pd.Series(a.reason[q]).str.split("; ").explode().value_counts().sort_index()
    present = [v for v in figures["class_counts"].values() if v > 0]
    report = AuditReport(
        run_id=ctx.run_id, model=ctx.spec.name, logical_date=manifest.logical_date,
        snapshot_hash=manifest.content_hash, total_rows=int(len(rows)), usable_rows=int((~q).sum()),
        quarantined_rows=int(q.sum()), quarantine_reasons={str(k): int(v) for k, v in reasons.items()},
        blocking=bool(a.blocking), blocking_messages=a.blocking, findings=a.findings,
        imbalance_ratio=max(present) / min(present) if present else None, **figures)
    quarantine = rows[q].drop(columns=list(INTERNAL))
    quarantine["reason"] = a.reason[q].astype(str)
    return report, quarantine


def _parquet(df: pd.DataFrame) -> bytes:
    out = df.copy()
    for c in ("dt", "partition"):
        if c in out:
            out[c] = out[c].astype(str)
    buf = io.BytesIO()
    out.reset_index(drop=True).to_parquet(buf, index=False)
    return buf.getvalue()


def run_audit(ctx: RunContext, timings: dict[str, float] | None = None) -> str:
    """Audit the run's snapshot; write the report and the quarantine; raise on blocking findings. Returns the
    report's URI. ``timings`` (if given) receives the seconds of loading the rows and of each group of checks."""
    timings = timings if timings is not None else {}
    t0 = time.perf_counter()
    manifest = read_manifest(ctx)
    rows = load_snapshot_rows(ctx, manifest)
    timings["load_rows"] = time.perf_counter() - t0
    report, quarantine = audit_rows(ctx, rows, manifest, timings)
    ctx.store.put_bytes(ctx.key(QUARANTINE), _parquet(quarantine))
    ctx.write(report)
    logger.info("audit timings: %s", ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    if report.blocking:
        raise BlockingAuditFinding(f"run {ctx.run_id}: blocking data audit findings (report {ctx.uri(REPORT)}):\n  "
                                   + "\n  ".join(report.blocking_messages))
    logger.info("audit: %d usable rows, %d quarantined (%s)", report.usable_rows, report.quarantined_rows,
                report.quarantine_reasons)
    return ctx.uri(REPORT)
