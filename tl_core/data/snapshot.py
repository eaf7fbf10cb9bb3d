"""`tl snapshot`: freeze the partitions in ``[D - window_days, D]`` into an immutable manifest.

Manifest (``snapshot/manifest.json``, schema_version 1)::

    model, dataset, data_root, logical_date, window {start, end}, window_days, spec_fingerprint,
    partitions: [{dt, rows, rows_per_label, files: [{key, sha256, bytes, rows}]}]   (dt ascending)
    total_rows, rows_per_label, content_hash
    ignored: [{key, dt, reason}] (keys under the dataset that are not read: bad folder names, nested or
             non-parquet files; listed up to MAX_IGNORED_LISTED), ignored_count
    completion_marker (the spec's marker name, or null when markers are not used)
    missing_day (the logical date when its own partition has no data file, else null; see below)
    images: {key, sha256, count, unreadable}   (image_uri specs only)

Completion markers: unless the spec sets ``data.completion_marker: null``, every partition in the window that has
data files must also hold the marker (``dt=YYYY-MM-DD/_SUCCESS`` by default, written last by its writer);
otherwise the snapshot raises IncompletePartition naming the partition and the marker. The marker is not part of
the content hash (it carries no data).

The run's own day: when ``dt=<logical date>`` has no data file (the marker but no parquet file, or no folder),
``data.missing_day: warn`` (default) logs a warning naming the day and the folder, snapshots the earlier days of
the window and records the day as ``missing_day``; ``fail`` raises DataError naming the day, folder and setting.

For ``image_uri`` specs the snapshot reads every referenced image under the data root once and writes
``snapshot/images/<sha256>.json`` (``{"schema_version": 1, "images": {uri: sha256 | null}}``, null: the
object could not be read; URIs outside the data root are never read and not listed); later steps read
images only through it (:class:`ImageReader`), so an image that changes after the snapshot is an error.

``content_hash`` is the sha256 of the canonical JSON of (dataset, every file's dt, key and sha256, and for
image_uri specs the sha256 of the image list): it names the data, not where it was read from or when.
The manifest holds no timestamps, so the same spec, logical date and partition files always give the
same bytes. A file that lands later for an old date
(late labels) is only picked up by a run whose window covers that date; a run's snapshot is written
create-only and never replaced by different content.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tl_core.artifacts import ImageList, SnapshotManifest, parse_artifact
from tl_core.config import ModelSpec
from tl_core.data.partitions import (
    data_store,
    fetch_image,
    normalise_table,
    read_partition_bytes,
    read_schema,
    read_table,
    scan_partitions,
    validate_schema,
)
from tl_core.errors import (
    BlockingAuditFinding,
    DataError,
    IncompletePartition,
    NoSuchKey,
    PreconditionFailed,
    UnsafeImageUri,
)
from tl_core.runs import ArtifactMissing, RunContext, artifact_rel
from tl_core.store import ObjectStore

logger = logging.getLogger(__name__)

MISSING_LABEL = "<missing>"
MANIFEST = artifact_rel(SnapshotManifest)
MAX_IGNORED_LISTED = 100


def content_hash(dataset: str, partitions: list[dict[str, Any]], images_sha256: str | None = None) -> str:
    """sha256 over the canonical JSON of every file's (dt, key, sha256) and the image list's sha256 if any."""
    files = [{"dt": p["dt"], "key": f["key"], "sha256": f["sha256"]} for p in partitions for f in p["files"]]
    payload: dict[str, Any] = {"dataset": dataset, "files": files}
    if images_sha256 is not None:
        payload["images"] = images_sha256
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _image_hashes(store: ObjectStore, root: str, table: pa.Table, hashes: dict[str, str | None]) -> None:
    """Add sha256 (None: unreadable) of every image_uri in ``table`` under the data root to ``hashes``."""
    for value in table.column("image_uri").to_pylist():
        uri = value.strip() if isinstance(value, str) else ""
        if not uri or uri in hashes:
            continue
        try:
            data = fetch_image(store, uri, root)
        except UnsafeImageUri:
            continue  # never read; the audit quarantines the row
        hashes[uri] = hashlib.sha256(data).hexdigest() if data is not None else None


def images_bytes(hashes: dict[str, str | None]) -> bytes:
    """The image list's canonical bytes (compact: it is named by their sha256, which the content hash covers)."""
    listed = ImageList(images=dict(sorted(hashes.items())))
    return json.dumps(listed.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def read_image_hashes(ctx: RunContext, manifest: SnapshotManifest) -> dict[str, str | None] | None:
    """The snapshot's sha256 per image_uri (None for specs whose input is not image_uri); the list is checked
    against the sha256 the manifest records for it."""
    if ctx.spec.data.input_column != "image_uri":
        return None
    info = manifest.images
    if info is None:
        raise DataError(f"run {ctx.run_id}: {MANIFEST} records no image hashes for the image_uri column (written "
                        "by an older version); re-run `tl snapshot` in a new run")
    try:
        data = ctx.store.get_bytes(ctx.key(info.key))
    except NoSuchKey:
        raise DataError(f"run {ctx.run_id}: the snapshot's image list {ctx.uri(info.key)} is missing; start "
                        "a new run") from None
    if hashlib.sha256(data).hexdigest() != info.sha256:
        raise DataError(f"run {ctx.run_id}: the snapshot's image list {ctx.uri(info.key)} does not match the "
                        "sha256 in the manifest; start a new run")
    return parse_artifact(ImageList, data, ctx.uri(info.key)).images


def _label_counts(table: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in pc.value_counts(table.column("label").combine_chunks()).to_pylist():
        name = MISSING_LABEL if item["values"] is None else str(item["values"])
        counts[name] = counts.get(name, 0) + int(item["counts"])
    return dict(sorted(counts.items()))


def _read_window(ctx: RunContext, window: dict[date, list[str]]
                 ) -> tuple[list[dict[str, Any]], dict[str, str | None] | None]:
    """(partitions with files and label counts, sha256 per image_uri or None) of the window's files."""
    spec = ctx.spec
    store = data_store(spec)
    hashes: dict[str, str | None] | None = {} if spec.data.input_column == "image_uri" else None
    partitions: list[dict[str, Any]] = []
    for day, keys in window.items():
        files = []
        per_label: dict[str, int] = {}
        for key in keys:
            data, digest = read_partition_bytes(store, key)
            validate_schema(read_schema(data, key), spec, key)
            columns = ["label", *(["image_uri"] if hashes is not None else [])]
            table, _, _ = normalise_table(read_table(data, key, columns=columns))
            for k, v in _label_counts(table).items():
                per_label[k] = per_label.get(k, 0) + v
            if hashes is not None:
                _image_hashes(store, spec.data.root, table, hashes)
            files.append({"key": key, "sha256": digest, "bytes": len(data), "rows": int(table.num_rows)})
            del table, data
        partitions.append({"dt": day.isoformat(), "files": files, "rows": sum(f["rows"] for f in files),
                           "rows_per_label": dict(sorted(per_label.items()))})
    return partitions, hashes


def _ignored(ignored: list[dict[str, str]], start: date, end: date, where: str) -> list[dict[str, str]]:
    """The ignored keys that matter to this window (every unparseable folder; files of in-window folders),
    logged as a warning."""
    relevant = [i for i in ignored if not i["dt"] or start.isoformat() <= i["dt"] <= end.isoformat()]
    if relevant:
        shown = "; ".join(f"{i['key']} ({i['reason']})" for i in relevant[:10])
        more = f" and {len(relevant) - 10} more" if len(relevant) > 10 else ""
        logger.warning("snapshot: ignored %d key(s) under %s that are not partition files: %s%s (listed in the "
                       "manifest under 'ignored')", len(relevant), where, shown, more)
    return relevant


def _require_markers(spec: ModelSpec, window: dict[date, list[str]], marked: set[date]) -> None:
    """Refuse the window when a partition in it has files but no completion marker (unless markers are not used)."""
    marker = spec.data.completion_marker
    unmarked = [d for d in window if marker is not None and d not in marked]
    if not unmarked:
        return
    day = unmarked[0]
    folder = f"{spec.data.root.rstrip('/')}/{spec.data.dataset}/dt={day.isoformat()}"
    more = f" (and {len(unmarked) - 1} more partition(s) of the window: {', '.join(map(str, unmarked[1:4]))}" \
        f"{' ...' if len(unmarked) > 4 else ''})" if len(unmarked) > 1 else ""
    raise IncompletePartition(
        f"partition {folder} has {len(window[day])} data file(s) but no completion marker {marker!r} "
        f"(expected {folder}/{marker}, written last by the partition's writer){more}: the partition may still be "
        "written; wait for the marker (`tl mark-complete` writes it), or set data.completion_marker: null if this "
        "dataset's writers do not write markers")


def _missing_day(spec: ModelSpec, logical_date: date, window: dict[date, list[str]], marked: set[date],
                 folders: set[date]) -> str | None:
    """The logical date (ISO) when its own partition has no data file, else None; with data.missing_day "fail"
    raises DataError naming the day, the folder and the setting, with "warn" logs a warning naming both."""
    if logical_date in window:
        return None
    day = logical_date.isoformat()
    folder = f"{spec.data.root.rstrip('/')}/{spec.data.dataset}/dt={day}"
    marker = spec.data.completion_marker
    if marker is not None and logical_date in marked:
        why = f"its folder holds the completion marker {marker!r} but no .parquet file"
    elif logical_date in folders:
        why = "its folder holds no .parquet file"
    else:
        why = "no such folder"
    if spec.data.missing_day == "fail":
        raise DataError(f"logical date {day} has no data: {folder} ({why}); expected at least one "
                        f"{folder}/*.parquet file for the run's own day (data.missing_day: fail). Write the day's "
                        "data, or set data.missing_day: warn to train on the earlier days of the window")
    logger.warning("snapshot: logical date %s has no data: %s (%s); the snapshot holds only the earlier days of "
                   "the window and records missing_day %s in the manifest (data.missing_day: warn; set it to fail "
                   "to stop such a run)", day, folder, why, day)
    return day


def _build(ctx: RunContext, logical_date: date) -> tuple[SnapshotManifest, bytes | None]:
    """(manifest, image list bytes or None) of the window ending at ``logical_date``."""
    spec = ctx.spec
    start = logical_date - timedelta(days=spec.data.window_days)
    all_dates, ignored_all, marked = scan_partitions(data_store(spec), spec.data.dataset,
                                                     spec.data.completion_marker)
    ignored = _ignored(ignored_all, start, logical_date, f"{spec.data.root}/{spec.data.dataset}")
    window = {d: keys for d, keys in all_dates.items() if start <= d <= logical_date}
    _require_markers(spec, window, marked)
    if not window:
        span = f", {min(all_dates)} .. {max(all_dates)}" if all_dates else ""
        skipped = f"; {len(ignored)} key(s) ignored, e.g. {ignored[0]['key']} ({ignored[0]['reason']})" \
            if ignored else ""
        raise BlockingAuditFinding(
            f"empty window: no partitions of {spec.data.root}/{spec.data.dataset} in [{start}, {logical_date}] "
            f"(window_days {spec.data.window_days}; the dataset has {len(all_dates)} partitions{span}{skipped})")
    folders = {date.fromisoformat(i["dt"]) for i in ignored_all if i["dt"]}
    missing = _missing_day(spec, logical_date, window, marked, folders)
    partitions, hashes = _read_window(ctx, window)
    totals: dict[str, int] = {}
    for p in partitions:
        for k, v in p["rows_per_label"].items():
            totals[k] = totals.get(k, 0) + v
    images = images_bytes(hashes) if hashes is not None else None
    images_sha = hashlib.sha256(images).hexdigest() if images is not None else None
    images_info = None
    if hashes is not None and images_sha is not None:
        images_info = {"key": f"snapshot/images/{images_sha}.json", "sha256": images_sha, "count": len(hashes),
                       "unreadable": sum(v is None for v in hashes.values())}
    manifest = SnapshotManifest(
        model=spec.name, dataset=spec.data.dataset, data_root=spec.data.root, logical_date=logical_date.isoformat(),
        window={"start": start.isoformat(), "end": logical_date.isoformat()}, window_days=spec.data.window_days,
        spec_fingerprint=spec.fingerprint(), partitions=partitions, total_rows=sum(p["rows"] for p in partitions),
        rows_per_label=dict(sorted(totals.items())),
        content_hash=content_hash(spec.data.dataset, partitions, images_sha), ignored=ignored[:MAX_IGNORED_LISTED],
        ignored_count=len(ignored), completion_marker=spec.data.completion_marker, images=images_info,
        missing_day=missing)
    return manifest, images


def build_manifest(ctx: RunContext, logical_date: date) -> SnapshotManifest:
    """The manifest of the window ending at ``logical_date`` (reads every file once: sha256, schema, labels;
    for image_uri specs every referenced image under the data root once)."""
    return _build(ctx, logical_date)[0]


def read_manifest(ctx: RunContext) -> SnapshotManifest:
    """The run's snapshot manifest (DataError when the snapshot step has not run; ArtifactError naming the file
    when it is of another schema version or not a manifest)."""
    try:
        return ctx.read(SnapshotManifest)
    except ArtifactMissing:
        raise DataError(f"run {ctx.run_id}: no {MANIFEST} under {ctx.uri('')}; run `tl snapshot` first") from None


def run_snapshot(ctx: RunContext, logical_date: date) -> str:
    """Write the run's snapshot manifest (create-only; an identical re-run is a no-op) and, for image_uri
    specs, the image list it names first. Returns the manifest's URI."""
    manifest, images = _build(ctx, logical_date)
    if images is not None and manifest.images is not None:
        try:  # named by its own sha256: an existing object of that name has the same content
            ctx.store.put_bytes(ctx.key(manifest.images.key), images, if_none_match="*")
        except PreconditionFailed:
            pass
    try:
        ctx.write(manifest, create_only=True)
    except PreconditionFailed:
        existing = ctx.read(SnapshotManifest)
        old = (existing.logical_date, existing.content_hash)
        if old != (manifest.logical_date, manifest.content_hash):
            raise DataError(
                f"run {ctx.run_id} already has a snapshot with content hash {old[1]} for logical date {old[0]}, "
                f"now {manifest.content_hash} for {manifest.logical_date} (partition files changed or late "
                "labels arrived): snapshots are immutable; start a new run to pick the new data up") from None
    logger.info("snapshot %s: %d partitions, %d rows, hash %s", logical_date, len(manifest.partitions),
                manifest.total_rows, manifest.content_hash[:12])
    return ctx.uri(MANIFEST)
