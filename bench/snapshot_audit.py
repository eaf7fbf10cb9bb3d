"""Benchmark: snapshot + audit of 1,000,000 generated text rows (about 200 MB of Parquet) in a temporary
file:// store. Prints rows/s, wall time per step and per audit check, and peak memory (process max RSS and
tracemalloc peak); then the split (with its achieved-vs-requested report) and the label-issue check.

    .venv/bin/python bench/snapshot_audit.py [--rows 1000000] [--days 20] [--no-split] [--no-label-issues]

Target (issues 3 and 14): snapshot + audit under 2 minutes and under 3 GB on a 2-core machine. The label-issue
check runs in the first train task on the frozen embeddings of a seeded sample of at most
data.label_issues_max_rows non-test rows (100,000 by default); the bench has no backbone, so it times the check
on that sample with synthetic 384-d embeddings (class means + noise) standing in for the cached ones. Nothing
here is asserted.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
import tracemalloc
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from tl_core.artifacts import AuditReport, SplitCheck
from tl_core.config import parse_spec
from tl_core.data.partitions import partition_key, write_marker
from tl_core.runs import RunContext
from tl_core.store import open_store

WORDS = np.array("""account order invoice refund charged twice password reset login locked parcel courier delivery
tracking damaged crash error blank screen freeze cancel renew subscription plan wallet card receipt address
update app website email chat team please help urgent again yesterday today week month premium family gift
basket checkout profile number code verification spinning button save search items exist contract""".split())
_SYL = np.array([c + v for c in "bcdfghklmnprstvz" for v in "aeiou"])
VOCAB = np.concatenate([WORDS, ["".join(x) for x in np.random.default_rng(1).choice(_SYL, (4000, 3))]])
LABELS = ["billing", "login", "shipping", "bug", "cancel"]


def make_day(day: date, n: int, rng: np.random.Generator, offset: int) -> pd.DataFrame:
    """n tickets, vectorised: 25-50 words of a 4,000-word vocabulary plus a random reference token
    (about 200 B/row in Parquet)."""
    lengths = rng.integers(25, 51, n)
    words = rng.choice(VOCAB, size=(n, 50))
    refs = rng.integers(0, 2**40, n)
    text = pd.Series([" ".join(w[:k]) for w, k in zip(words, lengths, strict=True)])
    text = text + " ref " + pd.Series(refs).map("{:010x}".format)
    return pd.DataFrame({
        "example_id": [f"b-{day:%Y%m%d}-{i:07d}" for i in range(offset, offset + n)],
        "label": rng.choice(LABELS, n, p=[0.3, 0.22, 0.22, 0.16, 0.10]),
        "text": text,
        "labeled_at": pd.Timestamp(datetime(day.year, day.month, day.day)) + pd.to_timedelta(
            rng.integers(0, 86400, n), unit="s"),
        "channel": rng.choice(["email", "chat", "web"], n),
        "region": rng.choice(["eu", "us", "apac"], n),
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--days", type=int, default=20)
    ap.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations (slower)")
    ap.add_argument("--no-split", action="store_true", help="skip the split (and the label-issue check)")
    ap.add_argument("--no-label-issues", action="store_true", help="skip the label-issue check")
    args = ap.parse_args()
    from tl_core.data.audit import run_audit
    from tl_core.data.snapshot import run_snapshot

    with tempfile.TemporaryDirectory(prefix="tl-bench-") as tmp:
        root = Path(tmp).as_uri()
        spec = parse_spec({
            "name": "bench", "modality": "text", "labels": LABELS,
            "backbone": {"library": "transformers", "name": "x", "weights": "none"},
            "data": {"root": root + "/data", "dataset": "tickets", "window_days": args.days - 1,
                     "slice_columns": ["channel", "region"], "slice_crosses": [["channel", "region"]]},
            "store": root + "/store",
        })
        store = open_store(spec.data.root)
        end = date(2026, 11, 30)
        per_day = args.rows // args.days
        rng = np.random.default_rng(0)
        t0 = time.perf_counter()
        size = 0
        for d in range(args.days):
            day = end - timedelta(days=args.days - 1 - d)
            n = per_day + (args.rows - per_day * args.days if d == args.days - 1 else 0)
            buf = io.BytesIO()
            make_day(day, n, rng, 0).to_parquet(buf, index=False)
            size += buf.tell()
            store.put_bytes(partition_key(spec.data.dataset, day, "part-000.parquet"), buf.getvalue())
            write_marker(store, spec.data.dataset, day, spec.data.completion_marker)
        print(f"generated {args.rows:,} rows in {args.days} partitions, {size / 1e6:.0f} MB parquet "
              f"({time.perf_counter() - t0:.1f}s, not timed below)")
        ctx = RunContext.open(spec, "bench")
        if args.tracemalloc:
            tracemalloc.start()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t1 = time.perf_counter()
        run_snapshot(ctx, end)
        t2 = time.perf_counter()
        timings: dict[str, float] = {}
        run_audit(ctx, timings)
        t3 = time.perf_counter()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report = ctx.read(AuditReport)
        total = t3 - t1
        print(f"snapshot: {t2 - t1:.1f}s ({args.rows / (t2 - t1):,.0f} rows/s)")
        print(f"audit:    {t3 - t2:.1f}s ({args.rows / (t3 - t2):,.0f} rows/s); "
              f"{report.usable_rows:,} usable, {report.quarantined_rows:,} quarantined")
        for name, secs in timings.items():
            print(f"  audit {name:<20} {secs:6.1f}s")
        print(f"total:    {total:.1f}s ({args.rows / total:,.0f} rows/s)   target < 120 s")
        print(f"peak RSS: {rss / 1024:.0f} MB (before snapshot {rss0 / 1024:.0f} MB, includes data generation)"
              "   target < 3072 MB")
        if args.tracemalloc:
            print(f"tracemalloc peak: {tracemalloc.get_traced_memory()[1] / 1e6:.0f} MB (Python allocations only)")
        if not args.no_split:
            _split(ctx)
        if not args.no_split and not args.no_label_issues:
            _label_issues(ctx)
    return 0


def _split(ctx: RunContext) -> None:
    from tl_core.data.split import run_split

    t0 = time.perf_counter()
    run_split(ctx)
    rep = ctx.read(SplitCheck)
    shares = ", ".join(f"{k} {v.share:.1%}" for k, v in rep.achieved.items())
    print(f"split:    {time.perf_counter() - t0:.1f}s ({shares}; test requested {rep.requested['test']:.1%})")


def _label_issues(ctx: RunContext) -> None:
    from tl_core.data.label_issues import find_label_issues

    examples = ctx.read_examples()
    rest = examples[examples["split"] != "test"]
    n = min(len(rest), ctx.spec.data.label_issues_max_rows)
    rows = rest.sample(n=n, random_state=ctx.spec.data.split_seed).reset_index(drop=True)
    rng = np.random.default_rng(0)
    means = rng.normal(size=(len(LABELS), 384)) * 0.15
    y = rows["label"].map({k: i for i, k in enumerate(LABELS)}).to_numpy()
    feats = (means[y] + rng.normal(size=(n, 384))).astype(np.float32)
    t0 = time.perf_counter()
    finding = find_label_issues(rows, feats, ctx.spec)
    print(f"label issues: {time.perf_counter() - t0:.1f}s on a sample of {n:,} of {len(rest):,} non-test rows "
          f"(synthetic 384-d embeddings): [{finding['severity']}] {finding['count']:,} flagged "
          f"({finding['rate']:.1%}), out-of-fold accuracy {finding['oof_accuracy']:.1%}")


if __name__ == "__main__":
    sys.exit(main())
