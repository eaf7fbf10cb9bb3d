"""`tl registry list|show|history|register|promote|rollback|gc`."""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path
from typing import Any

from tl_core.cliutil import emit


def _registry(args: argparse.Namespace) -> Any:
    from tl_core.config import load_spec
    from tl_core.registry import Registry, check_model_name

    spec = load_spec(args.spec)
    if args.model and check_model_name(args.model) != spec.name:
        raise ValueError(f"model {args.model!r} does not match the spec's model {spec.name!r}")
    return Registry.for_spec(spec)


def cmd(args: argparse.Namespace) -> int:
    reg = _registry(args)
    actor = getattr(args, "actor", None) or getpass.getuser()
    if args.action == "list":
        champ = reg.champion()
        rows = [{"version": v, **{k: reg.show(v).get(k) for k in ("run_id", "strategy", "shadow", "created_at")},
                 "champion": champ is not None and champ.version == v} for v in reg.list_versions()]
        text = "\n".join(f"{'*' if r['champion'] else ' '} {r['version']}  {r['strategy']:<8} "
                         f"{'shadow ' if r['shadow'] else ''}{r['run_id']}  {r['created_at']}" for r in rows)
        emit(args, rows, text or "no versions")
    elif args.action == "show":
        emit(args, reg.show(args.version))
    elif args.action == "history":
        records = reg.history()
        header = f"{'seq':>4}  {'time':<25} {'action':<9} {'version':<8} {'previous':<9} {'actor':<10} reason"
        lines = [header] + [
            f"{r['seq']:>4}  {r['at']:<25} {r['action']:<9} {str(r.get('version') or ''):<8} "
            f"{str(r.get('previous') or ''):<9} {str(r.get('actor')):<10} {str(r.get('reason') or '')[:60]}"
            for r in records]
        emit(args, records, "\n".join(lines))
    elif args.action == "register":
        from tl_core.config import load_spec
        from tl_core.runs import RunContext

        version = reg.register(RunContext.open(load_spec(args.spec), args.run), shadow=args.shadow, actor=actor)
        emit(args, {"version": version}, f"registered {version}")
    elif args.action == "promote":
        approval = json.loads(Path(args.approval).read_text()) if args.approval else {}
        expect = None if args.expect_champion in (None, "none") else args.expect_champion
        record = reg.promote(args.version, expect, approval, actor, args.reason or "", approval.get("evidence_hash"))
        emit(args, record, f"champion is now {record['version']} (was {record['previous'] or 'none'})")
    elif args.action == "rollback":
        record = reg.rollback(args.to, args.reason, actor)
        emit(args, record, f"rolled back: champion is now {record['version']} (was {record['previous']})")
    elif args.action == "gc":
        result = reg.gc(args.keep, dry_run=args.dry_run, pending_runs=tuple(args.pending_run or ()))
        emit(args, result)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("registry", help="model registry: list, show, history, register, promote, rollback, gc")
    rsub = p.add_subparsers(dest="action", required=True, metavar="<action>")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--spec", required=True, help="model spec YAML (locates the registry)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(handler=cmd)

    for name, helptext in (("list", "versions, champion marked *"), ("history", "the ledger as a table")):
        q = rsub.add_parser(name, help=helptext)
        q.add_argument("model", nargs="?", help="model name (defaults to the spec's)")
        common(q)
    q = rsub.add_parser("show", help="a version's manifest")
    q.add_argument("version")
    q.add_argument("--model")
    common(q)
    q = rsub.add_parser("register", help="register a run's selected model as a new version")
    q.add_argument("--run", required=True)
    q.add_argument("--shadow", action="store_true", help="a backfill (shadow) version")
    q.add_argument("--model")
    q.add_argument("--actor")
    common(q)
    q = rsub.add_parser("promote", help="compare-and-swap the champion pointer to VERSION")
    q.add_argument("version")
    q.add_argument("--expect-champion", required=True, help="the current champion version, or 'none'")
    q.add_argument("--approval", help="JSON file with the approval (approver, comment, evidence_hash)")
    q.add_argument("--reason")
    q.add_argument("--model")
    q.add_argument("--actor")
    common(q)
    q = rsub.add_parser("rollback", help="point the champion back (default: the previous champion)")
    q.add_argument("--to", help="target version")
    q.add_argument("--reason", required=True)
    q.add_argument("--model")
    q.add_argument("--actor")
    common(q)
    q = rsub.add_parser("gc", help="delete versions outside the last N champions")
    q.add_argument("--keep", type=int, required=True)
    q.add_argument("--dry-run", action="store_true")
    q.add_argument("--pending-run", action="append", help="run id whose version must be kept")
    q.add_argument("--model")
    common(q)
