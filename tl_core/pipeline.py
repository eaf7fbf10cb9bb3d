"""The steps a retrain run is made of: one function per DAG task and per `tl` command.

Each takes a spec path and run id (and plain values), returns a URI or a small JSON-able dict, and is
idempotent for the same run id. The DAG tasks call exactly one of these each; the imports are lazy so
that importing this module stays cheap.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from tl_core.config import load_spec
from tl_core.errors import DataError
from tl_core.runs import RunContext


def _ctx(spec_path: str, run_id: str, step: str | None = None, part: str = "") -> RunContext:
    """The run as ``step`` sees it (see tl_core/runs.py): the run is bound to the spec it started with, the
    step is recorded as having consumed every earlier step's artifacts, and its writes cannot change what a
    later step already used. Without ``step`` (a reader) the spec is only checked."""
    ctx = RunContext.open(load_spec(spec_path), run_id)
    if step is None:
        ctx.check_spec()
        return ctx
    return ctx.begin_step(step, part)


def _logical_date(run_id: str, logical_date: str) -> date:
    try:
        return date.fromisoformat(logical_date[:10])
    except (TypeError, ValueError):
        raise DataError(f"run {run_id}: logical date {logical_date!r} is not a calendar date YYYY-MM-DD") from None


def step_snapshot(spec_path: str, run_id: str, logical_date: str, window_days: int | None = None) -> str:
    """``window_days`` overrides the spec's data.window_days for this run only (the manifest records it)."""
    from tl_core.config import MAX_WINDOW_DAYS
    from tl_core.data.snapshot import run_snapshot

    day = _logical_date(run_id, logical_date)
    if window_days is not None and (isinstance(window_days, bool) or not isinstance(window_days, int)
                                    or not 1 <= window_days <= MAX_WINDOW_DAYS):
        raise DataError(f"run {run_id}: window_days override must be a whole number of days from 1 to "
                        f"{MAX_WINDOW_DAYS}, got {window_days!r}")
    ctx = _ctx(spec_path, run_id, "snapshot")
    if window_days is not None:
        data = ctx.spec.data.model_copy(update={"window_days": window_days})
        ctx = RunContext(spec=ctx.spec.model_copy(update={"data": data}), store=ctx.store, run_id=ctx.run_id)
    return run_snapshot(ctx, day)


def step_audit(spec_path: str, run_id: str) -> str:
    from tl_core.data.audit import run_audit

    return run_audit(_ctx(spec_path, run_id, "audit"))


def step_split(spec_path: str, run_id: str) -> str:
    from tl_core.data.split import run_split

    return run_split(_ctx(spec_path, run_id, "split"))


def step_plan(spec_path: str, run_id: str, strategies: list[str] | None = None) -> dict[str, Any]:
    """The models this run trains (all of the spec's, or the ``strategies`` subset), frozen apart from tuned."""
    from tl_core.train.plan import run_plan

    return run_plan(_ctx(spec_path, run_id, "plan"), strategies)


def step_train(spec_path: str, run_id: str, strategy: str, device: str | None = None) -> str:
    """``device`` ('auto', 'cuda', 'cpu') overrides the spec's train.device for this call."""
    from tl_core.train.run import run_train

    return run_train(_ctx(spec_path, run_id, "train", strategy), strategy, device=device)


def step_select(spec_path: str, run_id: str) -> str:
    from tl_core.train.select import run_select

    return run_select(_ctx(spec_path, run_id, "select"))


def step_export(spec_path: str, run_id: str) -> str:
    from tl_core.export.onnx_export import run_export

    return run_export(_ctx(spec_path, run_id, "export"))


def step_evaluate(spec_path: str, run_id: str) -> str:
    from tl_core.evaluate.run import run_evaluate
    from tl_core.export.champion import champion_for

    ctx = _ctx(spec_path, run_id, "evaluate")
    return run_evaluate(ctx, champion_for(ctx))


def step_gate(spec_path: str, run_id: str) -> dict[str, Any]:
    from tl_core.gate.step import run_gate

    return run_gate(_ctx(spec_path, run_id, "gate"))


def step_register(spec_path: str, run_id: str, shadow: bool, actor: str = "tl") -> str:
    from tl_core.registry import Registry

    ctx = _ctx(spec_path, run_id, "register")
    return Registry.for_spec(ctx.spec).register(ctx, shadow=shadow, actor=actor)


def step_check_evidence(spec_path: str, run_id: str, expected_hash: str) -> str:
    """Refuse when anything the gate decided on changed since (champion pointer, candidate files, reports)."""
    from tl_core.evaluate.evidence import current_evidence_hash
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


