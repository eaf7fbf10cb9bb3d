"""Snapshot + audit throughput on 1,000,000 text rows (about 200 MB of Parquet) in a temporary file store.

Goal (issue 3): under 2 minutes and under 3 GB peak memory on the 2-core machine. Prints rows/s and peak RSS.

    .venv/bin/python bench/snapshot_audit.py [--rows 1000000] [--days 10]
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from tl_core.config import parse_spec
from tl_core.data.audit import run_audit
from tl_core.data.partitions import partition_key
from tl_core.data.snapshot import run_snapshot
from tl_core.runs import RunContext
from tl_core.store import open_store

WORDS = np.array("refund invoice charge password login locked parcel courier tracking crash error button cancel "
                 "subscription account order please help today again urgent the my with for".split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = Path(tmp).as_uri()
        spec = parse_spec({"name": "bench", "modality": "text", "labels": ["billing", "login", "shipping", "bug"],
                           "backbone": {"library": "transformers", "name": "x", "weights": "none"},
                           "data": {"root": uri + "/data", "dataset": "t", "window_days": args.days,
                                    "slice_columns": ["region", "channel"]},
                           "store": uri + "/store"})
        rng = np.random.default_rng(0)
        per_day = args.rows // args.days
        end = date(2026, 11, 10)
        size = 0
        t0 = time.perf_counter()
        for d in range(args.days):
            day = end - timedelta(days=d)
            idx = rng.integers(0, len(WORDS), (per_day, 30))
            text = pd.Series([" ".join(r) for r in WORDS[idx]])
            df = pd.DataFrame({"example_id": [f"{day:%m%d}-{i}" for i in range(per_day)],
                               "label": rng.choice(spec.labels, per_day), "text": text,
                               "labeled_at": pd.Timestamp(day) + pd.to_timedelta(rng.integers(0, 86400, per_day), "s"),
                               "region": rng.choice(["eu", "us", "apac"], per_day),
                               "channel": rng.choice(["email", "chat", "web"], per_day)})
            buf = io.BytesIO()
            df.to_parquet(buf, index=False)
            size += buf.tell()
            open_store(spec.data.root).put_bytes(partition_key("t", day, "part-0.parquet"), buf.getvalue())
        gen = time.perf_counter() - t0
        ctx = RunContext.open(spec, "bench")
        t0 = time.perf_counter()
        run_snapshot(ctx, end)
        t_snap = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_audit(ctx)
        t_audit = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows = per_day * args.days
    print(f"{rows} rows, {size / 2**20:.0f} MiB parquet in {args.days} partitions (generated in {gen:.0f}s)")
    print(f"snapshot {t_snap:.1f}s, audit {t_audit:.1f}s, total {t_snap + t_audit:.1f}s = "
          f"{rows / (t_snap + t_audit):,.0f} rows/s; peak RSS {peak_gb:.2f} GiB (process, incl. generation)")


if __name__ == "__main__":
    main()
