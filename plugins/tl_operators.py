"""Our Airflow operators: the approval task of retrain_<model> and promote_<model>, and the two translations from
Airflow's shapes into tl_core's (DESIGN.md "Step contract": tl_core knows no Airflow task id or HITL field).

Airflow puts the plugins folder on sys.path in every component, so the DAG files import this module by name.
Only tl_core.artifacts (pydantic, light) is imported: the operator records the approver's answer as an
ApprovalAnswer, and run_outcome turns a run's task states into a RunOutcome.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator

from tl_core.artifacts import ApprovalAnswer, RunOutcome

# The task ids of retrain_<model> and promote_<model> that a RunOutcome is read from (dags/tl_dags.py).
PROMOTE_TASK, APPROVAL_TASK, EVIDENCE_TASK = "promote", "approval", "check_evidence"
SHADOW_TASK, GATE_REJECT_TASK, NO_PROMOTION_TASK = "shadow_recorded", "reject_candidate", "record_no_promotion"


def approval_answer(event: dict[str, Any]) -> ApprovalAnswer:
    """Airflow's human-in-the-loop answer event as an ApprovalAnswer (the one place that reads its fields)."""
    if "error" in event:
        return ApprovalAnswer(timed_out=event.get("error_type") == "timeout", error=str(event.get("error", "")))
    chosen = list(event.get("chosen_options") or [])
    user = event.get("responded_by_user") or {}
    comment = (event.get("params_input") or {}).get("comment")
    return ApprovalAnswer(chosen=chosen[0] if chosen in (["Approve"], ["Reject"]) else None,
                          approver=str(user.get("name") or "") or None, comment=str(comment or ""))


def run_outcome(states: dict[str, Any]) -> RunOutcome:
    """A run's task states (task id -> state) as a RunOutcome: how its steps ended, in tl_core's words."""
    def state(task_id: str) -> str | None:
        return None if states.get(task_id) is None else str(states[task_id])

    return RunOutcome(promoted=state(PROMOTE_TASK) == "success", shadow_recorded=state(SHADOW_TASK) == "success",
                      gate_rejected=state(GATE_REJECT_TASK) == "success", approval=state(APPROVAL_TASK),
                      evidence_check=state(EVIDENCE_TASK), promotion=state(PROMOTE_TASK),
                      failed_steps=sorted(t for t, s in states.items()
                                          if str(s) == "failed" and t != NO_PROMOTION_TASK))


class RecordedApproval(ApprovalOperator):
    """ApprovalOperator that keeps the answer (XCom key "answer") on Reject and on timeout too.

    On Reject the operator skips its downstream tasks by raising, so its return value is never pushed; the
    no-promotion record needs to know who answered what, or that nobody did. A timeout fails the task without a
    retry (no answer = no promotion, never a second request); other failures retry (up to 3 times), each
    opening a new request for the same run: Airflow 3.3.2 can lose an answer given right after the request appears (the
    scheduler fails the resumed task on the stale executor event of the process that parked it), and `tl approve`
    answers that retry's request (tl_core.airflow_api.answer_when_settled).
    """

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from airflow.sdk.exceptions import AirflowFailException

        answer = approval_answer(event)
        if "error" not in event or answer.timed_out:
            context["ti"].xcom_push(key="answer", value=answer.model_dump(mode="json"))
        if answer.timed_out:
            raise AirflowFailException(f"no approval answer within {self.response_timeout}: not promoted")
        return super().execute_complete(context, event)


def approval_retry_args() -> dict[str, Any]:
    """Three retries, soon: only for a lost answer or a crashed worker (a timeout never retries; see
    RecordedApproval). Each retry is a new request for the same run, which `tl approve` answers."""
    return {"retries": 3, "retry_delay": timedelta(seconds=5), "retry_exponential_backoff": False}
