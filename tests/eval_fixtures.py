"""A run with synthetic logits for every strategy and split, ready for `tl evaluate` and the gate."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd

from tl_core.artifacts import AuditReport, Selection, SnapshotManifest, TrainReport
from tl_core.config import ModelSpec
from tl_core.runs import RunContext

LABELS = ["billing", "login", "shipping"]


def spec_dict(store_uri: str, **gate: Any) -> dict[str, Any]:
    return {
        "name": "eval-demo", "modality": "text", "labels": LABELS,
        "backbone": {"library": "transformers", "name": "tiny", "weights": "none"},
        "data": {"root": store_uri, "slice_columns": ["region", "channel"], "slice_crosses": [["region", "channel"]]},
        "train": {"strategies": ["frozen", "full"]},
        "gate": {"n_bootstrap": 200, "min_slice_size": 20, "margins": {"macro_f1": 0.05, "accuracy": 0.05},
                 "absolute_minimums": {"macro_f1": 0.5}, **gate},
        "store": store_uri, "registry": store_uri,
    }


def logits_for(y: np.ndarray, rng: np.random.Generator, accuracy: float, scale: float) -> np.ndarray:
    """Over-confident logits that are right with probability `accuracy`."""
    pred = np.where(rng.random(len(y)) < accuracy, y, rng.integers(0, len(LABELS), len(y)))
    z = rng.normal(size=(len(y), len(LABELS)))
    z[np.arange(len(y)), pred] += 2.0
    return (z * scale).astype(np.float32)


def make_synthetic_run(spec: ModelSpec, n_test: int = 600, n_cal: int = 300, seed: int = 0,
                       run_id: str = "manual-20260101T000000") -> RunContext:
    """examples.parquet, per-strategy logits, candidate.json, curves, audit and snapshot manifest."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, n in (("train", 300), ("calibration", n_cal), ("test", n_test)):
        for i in range(n):
            rows.append({"example_id": f"{split}-{i}", "label": LABELS[int(rng.integers(0, 3))], "split": split,
                         "text": "x", "region": ["eu", "us"][i % 2], "channel": ["web", "app", "mail"][i % 3]})
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    ctx = RunContext.open(spec, run_id)
    ctx.save_spec()
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    ctx.store.put_bytes(ctx.key("split/examples.parquet"), buf.getvalue())
    index = {k: i for i, k in enumerate(LABELS)}
    for strategy, acc in (("frozen", 0.75), ("full", 0.85)):
        for split in ("calibration", "test"):
            part = df[df["split"] == split]
            y = part["label"].map(index).to_numpy().astype(int)
            order = rng.permutation(len(part))  # logits files need not follow examples.parquet order
            ctx.write_npz(f"models/{strategy}/logits/{split}.npz",
                          example_id=part["example_id"].to_numpy().astype(str)[order],
                          logits=logits_for(y, rng, acc, 3.0)[order])
        ctx.write(TrainReport(strategy=strategy, backbone=None, val_metric=acc, curves=[] if strategy == "frozen" else [
            {"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_metric": 0.6 + 0.05 * e} for e in (1, 2, 3)]),
                  strategy)
        ctx.store.put_bytes(ctx.model_key(strategy, "model.safetensors"), f"weights-{strategy}".encode())
    ctx.write(Selection(selected="full", primary_metric="macro_f1", strategies={
        s: {"val_metric": v, "strategy": s, "backbone": "default"} for s, v in (("frozen", 0.7), ("full", 0.8))}))
    ctx.write(audit_report(ctx, len(df), [{"check": "class_balance", "severity": "info", "count": 3, "column": "label",
                                           "example_ids": [], "partitions": [], "message": "classes within 2x"}]))
    ctx.write(snapshot_manifest(ctx, "abc123"))
    return ctx


def snapshot_manifest(ctx: RunContext, content_hash: str, logical_date: str = "2026-01-01") -> SnapshotManifest:
    """A manifest of an empty window with this content hash (what the evidence and the registry read of it)."""
    spec = ctx.spec
    return SnapshotManifest(model=spec.name, dataset=spec.data.dataset, data_root=spec.data.root,
                            logical_date=logical_date, window={"start": logical_date, "end": logical_date},
                            window_days=spec.data.window_days, spec_fingerprint=spec.fingerprint(), partitions=[],
                            total_rows=0, rows_per_label={}, content_hash=content_hash, ignored=[], ignored_count=0,
                            completion_marker=spec.data.completion_marker)


def audit_report(ctx: RunContext, rows: int, findings: list[dict[str, Any]]) -> AuditReport:
    """An audit report of ``rows`` usable rows, none quarantined, with these findings."""
    return AuditReport(run_id=ctx.run_id, model=ctx.spec.name, logical_date="2026-01-01", snapshot_hash="abc123",
                       total_rows=rows, usable_rows=rows, quarantined_rows=0, quarantine_reasons={}, blocking=False,
                       blocking_messages=[], findings=findings, imbalance_ratio=None, class_counts={},
                       slice_sizes={}, slice_label_counts={}, label_shift=None, test_days=[])