def _scoring_day(dt: str) -> date:
    try:
        day = date.fromisoformat(dt)
    except (TypeError, ValueError):
        day = None
    if day is None or len(dt) != 10:
        raise DataError(f"scoring date {dt!r} is not a calendar date YYYY-MM-DD (the partition dt=...)")
    return day


def step_score(spec_path: str, run_id: str, dt: str) -> str:
    """Score the unlabeled partition ``dt`` with the champion (and the challenger in shadow); returns the URI of
    ``<store>/scores/<model>/dt=<dt>/``. Idempotent: the same inputs and versions are not scored twice."""
    from tl_core.monitor.score import score_partition
    from tl_core.runs import check_run_id

    return score_partition(load_spec(spec_path), _scoring_day(dt), check_run_id(run_id))


def step_drift(spec_path: str, run_id: str, dt: str) -> dict[str, Any]:
    """Drift and label-free accuracy of the scored partition ``dt``: {report_uri, alerts, champion_version}."""
    from tl_core.monitor.drift import run_drift
    from tl_core.runs import check_run_id

    return run_drift(load_spec(spec_path), _scoring_day(dt), check_run_id(run_id))


def no_promotion_reasons(states: dict[str, str], answer: dict[str, Any] | None, decision: dict[str, Any] | None,
                         shadow: bool) -> tuple[str, list[str]] | None:
    """Why a retrain run ended without a promotion, read from its task states and the approval answer.

    Returns (actor, reasons) for the ledger, or None when there is nothing for this task to record (promoted,
    gate FAIL (reject_candidate records it) or a shadow run).
    """
    if states.get("promote") == "success":
        return None
    if shadow and states.get("shadow_recorded") == "success":
        return None
    if decision is not None and not decision.get("passed") and states.get("reject_candidate") == "success":
        return None
    answer = answer or {}
    approval = states.get("approval")
    if answer.get("timed_out"):
        return "approval", [f"not promoted: no approval answer within the response timeout ({answer.get('error')})"]
    chosen = answer.get("chosen_options")
    who = str((answer.get("responded_by") or {}).get("name") or "approver") if chosen else "approval"
    comment = (answer.get("params_input") or {}).get("comment") if chosen else None
    tail = [f"comment: {comment}"] if comment else []
    if chosen and chosen != ["Approve"]:
        return who, [f"not promoted: rejected by {who} (answer {chosen})", *tail]
    if chosen == ["Approve"]:
        if states.get("check_evidence") == "failed":
            return who, [f"not promoted although approved by {who}: the evidence changed since the gate decided "
                         "(task check_evidence failed; see its log)", *tail]
        return who, [f"not promoted although approved by {who}: task promote ended {states.get('promote')!r} "
                     f"(check_evidence {states.get('check_evidence')!r}); see their logs", *tail]
    failed = sorted(t for t, s in states.items() if s == "failed" and t != "record_no_promotion")
    if approval == "failed":
        return who, ["not promoted: the approval task failed without an answer (e.g. the scheduler failed it, or "
                     "its retry was not answered); see its log"]
    return who, [f"not promoted: the run stopped before an approval answer (approval {approval!r}; "
                 f"failed tasks: {', '.join(failed) or 'none'})"]


def step_record_no_promotion(spec_path: str, run_id: str, states: dict[str, str], answer: dict[str, Any] | None,
                             decision: dict[str, Any] | None, shadow: bool) -> str:
    """The ledger record of a run that did not promote, with the reason read from the task states."""
    outcome = no_promotion_reasons(states, answer, decision, shadow)
    if outcome is None:
        return "promoted" if states.get("promote") == "success" else "recorded elsewhere (gate FAIL or shadow run)"
    actor, reasons = outcome
    step_reject(spec_path, run_id, reasons, actor)
    return "; ".join(reasons)


