"""`tl run`: a whole retrain without Airflow, through the step functions the DAG calls (tl_core.pipeline.run_local)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tl_core.cli.util import add_spec_run, date_arg, emit


def cmd_run(args: argparse.Namespace) -> int:
    from tl_core.pipeline import run_local
    from tl_core.store import new_run_id

    run_id = args.run or new_run_id()

    def progress(step: str, result: Any) -> None:
        shown = result
        if isinstance(result, dict) and "passed" in result:
            shown = "PASS" if result["passed"] else "FAIL"
        elif isinstance(result, dict) and "uri" in result:
            shown = result["uri"]
        sys.stderr.write(f"tl run {run_id}: {step} -> {shown}\n")

    results = run_local(args.spec, run_id, args.date, register=args.register, progress=progress,
                        strategies=args.strategy)
    gate = results["gate"]
    lines = [f"run {run_id}: gate {'PASS' if gate['passed'] else 'FAIL'} (candidate {gate.get('candidate')}, "
             f"champion {gate.get('champion_version') or 'none'})", *[f"  {r}" for r in gate["reasons"][:6]]]
    if "register" in results:
        lines.append(f"registered {results['register']} (promote it with promote_<model> or `tl registry promote`)")
    emit(args, {"run": run_id, "steps": results}, "\n".join(lines))
    # the program checks its own result: a candidate the gate refused is not a successful retrain
    return 0 if gate["passed"] else 3


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="a whole retrain without Airflow: snapshot to gate (and --register)")
    add_spec_run(p, run_required=False)
    p.add_argument("--date", required=True, type=date_arg, help="logical date YYYY-MM-DD")
    p.add_argument("--register", action="store_true", help="register a candidate whose gate passed")
    p.add_argument("--strategy", action="append",
                   help="train only this model (repeatable; the DAG's `strategies` run parameter); default: all")
    p.set_defaults(handler=cmd_run)
