"""The steps a retrain run is made of: one function per DAG task and per `tl` command.

Each takes a spec path and run id (and plain values), returns a URI or a small JSON-able dict, and is
idempotent for the same run id. The DAG tasks call exactly one of these each; the imports are lazy so
that importing this module stays cheap.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from tl_core.config import load_spec
from tl_core.runs import RunContext


def _ctx(spec_path: str, run_id: str) -> RunContext:
    ctx = RunContext.open(load_spec(spec_path), run_id)
    ctx.save_spec()
    return ctx


def step_snapshot(spec_path: str, run_id: str, logical_date: str, window_days: int | None = None) -> str:
    """``window_days`` overrides the spec's data.window_days for this run only (the manifest records it)."""
    from tl_core.data.snapshot import run_snapshot

    ctx = _ctx(spec_path, run_id)
    if window_days is not None:
        if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days < 1:
            raise ValueError(f"run {run_id}: window_days override must be a whole number of days >= 1, "
                             f"got {window_days!r}")
        data = ctx.spec.data.model_copy(update={"window_days": window_days})
        ctx = RunContext(spec=ctx.spec.model_copy(update={"data": data}), store=ctx.store, run_id=ctx.run_id)
    return run_snapshot(ctx, date.fromisoformat(logical_date[:10]))


def step_audit(spec_path: str, run_id: str) -> str:
    from tl_core.data.audit import run_audit

    return run_audit(_ctx(spec_path, run_id))


def step_split(spec_path: str, run_id: str) -> str:
    from tl_core.data.split import run_split

    return run_split(_ctx(spec_path, run_id))


def step_train(spec_path: str, run_id: str, strategy: str) -> str:
    from tl_core.train.run import run_train

    return run_train(_ctx(spec_path, run_id), strategy)


def step_select(spec_path: str, run_id: str) -> str:
    from tl_core.train.select import run_select

    return run_select(_ctx(spec_path, run_id))


def step_export(spec_path: str, run_id: str) -> str:
    from tl_core.export.onnx_export import run_export

    return run_export(_ctx(spec_path, run_id))


def step_evaluate(spec_path: str, run_id: str) -> str:
    from tl_core.evaluate.run import run_evaluate

    return run_evaluate(_ctx(spec_path, run_id))


def step_gate(spec_path: str, run_id: str) -> dict[str, Any]:
    from tl_core.evaluate.run import run_gate

    return run_gate(_ctx(spec_path, run_id))


def step_register(spec_path: str, run_id: str, shadow: bool) -> str:
    from tl_core.registry import Registry

    ctx = _ctx(spec_path, run_id)
    return Registry.for_spec(ctx.spec).register(ctx, shadow=shadow)


def step_check_evidence(spec_path: str, run_id: str, expected_hash: str) -> str:
    """Refuse when anything the gate decided on changed since (champion pointer, candidate files, reports)."""
    from tl_core.evaluate.run import current_evidence_hash
    from tl_core.registry import RegistryError

    current = current_evidence_hash(_ctx(spec_path, run_id))
    if current != expected_hash:
        raise RegistryError(
            f"run {run_id}: the evidence changed since the gate decided (hash {expected_hash[:12]}... now "
            f"{current[:12]}...): the champion pointer, the candidate's files or the reports were modified; re-run"
        )
    return current


def step_promote(spec_path: str, version: str, expect_champion: str | None, approval: dict[str, Any], actor: str,
                 evidence_hash: str | None = None) -> dict[str, Any]:
    from tl_core.registry import Registry

    return Registry.for_spec(load_spec(spec_path)).promote(version, expect_champion, approval, actor,
                                                           approval.get("comment", ""), evidence_hash)


def step_reject(spec_path: str, run_id: str, reasons: list[str], actor: str) -> int:
    from tl_core.registry import Registry

    return Registry.for_spec(load_spec(spec_path)).record_rejection(run_id, reasons, actor)


def step_rollback(spec_path: str, to: str | None, reason: str, actor: str) -> dict[str, Any]:
    from tl_core.registry import Registry

    return Registry.for_spec(load_spec(spec_path)).rollback(to, reason, actor)
