"""`tl snapshot`: freeze the partitions in ``[D - window_days, D]`` into an immutable manifest.

Same spec + same logical date + same partition files = the same manifest bytes and content hash.
A partition that lands later for an old date (late labels) is only picked up by a run whose window
covers it; an existing snapshot of a run is never rewritten with different content.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import date, timedelta
from typing import Any

from tl_core.data.partitions import data_store, partition_dates, read_partition_file, validate_schema
from tl_core.errors import BlockingAuditFinding, DataError, PreconditionFailed
from tl_core.runs import RunContext

logger = logging.getLogger(__name__)


def build_manifest(ctx: RunContext, logical_date: date) -> dict[str, Any]:
    spec = ctx.spec
    store = data_store(spec)
    start = logical_date - timedelta(days=spec.data.window_days)
    all_dates = partition_dates(store, spec.data.dataset)
    window = {d: keys for d, keys in all_dates.items() if start <= d <= logical_date}
    if not window:
        raise BlockingAuditFinding(
            f"empty window: no partitions of {spec.data.root}/{spec.data.dataset} in [{start}, {logical_date}] "
            f"(dataset has {len(all_dates)} partitions"
            + (f", {min(all_dates)} .. {max(all_dates)}" if all_dates else "") + ")")
    partitions: list[dict[str, Any]] = []
    for day, keys in window.items():
        for key in keys:
            df, digest = read_partition_file(store, key)
            validate_schema(df, spec, key)
            labels = df["label"].fillna("<missing>").astype(str).value_counts().sort_index()
            partitions.append({"dt": day.isoformat(), "key": key, "sha256": digest, "rows": int(len(df)),
                               "rows_per_label": {k: int(v) for k, v in labels.items()}})
    content = {"data_root": spec.data.root, "dataset": spec.data.dataset, "partitions": [
        {k: p[k] for k in ("dt", "key", "sha256")} for p in partitions]}
    content_hash = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    label_totals: dict[str, int] = {}
    for p in partitions:
        for k, v in p["rows_per_label"].items():
            label_totals[k] = label_totals.get(k, 0) + v
    return {
        "model": spec.name, "logical_date": logical_date.isoformat(), "window": [start.isoformat(),
                                                                                  logical_date.isoformat()],
        "window_days": spec.data.window_days, "data_root": spec.data.root, "dataset": spec.data.dataset,
        "partitions": partitions, "total_rows": sum(p["rows"] for p in partitions),
        "rows_per_label": dict(sorted(label_totals.items())), "content_hash": content_hash,
        "spec_fingerprint": spec.fingerprint(),
    }


def run_snapshot(ctx: RunContext, logical_date: date) -> str:
    manifest = build_manifest(ctx, logical_date)
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    key = ctx.key("snapshot/manifest.json")
    try:
        ctx.store.put_bytes(key, body, if_none_match="*")
    except PreconditionFailed:
        existing = json.loads(ctx.store.get_bytes(key))
        if existing.get("content_hash") != manifest["content_hash"]:
            raise DataError(
                f"run {ctx.run_id} already has a snapshot with content hash {existing.get('content_hash')}, "
                f"now {manifest['content_hash']} (partition files changed or late labels arrived): snapshots are "
                "immutable; start a new run to pick the new data up") from None
    logger.info("snapshot %s: %d partitions, %d rows, hash %s", logical_date, len(manifest["partitions"]),
                manifest["total_rows"], manifest["content_hash"][:12])
    return ctx.uri("snapshot/manifest.json")
