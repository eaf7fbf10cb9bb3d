"""`tl demo-data`, `tl snapshot`, `tl audit`, `tl split`."""

from __future__ import annotations

import argparse
from datetime import date

from tl_core.artifacts import AuditReport, LabelIssues, SnapshotManifest, SplitReport
from tl_core.cli.util import add_spec_run, date_arg, emit, positive_int


def cmd_demo_data(args: argparse.Namespace) -> int:
    from tl_core.config import load_spec
    from tl_core.demo.data import write_demo_data

    drift = date.fromisoformat(args.drift_from) if args.drift_from else None
    uris = write_demo_data(load_spec(args.spec), date.fromisoformat(args.end_date), args.days, args.rows_per_day,
                           args.seed, drift)
    emit(args, {"partitions": uris}, f"wrote {len(uris)} demo partitions ({uris[0]} .. {uris[-1]})")
    return 0


def cmd_mark_complete(args: argparse.Namespace) -> int:
    from tl_core.config import load_spec
    from tl_core.data.partitions import mark_complete

    spec = load_spec(args.spec)
    uri = mark_complete(spec, date.fromisoformat(args.date))
    text = f"marked {spec.data.dataset}/dt={args.date} complete: {uri}" if uri else \
        f"{args.spec}: data.completion_marker is null (markers not used); nothing written"
    emit(args, {"marker": uri}, text)
    return 0


def cmd_snapshot(args: argparse.Namespace) -> int:
    from tl_core.pipeline import _ctx, step_snapshot

    uri = step_snapshot(args.spec, args.run, args.date)
    m = _ctx(args.spec, args.run).read(SnapshotManifest)
    emit(args, {"manifest": uri, "content_hash": m.content_hash, "rows": m.total_rows},
         f"snapshot {uri}: {len(m.partitions)} partitions, {m.total_rows} rows, hash {m.content_hash}")
    return 0


_ORDER = {"blocking": 0, "warning": 1, "info": 2}


def audit_summary(rep: AuditReport, uri: str) -> list[str]:
    """`tl audit` at a glance: counts, the duplicate clusters, label shift; then every finding, worst first."""
    by = {f.check: f for f in rep.findings}
    sev = [f.severity for f in rep.findings]
    lines = [f"audit {uri}: {rep.usable_rows} usable of {rep.total_rows} rows, {rep.quarantined_rows} "
             f"quarantined; {sev.count('blocking')} blocking, {sev.count('warning')} warning(s)"]
    near, straddle = by.get("near_duplicates"), by.get("duplicates_straddle_test")
    if near is not None and straddle is not None:
        lines.append(f"  clusters: {near.clusters or 0} near-duplicate (largest {near.largest_cluster or 0}"
                     f", e.g. {(near.largest_cluster_ids or [])[:3]}); {straddle.clusters or 0} straddle the "
                     f"test days (largest {straddle.largest_cluster or 0}, {straddle.pulled_rows or 0} "
                     "earlier rows go to test)")
    shift = rep.label_shift
    if shift:
        against = f"champion {shift.champion_version}" if shift.champion_version else f"run {shift.previous_run}"
        lines.append(f"  label shift vs {against}: TVD {shift.tvd:.3f}{' (flagged)' if shift.flagged else ''}; "
                     f"slices flagged: {shift.flagged_slices or 'none'}")
    lines += [f"  [{f.severity}] {f.check}: {f.message}"
              for f in sorted(rep.findings, key=lambda f: _ORDER.get(f.severity, 3))]
    return lines


def label_issue_summary(f: LabelIssues, uri: str) -> list[str]:
    """The label-issue finding at a glance: counts, the worst slices and classes, examples given -> suspected."""
    if f.oof_accuracy is None:
        return [f"label issues {uri}: [{f.severity}] {f.message}"]
    worst = ", ".join(f"{s} {f.per_slice[s].rate:.0%}" for s in f.worst_slices) or "no slices"
    classes = sorted(f.per_class.items(), key=lambda kv: -kv[1].rate)[:3]
    lines = [f"label issues {uri}: [{f.severity}] {f.count} of {f.rows} rows ({f.rate:.1%}) look "
             f"mislabelled (policy {f.policy}); out-of-fold accuracy {f.oof_accuracy:.1%}",
             f"  worst slices: {worst}; worst classes: "
             + ", ".join(f"{k} {v.rate:.0%}" for k, v in classes)]
    if f.over_limit:
        lines.append(f"  over the limit: {'; '.join(f.over_limit)}")
    lines += [f"  {t.example_id}: given {t.given!r}, suspected {t.suspected!r} "
              f"(p(given) {t.given_probability:.2f})" for t in f.top_examples[:5]]
    return lines


def cmd_audit(args: argparse.Namespace) -> int:
    from tl_core.data.audit import REPORT
    from tl_core.errors import BlockingAuditFinding
    from tl_core.pipeline import _ctx, step_audit

    try:
        uri = step_audit(args.spec, args.run)
    except BlockingAuditFinding:  # the report is written before the run stops: show it, then the error
        ctx = _ctx(args.spec, args.run)
        written = ctx.read_optional(AuditReport)
        if written is not None:
            emit(args, written.model_dump(mode="json"), "\n".join(audit_summary(written, ctx.uri(REPORT))))
        raise
    rep = _ctx(args.spec, args.run).read(AuditReport)
    emit(args, rep.model_dump(mode="json"), "\n".join(audit_summary(rep, uri)))
    return 0


def cmd_label_issues(args: argparse.Namespace) -> int:
    from tl_core.data.label_issues import LABEL_ISSUES
    from tl_core.errors import BlockingAuditFinding
    from tl_core.pipeline import _ctx
    from tl_core.train.label_check import ensure_label_issues

    ctx = _ctx(args.spec, args.run, "label-issues")
    try:
        finding = ensure_label_issues(ctx)
    except BlockingAuditFinding:  # written before it raised: show it, then the error (exit 1)
        written = ctx.read(LabelIssues)
        emit(args, written.model_dump(mode="json"), "\n".join(label_issue_summary(written, ctx.uri(LABEL_ISSUES))))
        raise
    emit(args, finding.model_dump(mode="json"), "\n".join(label_issue_summary(finding, ctx.uri(LABEL_ISSUES))))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from tl_core.pipeline import _ctx, step_split

    uri = step_split(args.spec, args.run)
    s = _ctx(args.spec, args.run).read(SplitReport)
    shares = ", ".join(f"{k} {v.rows} ({v.share:.1%} vs {s.requested[k]:.1%} asked)" for k, v in s.achieved.items())
    emit(args, {"split": uri, "counts": s.counts, "split_hash": s.split_hash,
                "achieved": {k: v.model_dump() for k, v in s.achieved.items()}},
         f"split {uri}: {shares} (hash {s.split_hash[:12]})")
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

    p = sub.add_parser("mark-complete", help="write a partition's completion marker (after its last data file)")
    p.add_argument("--spec", required=True)
    p.add_argument("--date", required=True, type=date_arg, help="the partition's day, YYYY-MM-DD")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_mark_complete)

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

    p = sub.add_parser("label-issues", help="label issues on the frozen embeddings (the step between split and "
                                            "plan; every train task reads it); blocking findings exit 1")
    add_spec_run(p)
    p.set_defaults(handler=cmd_label_issues)
