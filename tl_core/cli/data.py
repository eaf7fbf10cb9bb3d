"""`tl demo-data`, `tl snapshot`, `tl audit`, `tl split`."""

from __future__ import annotations

import argparse
from datetime import date

from tl_core.cli.util import add_spec_run, date_arg, emit, positive_int


def cmd_demo_data(args: argparse.Namespace) -> int:
    from tl_core.config import load_spec
    from tl_core.demo.data import write_demo_data

    drift = date.fromisoformat(args.drift_from) if args.drift_from else None
    uris = write_demo_data(load_spec(args.spec), date.fromisoformat(args.end_date), args.days, args.rows_per_day,
                           args.seed, drift)
    emit(args, {"partitions": uris}, f"wrote {len(uris)} demo partitions ({uris[0]} .. {uris[-1]})")
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from tl_core.pipeline import _ctx, step_snapshot

    uri = step_snapshot(args.spec, args.run, args.date)
    m = _ctx(args.spec, args.run).read_json("snapshot/manifest.json")
    emit(args, {"manifest": uri, "content_hash": m["content_hash"], "rows": m["total_rows"]},
         f"snapshot {uri}: {len(m['partitions'])} partitions, {m['total_rows']} rows, hash {m['content_hash']}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from tl_core.pipeline import _ctx, step_audit

    uri = step_audit(args.spec, args.run)
    rep = _ctx(args.spec, args.run).read_json("audit/report.json")
    lines = [f"audit {uri}: {rep['usable_rows']} usable of {rep['total_rows']} rows, "
             f"{rep['quarantined_rows']} quarantined"]
    lines += [f"  [{f['severity']}] {f['check']}: {f['message']}" for f in rep["findings"]]
    emit(args, rep, "\n".join(lines))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from tl_core.pipeline import _ctx, step_split

    uri = step_split(args.spec, args.run)
    s = _ctx(args.spec, args.run).read_json("split/split.json")
    emit(args, {"split": uri, "counts": s["counts"], "split_hash": s["split_hash"]},
         f"split {uri}: {s['counts']} (hash {s['split_hash'][:12]})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo-data", help="write generated demo partitions for a spec (text or image)")
    p.add_argument("--spec", required=True)
    p.add_argument("--end-date", required=True, type=date_arg, help="last labeling day, YYYY-MM-DD")
    p.add_argument("--days", type=positive_int, default=14)
    p.add_argument("--rows-per-day", type=positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drift-from", type=date_arg, help="first day with drift, YYYY-MM-DD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_demo_data)

    p = sub.add_parser("snapshot", help="freeze the partitions of [date - window_days, date] into a manifest")
    add_spec_run(p)
    p.add_argument("--date", required=True, type=date_arg, help="logical date YYYY-MM-DD")
    p.set_defaults(handler=cmd_snapshot)

    p = sub.add_parser("audit", help="audit the snapshot; blocking findings stop the run")
    add_spec_run(p)
    p.set_defaults(handler=cmd_audit)

    p = sub.add_parser("split", help="leakage-safe train/validation/calibration/test split")
    add_spec_run(p)
    p.set_defaults(handler=cmd_split)
