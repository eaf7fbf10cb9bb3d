"""`tl approve`, `tl reject`, `tl status`: answer approvals and look at a model through Airflow's REST API v2.

The REST client and the settle-then-confirm approval logic live in :mod:`tl_core.airflow_api`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from typing import Any

from tl_core.airflow_api import RETRY_SETTLE_S, SETTLE_S, AirflowAPIError, AirflowClient, answer_when_settled, q
from tl_core.cli.util import emit
from tl_core.errors import SpecError


def _request_line(detail: dict[str, Any]) -> str:
    """One pending request as a person reads it: run, subject (candidate and champion), gate decision, age."""
    ti = detail.get("task_instance") or {}
    decision = re.search(r"Decision: (PASS|FAIL)", detail.get("body") or "")
    return (f"run {ti.get('dag_run_id')}: {detail.get('subject')}"
            f"{f' (gate {decision.group(1)})' if decision else ''}, requested {detail.get('created_at')}")


def _single_pending_run(client: AirflowClient, dag: str, task: str, option: str) -> str:
    """The run of the one pending approval request of ``dag``; with none or several, refuse and list them
    (answering "whatever the newest run asks next" could approve a candidate nobody looked at)."""
    pending = [d for d in client.pending_approvals(dag) if (d.get("task_instance") or {}).get("task_id", task) == task]
    if len(pending) != 1:
        listed = "".join(f"\n  {_request_line(d)}" for d in pending) or " (a run whose request is not open yet needs "\
            "--run)"
        raise AirflowAPIError(f"{len(pending)} approval requests are pending for DAG {dag}; pass --run RUN to "
                              f"answer one{listed}")
    print(f"{option} for {dag} {_request_line(pending[0])}", file=sys.stderr)  # what is being answered, first
    return str(pending[0]["task_instance"]["dag_run_id"])


def _answer(args: argparse.Namespace, option: str) -> int:
    client = AirflowClient(args.url)
    run_id = args.run or _single_pending_run(client, args.dag, args.task, option)
    if args.no_wait:
        result = client.answer(args.dag, run_id, args.task, option, args.comment or "")
        emit(args, result, f"{option}: {args.dag} run {run_id} (by {result['responded_by']['name']})")
        return 0
    outcome = answer_when_settled(client, args.dag, run_id, args.task, option, args.comment or "",
                                  settle_s=args.settle_seconds, timeout_s=args.timeout,
                                  retry_settle_s=args.retry_settle_seconds)
    tries = outcome.answered_tries
    note = "" if len(tries) == 1 else f"; Airflow lost the answer to try {tries[0]}, so tries {tries} were answered"
    emit(args, dataclasses.asdict(outcome) | {"dag_id": args.dag, "run_id": run_id},
         f"{option}: {args.dag} run {run_id} (by {outcome.responded_by}); {args.task} {outcome.task_state}{note}")
    return 0


def cmd_approve(args: argparse.Namespace) -> int:
    return _answer(args, "Approve")


def cmd_reject(args: argparse.Namespace) -> int:
    return _answer(args, "Reject")


def spec_by_name(model: str | None) -> Any:
    """The spec named ``model`` in TL_CONFIGS_DIR (default: the source checkout's configs/)."""
    from tl_core.config import configs_dir, load_spec_folder

    if not model:
        raise SpecError("tl status needs a MODEL name or --spec PATH")
    folder = configs_dir()
    if not folder.is_dir():
        raise SpecError(f"no configs folder at {folder} to look up model {model!r} in: set TL_CONFIGS_DIR to the "
                        "folder of the model specs, or pass --spec PATH")
    found = load_spec_folder(folder)  # another model's broken spec does not stop this one
    if model in found.specs:
        return found.specs[model][1]
    if model in found.claimed:
        raise SpecError(found.errors[found.claimed[model]])
    raise SpecError(f"no spec named {model!r} in {folder} (TL_CONFIGS_DIR); found {sorted(found.specs)}")


def cmd_status(args: argparse.Namespace) -> int:
    from tl_core.config import dag_id, load_spec, resolve_store_uri
    from tl_core.registry import Registry

    spec = load_spec(args.spec) if args.spec else spec_by_name(args.model)
    champion = Registry.for_spec(spec).champion()
    registry = resolve_store_uri(spec.registry_root)  # "none" must say where it looked
    status: dict[str, Any] = {"model": spec.name, "champion": champion.version if champion else None,
                              "registry": registry}
    lines = [f"model {spec.name}: champion {status['champion'] or 'none'} (registry {registry})"]
    try:
        client = AirflowClient(args.url)
        retrain = dag_id("retrain", spec.name)
        runs = client.get(f"/api/v2/dags/{q(retrain)}/dagRuns?order_by=-run_after&limit=5")["dag_runs"]
        status["runs"] = [{k: r.get(k) for k in ("dag_run_id", "state", "run_type", "logical_date")} for r in runs]
        status["pending_approvals"] = [{"run_id": d["task_instance"]["dag_run_id"], "subject": d["subject"]}
                                       for d in client.pending_approvals(retrain)]
        lines += [f"  run {r['dag_run_id']}: {r['state']} ({r['run_type']})" for r in status["runs"]]
        lines += [f"  pending approval: {p['run_id']}: {p['subject']}" for p in status["pending_approvals"]]
    except AirflowAPIError as exc:  # the registry part still answers; the command did not reach its goal
        status["airflow"] = str(exc)
        lines.append(f"  Airflow: {exc}")
    emit(args, status, "\n".join(lines))
    return 1 if "airflow" in status else 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, handler, helptext in (("approve", cmd_approve, "approve a pending promotion in Airflow"),
                                    ("reject", cmd_reject, "reject a pending promotion in Airflow")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--dag", required=True, help="e.g. retrain_support-tickets")
        p.add_argument("--run", help="dag run id (default: the one run whose approval request is pending; none or "
                       "several: refused, listing them)")
        p.add_argument("--task", default="approval", help="the approval task id")
        p.add_argument("--comment", help="recorded with the answer")
        p.add_argument("--url", help="Airflow base URL (default TL_AIRFLOW_URL)")
        p.add_argument("--settle-seconds", type=float, default=SETTLE_S,
                       help=f"answer only once the request is this old (default {SETTLE_S:g}; see answer_when_settled)")
        p.add_argument("--retry-settle-seconds", type=float, default=RETRY_SETTLE_S,
                       help=f"a retry's request (Airflow lost the answer) waits this long first, doubled on each "
                            f"further retry (default {RETRY_SETTLE_S:g})")
        p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the task to use the answer")
        p.add_argument("--no-wait", action="store_true",
                       help="answer at once and return without confirming that the task used the answer")
        p.add_argument("--json", action="store_true")
        p.set_defaults(handler=handler)
    p = sub.add_parser("status", help="champion, last runs and pending approvals of a model")
    p.add_argument("model", nargs="?", help="model name, looked up in TL_CONFIGS_DIR (or use --spec)")
    p.add_argument("--spec", help="path to the model's spec YAML")
    p.add_argument("--url", help="Airflow base URL (default TL_AIRFLOW_URL)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)
