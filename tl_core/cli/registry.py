"""`tl registry list|show|history|register|promote|rollback|gc|repair` (every action takes --json).

The registry is located by ``--spec FILE`` (its ``registry`` or ``store`` URI and its model name), or by
``--registry URI`` / ``$TL_REGISTRY_URI`` plus a model name, so an operator can read the history of a model
without its spec: ``tl registry history support-tickets --registry s3://bucket/prefix``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from tl_core.cli.util import emit

ACTIONS = ("list", "show", "history", "register", "promote", "rollback", "gc", "repair")


def _registry(args: argparse.Namespace) -> Any:
    from tl_core.registry import Registry, RegistryError, check_model_name

    model = args.model
    if args.spec:
        from tl_core.config import load_spec

        spec = load_spec(args.spec)
        if model and check_model_name(model) != spec.name:
            raise RegistryError(f"model {model!r} does not match the spec's model {spec.name!r} ({args.spec})")
        return Registry.for_spec(spec)
    uri = args.registry or os.environ.get("TL_REGISTRY_URI", "")
    if not uri or not model:
        raise RegistryError(f"tl registry {args.action}: pass --spec FILE, or a model name and --registry URI "
                            f"(or $TL_REGISTRY_URI); got model={model!r}, registry={uri!r}")
    return Registry(uri, model)


def _read_approval(path: str) -> dict[str, Any]:
    from tl_core.registry import RegistryError

    try:
        approval = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RegistryError(f"--approval {path}: file not found (expected a JSON object such as "
                            '{"approver": "...", "comment": "...", "evidence_hash": "..."})') from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"--approval {path}: not valid JSON: {exc}") from None
    if not isinstance(approval, dict):
        raise RegistryError(f"--approval {path}: expected a JSON object, got {type(approval).__name__}")
    return approval


def _override(actor: str, reason: str | None) -> Any:
    """--override-reason as a PromotionOverride by ``actor`` (None without it); RegistryError naming the fix."""
    from tl_core.registry import PromotionOverride, RegistryError

    if reason is None:
        return None
    if len(reason.strip()) < 10:
        raise RegistryError(f"--override-reason must say why in at least 10 characters, got {reason.strip()!r}")
    return PromotionOverride(actor=actor, reason=reason)


def history_table(records: list[dict[str, Any]]) -> str:
    """The ledger as a fixed-width table, oldest first."""
    header = (f"{'seq':>4}  {'time':<29} {'action':<9} {'version':<8} {'previous':<9} {'actor':<14} "
              f"{'evidence':<12} reason")
    lines = [header, "-" * len(header)]
    for r in records:
        version = r.get("version") or (",".join(r["deleted"]) if r.get("action") == "gc" else "")
        reason = str(r.get("reason") or "") + (f" (run {r['run_id']})" if r.get("run_id") else "")
        lines.append(f"{r.get('seq', '?'):>4}  {str(r.get('at', '')):<29} {str(r.get('action')):<9} "
                     f"{str(version):<8} {str(r.get('previous') or ''):<9} {str(r.get('actor') or '')[:14]:<14} "
                     f"{str(r.get('evidence_hash') or '')[:12]:<12} {reason[:80]}")
    return "\n".join(lines)


def cmd(args: argparse.Namespace) -> int:
    from tl_core.registry import RegistryError

    try:
        return _run(args)
    except (ValueError, OSError) as exc:  # bad names/versions/paths: reported like every other refusal
        raise RegistryError(str(exc)) from exc


def _run(args: argparse.Namespace) -> int:
    from tl_core.registry import RegistryError

    reg = _registry(args)
    actor = getattr(args, "actor", None) or os.environ.get("USER") or getpass.getuser()
    if args.action == "list":
        return _list(args, reg)
    if args.action == "show":
        emit(args, reg.show(args.version))
    elif args.action == "history":
        records = reg.history()
        emit(args, records, history_table(records) if records else f"{reg.model}: the ledger is empty")
    elif args.action == "register":

        if not args.spec:
            raise RegistryError("tl registry register needs --spec FILE (it locates the run)")
        from tl_core.pipeline import step_register  # the run's spec binding and step order, as in the DAG

        version = step_register(args.spec, args.run, args.shadow, actor)
        emit(args, {"version": version, "run_id": args.run}, f"registered {version}")
    elif args.action == "promote":
        approval = _read_approval(args.approval)
        expect = None if args.expect_champion == "none" else args.expect_champion
        evidence = args.evidence_hash or approval.get("evidence_hash")
        reason = args.reason or str(approval.get("comment") or "")
        record = reg.promote(args.version, expect, approval, actor, reason, evidence,
                             _override(actor, args.override_reason))
        if record.get("made_now", True):
            text = f"champion is now {record['version']} (was {record['previous'] or 'none'})"
        else:  # a retry, or an identical promotion that won the race: say whose it is, never claim it
            text = (f"{record['version']} was already promoted (from {record['previous'] or 'none'}) by ledger "
                    f"record {record.get('seq', '?')} ({record.get('actor')} at {record.get('at')}); this call "
                    "changed nothing")
        emit(args, record, text)
    elif args.action == "rollback":
        record = reg.rollback(args.to, args.reason, actor)
        emit(args, record, f"rolled back: champion is now {record['version']} (was {record['previous']})")
    elif args.action == "gc":
        result = reg.gc(args.keep, dry_run=args.dry_run, pending_runs=tuple(args.pending_run or ()))
        gone = result.get("deleted", result.get("would_delete", []))
        verb = "would delete" if args.dry_run else "deleted"
        target = f"; kept {result['rollback_target']}: rollback target" if result.get("rollback_target") else ""
        emit(args, result, f"{verb}: {', '.join(gone) or 'nothing'}; kept: {', '.join(result['kept']) or 'none'}"
                           f"{target}")
    elif args.action == "repair":
        result = reg.repair_pointer(apply=args.apply, actor=actor)
        emit(args, result, repair_text(reg.model, result))
    return 0


def repair_text(model: str, result: dict[str, Any]) -> str:
    """`tl registry repair` in words: nothing to do, what it would write, or what it wrote."""
    key = result["pointer"]
    if result["status"] == "consistent":
        if result["champion"] is None:
            return f"{model}: there is no champion pointer and the ledger records no promotion; nothing to repair"
        where = (f"agrees with ledger record {result['seq']}" if result["seq"] is not None
                 else "holds an interrupted move that the next registry call records in the ledger")
        return f"{model}: {key} {where} (champion {result['champion']}); nothing to repair"
    if result["status"] == "would_repair":
        return (f"{model}: {key} is wrong: {result['problem']}\n"
                f"would write {key} from ledger record {result['seq']} (champion {result['champion']}):\n"
                f"{result['write']}\n"
                "nothing was written; re-run with --apply to write it")
    previous = result["previous_pointer_sha256"]
    return (f"repaired {key}: champion is {result['champion']} again, as ledger record {result['seq']} says "
            f"(replaced {'sha256 ' + previous if previous else 'a missing pointer'}); ledger record "
            f"{result['repair_seq']} records the repair")


def _list(args: argparse.Namespace, reg: Any) -> int:
    """Every version; an unreadable manifest or pointer is reported (naming the key) and exits 1, the rest listed."""
    from tl_core.registry import RegistryError

    problems = []
    try:
        champ = reg.champion()
    except RegistryError as exc:
        champ = None
        problems.append(f"champion unknown: {exc}")
    rows: list[dict[str, Any]] = []
    for v in reg.list_versions():
        try:
            manifest = reg.show(v)
        except RegistryError as exc:
            rows.append({"version": v, "champion": False, "unreadable": str(exc)})
            problems.append(f"{v} unreadable: {exc}")
            continue
        rows.append({"version": v, "champion": champ is not None and champ.version == v,
                     **{k: manifest.get(k) for k in ("run_id", "strategy", "shadow", "created_at", "snapshot_hash",
                                                     "metrics")}, "gate": manifest["gate"]["decision"]})
    text = "\n".join(f"  {r['version']}  UNREADABLE: {r['unreadable']}" if "unreadable" in r else
                     f"{'*' if r['champion'] else ' '} {r['version']}  {str(r['strategy']):<8} gate {r['gate']:<4} "
                     f"{'shadow ' if r['shadow'] else ''}{r['run_id']}  {r['created_at']}" for r in rows)
    emit(args, rows, text or f"{reg.model}: no versions")
    for problem in problems:
        sys.stderr.write(f"tl registry list: error: {problem}\n")
    return 1 if problems else 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("registry", help="model registry: list, show, history, register, promote, rollback, gc, "
                                        "repair")
    rsub = p.add_subparsers(dest="action", required=True, metavar="<action>")

    def common(q: argparse.ArgumentParser, positional_model: bool = False) -> None:
        if positional_model:
            q.add_argument("model", nargs="?", help="model name (defaults to the spec's)")
        else:
            q.add_argument("--model", help="model name (defaults to the spec's)")
        q.add_argument("--spec", help="model spec YAML (locates the registry and names the model)")
        q.add_argument("--registry", help="registry store URI instead of --spec (default $TL_REGISTRY_URI)")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(handler=cmd)

    for name, helptext in (("list", "versions, champion marked *"), ("history", "the ledger as a table")):
        common(rsub.add_parser(name, help=helptext), positional_model=True)
    q = rsub.add_parser("show", help="a version's manifest")
    q.add_argument("version")
    common(q)
    q = rsub.add_parser("register", help="register a run's selected model as a new version")
    q.add_argument("--run", required=True)
    q.add_argument("--shadow", action="store_true", help="a backfill (shadow) version")
    q.add_argument("--actor")
    common(q)
    q = rsub.add_parser("promote", help="compare-and-swap the champion pointer to VERSION")
    q.add_argument("version")
    q.add_argument("--expect-champion", required=True, help="the current champion version, or 'none'")
    q.add_argument("--approval", required=True, help="JSON file with the approval (approver, comment, evidence_hash)")
    q.add_argument("--evidence-hash", help="the gate's evidence hash (default: the approval's evidence_hash)")
    q.add_argument("--reason", help="default: the approval's comment")
    q.add_argument("--override-reason", metavar="TEXT",
                   help="promote although the promotion policy refuses the version (gate not PASS, shadow, rejected "
                        "or other evidence): why, at least 10 characters; the ledger keeps it with --actor")
    q.add_argument("--actor")
    common(q)
    q = rsub.add_parser("rollback", help="point the champion back (default: the previous champion)")
    q.add_argument("--to", help="target version (default: the previous champion in the ledger)")
    q.add_argument("--reason", required=True)
    q.add_argument("--actor")
    common(q)
    q = rsub.add_parser("gc", help="delete versions outside the last N champions (never the champion or its "
                                   "rollback target)")
    q.add_argument("--keep", type=int, required=True)
    q.add_argument("--dry-run", action="store_true")
    q.add_argument("--pending-run", action="append", help="run id whose version must be kept (repeatable)")
    common(q)
    q = rsub.add_parser("repair", help="restore a champion pointer the ledger does not explain (unreadable, "
                                       "hand-edited, deleted) from the ledger's latest move")
    q.add_argument("--from-ledger", action="store_true", required=True,
                   help="restore the pointer exactly as the ledger's latest promote/rollback record says")
    q.add_argument("--apply", action="store_true", help="write it (default: a dry run that only prints the fix)")
    q.add_argument("--actor", help="who repairs it, recorded in the ledger (default $USER)")
    common(q, positional_model=True)
