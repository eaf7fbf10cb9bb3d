"""Our Airflow operators: the approval task of retrain_<model> and promote_<model>.

Airflow puts the plugins folder on sys.path in every component, so the DAG files import this module by name.
No tl_core here: the operator only records the approver's answer for the tasks after it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator


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

        if "error" not in event:
            user = event.get("responded_by_user") or {}
            context["ti"].xcom_push(key="answer", value={
                "chosen_options": list(event.get("chosen_options") or []),
                "params_input": dict(event.get("params_input") or {}),
                "responded_by": {"id": str(user.get("id", "")), "name": str(user.get("name", ""))},
                "responded_at": str(event.get("responded_at", "")),
            })
        elif event.get("error_type") == "timeout":
            context["ti"].xcom_push(key="answer", value={"timed_out": True, "error": str(event.get("error", ""))})
            raise AirflowFailException(f"no approval answer within {self.response_timeout}: not promoted")
        return super().execute_complete(context, event)


def approval_retry_args() -> dict[str, Any]:
    """Three retries, soon: only for a lost answer or a crashed worker (a timeout never retries; see
    RecordedApproval). Each retry is a new request for the same run, which `tl approve` answers."""
    return {"retries": 3, "retry_delay": timedelta(seconds=5), "retry_exponential_backoff": False}
