"""`tl snapshot`: freeze the partitions in ``[D - window_days, D]`` into an immutable manifest.

Manifest (``snapshot/manifest.json``, schema_version 1)::

    model, dataset, data_root, logical_date, window {start, end}, window_days, spec_fingerprint,
    partitions: [{dt, rows, rows_per_label, files: [{key, sha256, bytes, rows}]}]   (dt ascending)
    total_rows, rows_per_label, content_hash

``content_hash`` is the sha256 of the canonical JSON of (dataset, every file's dt, key and sha256): it
names the data, not where it was read from or when. The manifest holds no timestamps, so the same spec,
logical date and partition files always give the same bytes. A file that lands later for an old date
(late labels) is only picked up by a run whose window covers that date; a run's snapshot is written
create-only and never replaced by different content.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import date, timedelta
from typing import Any

import pyarrow.compute as pc

from tl_core.data.partitions import (
    data_store,
    partition_dates,
    read_partition_bytes,
    read_schema,
    read_table,
    validate_schema,
)
from tl_core.errors import BlockingAuditFinding, DataError, NoSuchKey, PreconditionFailed
from tl_core.runs import RunContext

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MISSING_LABEL = "<missing>"
MANIFEST = "snapshot/manifest.json"


def content_hash(dataset: str, partitions: list[dict[str, Any]]) -> str:
    """sha256 over the canonical JSON of every file's (dt, key, sha256)."""
    files = [{"dt": p["dt"], "key": f["key"], "sha256": f["sha256"]} for p in partitions for f in p["files"]]
    canonical = json.dumps({"dataset": dataset, "files": files}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _label_counts(table: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in pc.value_counts(table.column("label").combine_chunks()).to_pylist():
        name = MISSING_LABEL if item["values"] is None else str(item["values"])
        counts[name] = counts.get(name, 0) + int(item["counts"])
    return dict(sorted(counts.items()))


def build_manifest(ctx: RunContext, logical_date: date) -> dict[str, Any]:
    """The manifest of the window ending at ``logical_date`` (reads every file once: sha256, schema, labels)."""
    spec = ctx.spec
    store = data_store(spec)
    start = logical_date - timedelta(days=spec.data.window_days)
    all_dates = partition_dates(store, spec.data.dataset)
    window = {d: keys for d, keys in all_dates.items() if start <= d <= logical_date}
    if not window:
        span = f", {min(all_dates)} .. {max(all_dates)}" if all_dates else ""
        raise BlockingAuditFinding(
            f"empty window: no partitions of {spec.data.root}/{spec.data.dataset} in [{start}, {logical_date}] "
            f"(window_days {spec.data.window_days}; the dataset has {len(all_dates)} partitions{span})")
    partitions: list[dict[str, Any]] = []
    for day, keys in window.items():
        files = []
        per_label: dict[str, int] = {}
        for key in keys:
            data, digest = read_partition_bytes(store, key)
            validate_schema(read_schema(data, key), spec, key)
            table = read_table(data, key, columns=["label"])
            counts = _label_counts(table)
            for k, v in counts.items():
                per_label[k] = per_label.get(k, 0) + v
            files.append({"key": key, "sha256": digest, "bytes": len(data), "rows": int(table.num_rows)})
            del table, data
        partitions.append({"dt": day.isoformat(), "files": files, "rows": sum(f["rows"] for f in files),
                           "rows_per_label": dict(sorted(per_label.items()))})
    totals: dict[str, int] = {}
    for p in partitions:
        for k, v in p["rows_per_label"].items():
            totals[k] = totals.get(k, 0) + v
    return {
        "schema_version": SCHEMA_VERSION,
        "model": spec.name,
        "dataset": spec.data.dataset,
        "data_root": spec.data.root,
        "logical_date": logical_date.isoformat(),
        "window": {"start": start.isoformat(), "end": logical_date.isoformat()},
        "window_days": spec.data.window_days,
        "spec_fingerprint": spec.fingerprint(),
        "partitions": partitions,
        "total_rows": sum(p["rows"] for p in partitions),
        "rows_per_label": dict(sorted(totals.items())),
        "content_hash": content_hash(spec.data.dataset, partitions),
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def read_manifest(ctx: RunContext) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = ctx.read_json(MANIFEST)
    except NoSuchKey:
        raise DataError(f"run {ctx.run_id}: no {MANIFEST} under {ctx.uri('')}; run `tl snapshot` first") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(f"run {ctx.run_id}: {MANIFEST} has schema_version {manifest.get('schema_version')!r}, "
                        f"expected {SCHEMA_VERSION}; re-run `tl snapshot` in a new run")
    return manifest


def run_snapshot(ctx: RunContext, logical_date: date) -> str:
    """Write the run's snapshot manifest (create-only; an identical re-run is a no-op). Returns its URI."""
    manifest = build_manifest(ctx, logical_date)
    key = ctx.key(MANIFEST)
    try:
        ctx.store.put_bytes(key, manifest_bytes(manifest), if_none_match="*")
    except PreconditionFailed:
        existing = json.loads(ctx.store.get_bytes(key))
        old = (existing.get("logical_date"), existing.get("content_hash"))
        if old != (manifest["logical_date"], manifest["content_hash"]):
            raise DataError(
                f"run {ctx.run_id} already has a snapshot with content hash {old[1]} for logical date {old[0]}, "
                f"now {manifest['content_hash']} for {manifest['logical_date']} (partition files changed or late "
                "labels arrived): snapshots are immutable; start a new run to pick the new data up") from None
    logger.info("snapshot %s: %d partitions, %d rows, hash %s", logical_date, len(manifest["partitions"]),
                manifest["total_rows"], manifest["content_hash"][:12])
    return ctx.uri(MANIFEST)