def step_check_promotable(spec_path: str, version: str, override: bool, override_reason: str | None,
                          actor: str) -> dict[str, Any]:
    """Before a manual promotion asks for approval: the version's gate passed and it is not a shadow version.

    Either may be overridden only with ``override`` and a reason of at least 10 characters; the returned
    ``override`` (who and why) goes into the promotion's ledger record. Fails closed on a manifest without a
    gate result.
    """
    from tl_core.registry import Registry, RegistryError

    manifest = Registry.for_spec(load_spec(spec_path)).show(version)
    raw_gate = manifest.get("gate")
    gate: dict[str, Any] = raw_gate if isinstance(raw_gate, dict) else {}
    problems = []
    if gate.get("passed") is not True:
        problems.append(f"its gate decision is {'FAIL' if gate.get('passed') is False else 'missing'} "
                        f"(manifest gate.passed = {gate.get('passed')!r})")
    if manifest.get("shadow"):
        problems.append(f"it is a shadow version (registered by backfill run {manifest.get('run_id')})")
    reason = (override_reason or "").strip()
    if problems and not override:
        raise RegistryError(f"{version} cannot be promoted: {'; '.join(problems)}. To promote it anyway, trigger "
                            "with override_gate: true and an override_reason (recorded in the ledger)")
    if override and len(reason) < 10:
        raise RegistryError(f"override_gate needs an override_reason of at least 10 characters, got {reason!r}")
    metrics = manifest.get("metrics") or {}
    lines = [f"**Manual promotion of {version}** (run {manifest.get('run_id')}, strategy {manifest.get('strategy')}), "
             f"requested by {actor}", "", f"- gate: {'PASS' if gate.get('passed') is True else 'FAIL or missing'}",
             f"- shadow version: {bool(manifest.get('shadow'))}"]
    lines += [f"- {k}: {v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
    if override:
        lines.append(f"- **override** by {actor}: {reason} ({'; '.join(problems) or 'nothing to override'})")
    return {"version": version, "requested_by": actor, "summary_markdown": "\n".join(lines),
            "override": {"by": actor, "reason": reason, "overrides": problems} if override else None}


def _approved_by(run_id: str, answer: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """(approver, answer) for a run whose approval answer is Approve; ValueError naming the answer otherwise."""
    answer = answer or {}
    if answer.get("chosen_options") != ["Approve"]:
        raise ValueError(f"run {run_id}: promote needs the approval answer Approve, got {answer}")
    return str((answer.get("responded_by") or {}).get("name") or "approver"), answer


def step_promote_approved(spec_path: str, run_id: str, version: str, decision: dict[str, Any],
                          answer: dict[str, Any] | None) -> dict[str, Any]:
    """The nightly run's promotion, once approved: the gate's champion and evidence hash are the expectation."""
    approver, answer = _approved_by(run_id, answer)
    record = {"run_id": run_id, "chosen": answer["chosen_options"], "approver": approver,
              "comment": (answer.get("params_input") or {}).get("comment") or "approved in Airflow",
              "allow_shadow": False}
    return step_promote(spec_path, version, decision["champion_version"], record, approver,
                        decision["evidence_hash"])


def step_promote_manual(spec_path: str, run_id: str, version: str, expect_champion: str | None, reason: str,
                        checked: dict[str, Any], answer: dict[str, Any] | None) -> dict[str, Any]:
    """A manual promotion, once approved; ``checked`` is step_check_promotable's result (override, who asked)."""
    approver, answer = _approved_by(run_id, answer)
    expect = None if expect_champion in (None, "", "none") else expect_champion
    record = {"run_id": run_id, "manual": True, "chosen": answer["chosen_options"], "approver": approver,
              "requested_by": checked["requested_by"],
              "comment": (answer.get("params_input") or {}).get("comment") or reason,
              "override": checked.get("override"), "allow_shadow": bool(checked.get("override"))}
    return step_promote(spec_path, version, expect, record, approver)


def run_local(spec_path: str, run_id: str, logical_date: str, register: bool = False,
              progress: Any = None, strategies: list[str] | None = None) -> dict[str, Any]:
    """A whole retrain without Airflow, through the same step functions the DAG calls, in the DAG's order.

    snapshot -> audit -> split -> plan (all models, or ``strategies``) -> train (each) -> select -> export ->
    evaluate -> gate, and with ``register`` the registration of a passed candidate (a FAIL is recorded in the
    ledger as the DAG does).
    Promotion stays approval-gated (`promote_<model>` or `tl registry promote`). ``progress(step, result)`` is
    called after each step. Returns each step's result; a step that raises stops the run with its error.
    """
    report = progress or (lambda step, result: None)
    results: dict[str, Any] = {}

    def step(name: str, fn: Any, *args: Any) -> Any:
        results[name] = fn(*args)
        report(name, results[name])
        return results[name]

    step("snapshot", step_snapshot, spec_path, run_id, logical_date)
    step("audit", step_audit, spec_path, run_id)
    step("split", step_split, spec_path, run_id)
    plan = step("plan", step_plan, spec_path, run_id, strategies)
    for model_id in [*plan["frozen"], *plan["tuned"]]:
        step(f"train_{model_id}", step_train, spec_path, run_id, model_id)
    step("select", step_select, spec_path, run_id)
    step("export", step_export, spec_path, run_id)
    step("evaluate", step_evaluate, spec_path, run_id)
    decision = step("gate", step_gate, spec_path, run_id)
    if register and decision["passed"]:
        step("register", step_register, spec_path, run_id, False)
    elif register:
        step("reject_candidate", step_reject, spec_path, run_id, ["gate FAIL", *decision["reasons"]], "gate")
    return results
