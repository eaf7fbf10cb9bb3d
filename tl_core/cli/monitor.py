"""`tl score` (batch scoring of an unlabeled partition) and `tl drift` (its drift report)."""

from __future__ import annotations

import argparse

from tl_core.cli.util import date_arg, emit, run_id_arg


def cmd_score(args: argparse.Namespace) -> int:
    from tl_core.pipeline import step_drift, step_score
    from tl_core.store import new_run_id

    run_id = args.run or new_run_id()
    uri = step_score(args.spec, run_id, args.date)
    payload: dict[str, object] = {"scores": uri}
    text = f"scored dt={args.date} -> {uri}"
    if not args.no_drift:
        drift = step_drift(args.spec, run_id, args.date)
        payload["drift"] = drift
        text += _drift_text(drift)
    emit(args, payload, text)
    return 0


def _drift_text(drift: dict[str, object]) -> str:
    alerts = list(drift["alerts"])  # type: ignore[call-overload]
    lines = [f"\ndrift report (champion {drift['champion_version']}): {drift['report_uri']}",
             *([f"overall checks: {drift['not_judged']}"] if drift.get("not_judged") else []),
             f"alerts: {len(alerts)}", *(f"  - {a}" for a in alerts)]
    return "\n".join(lines)


def cmd_drift(args: argparse.Namespace) -> int:
    from tl_core.pipeline import step_drift
    from tl_core.store import new_run_id

    drift = step_drift(args.spec, args.run or new_run_id(), args.date)
    emit(args, drift, _drift_text(drift).lstrip("\n"))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="model spec YAML")
    p.add_argument("--date", required=True, type=date_arg, help="the partition's date YYYY-MM-DD (dt=...)")
    p.add_argument("--run", type=run_id_arg, default=None, help="run id recorded with the output (default: manual-...)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("score", help="score an unlabeled partition with the champion (challenger in shadow), "
                                     "then write its drift report")
    _common(p)
    p.add_argument("--no-drift", action="store_true", help="score only; skip the drift report")
    p.set_defaults(handler=cmd_score)

    p = sub.add_parser("drift", help="drift and label-free accuracy report of a scored partition")
    _common(p)
    p.set_defaults(handler=cmd_drift)
