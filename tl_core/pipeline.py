"""The steps a retrain run is made of: one function per DAG task and per `tl` command.

Each takes a spec path and run id (and plain values), returns a URI or a small JSON-able dict, and is
idempotent for the same run id. The DAG tasks call exactly one of these each; the imports are lazy so
that importing this module stays cheap.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from pydantic import ValidationError

from tl_core.artifacts import ApprovalAnswer, GateOutcome, LabelIssues, NoPromotion, PromotionOverride, RunOutcome
from tl_core.config import load_spec
from tl_core.errors import DataError
from tl_core.runs import RunContext, artifact_rel
from tl_core.textsafe import code_span, escape_markdown

logger = logging.getLogger(__name__)


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


def step_label_issues(spec_path: str, run_id: str, device: str | None = None) -> str:
    """The label-issue finding on the split (frozen-backbone embeddings through the baseline's cache): written
    once, read by every train task; BlockingAuditFinding stops the run before any training."""
    from tl_core.train.label_check import ensure_label_issues

    ctx = _ctx(spec_path, run_id, "label-issues")
    ensure_label_issues(ctx, device)
    return ctx.uri(artifact_rel(LabelIssues))


def step_plan(spec_path: str, run_id: str, strategies: list[str] | None = None) -> dict[str, Any]:
    """The models this run trains (all of the spec's, or the ``strategies`` subset), frozen apart from tuned."""
    from tl_core.train.plan import run_plan

    return run_plan(_ctx(spec_path, run_id, "plan"), strategies)


def step_train(spec_path: str, run_id: str, strategy: str, device: str | None = None) -> str:
    """``device`` ('auto', 'cuda', 'cpu') overrides the spec's train.device for this call. The label-issue step
    must have run (ArtifactMissing names it): training never computes the finding on its own."""
    from tl_core.train.run import run_train

    ctx = _ctx(spec_path, run_id, "train", strategy)
    ctx.read(LabelIssues)  # the explicit step's finding, or ArtifactMissing naming `tl label-issues`
    return run_train(ctx, strategy, device=device)


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
    """The gate's outcome for the tasks after it (a GateOutcome as JSON; gate/decision.json has the decision)."""
    from tl_core.gate.step import run_gate

    return run_gate(_ctx(spec_path, run_id, "gate")).model_dump(mode="json")


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
                 evidence_hash: str | None = None, override: PromotionOverride | None = None) -> dict[str, Any]:
    """The registry's promotion (its policy refuses a version whose gate did not pass, unless ``override``)."""
    from tl_core.registry import Registry

    return Registry.for_spec(load_spec(spec_path)).promote(version, expect_champion, approval, actor,
                                                           approval.get("comment", ""), evidence_hash, override)


def step_reject(spec_path: str, run_id: str, reasons: list[str], actor: str, rejected: bool = True) -> int:
    """A 'reject' ledger record for the run; ``rejected`` False: not promoted, but nobody rejected it."""
    from tl_core.registry import Registry

    return Registry.for_spec(load_spec(spec_path)).record_rejection(run_id, reasons, actor, rejected)


def step_reject_gate_fail(spec_path: str, run_id: str, outcome: dict[str, Any]) -> int:
    """The ledger record of a candidate the gate refused (``outcome``: step_gate's GateOutcome)."""
    gate = GateOutcome.model_validate(outcome)
    return step_reject(spec_path, run_id, ["gate FAIL", *gate.reasons], "gate")


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
    """Drift and label-free accuracy of the scored partition ``dt``: {report_uri, alerts, champion_version, rows,
    not_judged} (not_judged: why the overall checks raised no alert - fewer rows than monitor.min_rows, 0 rows
    included - else None)."""
    from tl_core.monitor.drift import run_drift
    from tl_core.runs import check_run_id

    return run_drift(load_spec(spec_path), _scoring_day(dt), check_run_id(run_id))


def no_promotion_reasons(outcome: RunOutcome, answer: ApprovalAnswer | None,
                         shadow: bool) -> tuple[str, list[str], bool] | None:
    """Why a run ended without a promotion, from how its steps ended and the approval answer.

    Returns (actor, reasons, rejected) for the ledger (``rejected``: a person answered Reject), or None when there
    is nothing for this step to record (promoted, gate FAIL (recorded by its own step) or a shadow run).
    """
    if outcome.promoted or (shadow and outcome.shadow_recorded) or outcome.gate_rejected:
        return None
    answer = answer or ApprovalAnswer()
    if answer.timed_out:
        return "approval", [f"not promoted: no approval answer within the response timeout ({answer.error})"], False
    who = answer.approver or "approver" if answer.chosen else "approval"
    tail = [f"comment: {answer.comment}"] if answer.chosen and answer.comment else []
    if answer.chosen == "Reject":
        return who, [f"not promoted: rejected by {who}", *tail], True
    if answer.approved:
        if outcome.evidence_check == "failed":
            return who, [f"not promoted although approved by {who}: the evidence changed since the gate decided "
                         "(the evidence re-check failed; see its log)", *tail], False
        return who, [f"not promoted although approved by {who}: the promotion ended {outcome.promotion!r} "
                     f"(evidence re-check {outcome.evidence_check!r}); see their logs", *tail], False
    if outcome.approval == "failed":
        return who, ["not promoted: the approval step failed without an answer (e.g. the scheduler failed it, or "
                     "its retry was not answered); see its log"], False
    return who, [f"not promoted: the run stopped before an approval answer (approval {outcome.approval!r}; "
                 f"failed steps: {', '.join(outcome.failed_steps) or 'none'})"], False


def step_record_no_promotion(spec_path: str, run_id: str, outcome: dict[str, Any], answer: dict[str, Any] | None,
                             shadow: bool) -> dict[str, Any]:
    """The ledger record of a run that did not promote, with the reason read from how its steps ended
    (``outcome``: a RunOutcome, ``answer``: an ApprovalAnswer, as JSON); returns a NoPromotion as JSON."""
    ended = RunOutcome.model_validate(outcome)
    found = no_promotion_reasons(ended, None if answer is None else ApprovalAnswer.model_validate(answer), shadow)
    if found is None:
        return NoPromotion(promoted=ended.promoted, recorded=False).model_dump(mode="json")
    actor, reasons, rejected = found
    step_reject(spec_path, run_id, reasons, actor, rejected)
    return NoPromotion(promoted=False, recorded=True, actor=actor, rejected=rejected,
                       reasons=reasons).model_dump(mode="json")


def step_check_promotable(spec_path: str, version: str, override: bool, override_reason: str | None,
                          actor: str) -> dict[str, Any]:
    """Before a manual promotion asks for approval: the registry's promotion policy would accept the version.

    A refusal may be overridden only with ``override`` and a reason of at least 10 characters; the returned
    ``override`` (who and why) goes with the promotion, and the registry's ledger keeps it.
    """
    from tl_core.registry import PromotionRefused, Registry

    registry = Registry.for_spec(load_spec(spec_path))
    manifest = registry.manifest(version)
    problems = registry.promotion_problems(version)
    reason = (override_reason or "").strip()
    if problems and not override:
        raise PromotionRefused(f"{version} cannot be promoted: {'; '.join(problems)}. To promote it anyway, "
                               "trigger with override_gate: true and an override_reason (recorded in the ledger)")
    if override and len(reason) < 10:
        raise PromotionRefused(f"override_gate needs an override_reason of at least 10 characters, got {reason!r}")
    # The approval body is Markdown that Airflow renders: every value someone typed (run id, actor, reason) is text.
    lines = [f"**Manual promotion of {code_span(version)}** (run {code_span(manifest.run_id)}, strategy "
             f"{escape_markdown(manifest.strategy)}), requested by {escape_markdown(actor)}", "",
             f"- gate: {manifest.gate.decision}", f"- shadow version: {manifest.shadow}"]
    lines += [f"- {k}: {v:.4f}" for k, v in sorted(manifest.metrics.items()) if isinstance(v, int | float)]
    if override:
        lines.append(f"- **override** by {escape_markdown(actor)}: {escape_markdown(reason)} "
                     f"({escape_markdown('; '.join(problems) or 'nothing to override')})")
    return {"version": version, "requested_by": actor, "summary_markdown": "\n".join(lines),
            "override": {"by": actor, "reason": reason, "overrides": problems} if override else None}


def _approved_by(run_id: str, answer: dict[str, Any] | None) -> ApprovalAnswer:
    """The approval answer, when it is Approve; ValueError naming the answer otherwise."""
    try:
        parsed = ApprovalAnswer.model_validate(answer) if answer else None
    except ValidationError:  # not an answer plugins/ wrote: refused like any answer that is not Approve
        parsed = None
    if parsed is None or not parsed.approved:
        raise ValueError(f"run {run_id}: promote needs the approval answer Approve, got {answer}")
    return parsed


def step_promote_approved(spec_path: str, run_id: str, version: str, decision: dict[str, Any],
                          answer: dict[str, Any] | None) -> dict[str, Any]:
    """The nightly run's promotion, once approved: the gate's champion and evidence hash are the expectation
    (``decision``: step_gate's GateOutcome)."""
    approved = _approved_by(run_id, answer)
    gate = GateOutcome.model_validate(decision)
    approver = approved.approver or "approver"
    record = {"run_id": run_id, "chosen": approved.chosen, "approver": approver,
              "comment": approved.comment or "approved in Airflow"}
    return step_promote(spec_path, version, gate.champion_version, record, approver, gate.evidence_hash)


def step_promote_manual(spec_path: str, run_id: str, version: str, expect_champion: str | None, reason: str,
                        checked: dict[str, Any], answer: dict[str, Any] | None) -> dict[str, Any]:
    """A manual promotion, once approved; ``checked`` is step_check_promotable's result (override, who asked)."""
    approved = _approved_by(run_id, answer)
    approver = approved.approver or "approver"
    expect = None if expect_champion in (None, "", "none") else expect_champion
    asked = checked.get("override")
    override = None if not asked else PromotionOverride(actor=str(asked["by"]), reason=str(asked["reason"]))
    record = {"run_id": run_id, "manual": True, "chosen": approved.chosen, "approver": approver,
              "requested_by": checked["requested_by"], "comment": approved.comment or reason}
    return step_promote(spec_path, version, expect, record, approver, override=override)


def _finished(ctx: RunContext, step: str, part: str, logical_date: str, strategies: list[str] | None) -> Any:
    """What ``step`` (of train: model ``part``) returned when it finished on this run, read back from its outputs;
    None when it has not finished, or finished for another logical date or other strategies (then the step runs
    and refuses the change itself)."""
    from tl_core.artifacts import Plan, SnapshotManifest
    from tl_core.runs import STEP_DONE

    if not ctx.step_done(step, part):
        return None
    if step == "snapshot":
        day = _logical_date(ctx.run_id, logical_date).isoformat()
        return ctx.uri(STEP_DONE[step]) if ctx.read(SnapshotManifest).logical_date[:10] == day else None
    if step == "plan":
        from tl_core.train.plan import is_frozen, planned_model_ids

        if ctx.read(Plan).requested != strategies:
            return None
        ids = planned_model_ids(ctx)
        return {"frozen": [m for m in ids if is_frozen(m)], "tuned": [m for m in ids if not is_frozen(m)],
                "uri": ctx.uri(STEP_DONE[step])}
    if step == "gate":
        from tl_core.gate.step import read_gate_outcome

        return read_gate_outcome(ctx).model_dump(mode="json")
    if step == "train":
        return ctx.uri("models", part)
    if step == "export":
        return ctx.uri("export/model.onnx")
    return ctx.uri(STEP_DONE[step])


def run_local(spec_path: str, run_id: str, logical_date: str, register: bool = False,
              progress: Any = None, strategies: list[str] | None = None) -> dict[str, Any]:
    """A whole retrain without Airflow, through the same step functions the DAG calls, in the DAG's order.

    snapshot -> audit -> split -> label-issues -> plan (all models, or ``strategies``) -> train (each) -> select
    -> export -> evaluate -> gate, and with ``register`` the registration of a passed candidate (a FAIL is recorded
    in the ledger as the DAG does; both are idempotent per run in the registry).
    Promotion stays approval-gated (`promote_<model>` or `tl registry promote`). ``progress(step, result)`` is
    called after each step. Returns each step's result; a step that raises stops the run with its error.
    A step that already finished on this run (RunContext.step_done) is skipped, its result read back: re-running
    a finished run (e.g. to add ``register``) trains and writes nothing again. The spec is checked first: a run
    is bound to the spec it started with, skipped steps included.
    """
    from tl_core.runs import STEP_DONE

    report = progress or (lambda step, result: None)
    results: dict[str, Any] = {}
    ctx = _ctx(spec_path, run_id)

    def step(name: str, fn: Any, *args: Any, stage: str = "", part: str = "") -> Any:
        """Run step ``name`` (of STEP_ORDER ``stage``, default the name), unless it has finished on this run."""
        stage = stage or name
        done = _finished(ctx, stage, part, logical_date, strategies) if stage in STEP_DONE else None
        if done is not None:
            logger.info("step %s already done for run %s, skipped", name, run_id)
        results[name] = fn(*args) if done is None else done
        report(name, results[name])
        return results[name]

    step("snapshot", step_snapshot, spec_path, run_id, logical_date)
    step("audit", step_audit, spec_path, run_id)
    step("split", step_split, spec_path, run_id)
    step("label-issues", step_label_issues, spec_path, run_id)
    plan = step("plan", step_plan, spec_path, run_id, strategies)
    for model_id in [*plan["frozen"], *plan["tuned"]]:
        step(f"train_{model_id}", step_train, spec_path, run_id, model_id, stage="train", part=model_id)
    step("select", step_select, spec_path, run_id)
    step("export", step_export, spec_path, run_id)
    step("evaluate", step_evaluate, spec_path, run_id)
    decision = step("gate", step_gate, spec_path, run_id)
    if register and decision["passed"]:
        step("register", step_register, spec_path, run_id, False)
    elif register:
        step("reject_candidate", step_reject_gate_fail, spec_path, run_id, decision)
    return results
