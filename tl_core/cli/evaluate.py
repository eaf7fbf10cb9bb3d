"""`tl evaluate`, `tl gate`."""

from __future__ import annotations

import argparse

from tl_core.cli.util import add_spec_run, emit


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tl_core.pipeline import step_evaluate

    uri = step_evaluate(args.spec, args.run)
    emit(args, {"report": uri}, f"evaluation report {uri} (HTML beside it)")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from tl_core.pipeline import step_gate

    result = step_gate(args.spec, args.run)
    # A terminal gets the reasons as typed; the Markdown (escaped data) is the approval body's, shown by Airflow.
    lines = [f"Decision: {'PASS' if result['passed'] else 'FAIL'} (candidate {result['candidate']}, champion "
             f"{result['champion_version'] or 'none'})", *(f"  {r}" for r in result["reasons"])]
    emit(args, result, "\n".join(lines) + f"\n\nreport: {result['report_uri']}")
    return 0 if result["passed"] else 3


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("evaluate", help="score every model of the run (and the champion) on the test split")
    add_spec_run(p)
    p.set_defaults(handler=cmd_evaluate)
    p = sub.add_parser("gate", help="decide on the run's evaluation report (exit 3 on FAIL)")
    add_spec_run(p)
    p.set_defaults(handler=cmd_gate)
