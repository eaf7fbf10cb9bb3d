"""The webhook notifier: an Airflow ``BaseNotifier`` that sends tl-retrain's messages to the spec's channels.

Used by dags/tl_dags.py as ``on_failure_callback`` (every task), in the approval task's ``notifiers`` (pending
approval, with the link to the approval and to the evidence report), as ``on_success_callback`` of the gate-FAIL
record, of promotion and rollback, and of the drift task when it raised alerts. The messages are built by
tl_core.notify (pure functions) from the task context; tl_core is imported lazily (this module loads in every
Airflow component). Airflow's own notifiers (SMTP, Slack, ...) plug in next to it: see docs/production.md.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseNotifier

logger = logging.getLogger(__name__)
EVENTS = ("failure", "gate_fail", "pending_approval", "promotion", "drift")


def public_url() -> str:
    """Base of links in messages: $TL_AIRFLOW_PUBLIC_URL (e.g. https://airflow.example.com), else relative."""
    return os.environ.get("TL_AIRFLOW_PUBLIC_URL", "").rstrip("/")


def view_link(template: str, dag_id: str, run_id: str) -> str:
    """``template`` ("/tl/report/{dag_id}/{run_id}") filled with the DAG id and the URL-quoted run id."""
    return public_url() + template.format(dag_id=dag_id, run_id=quote(run_id, safe="/"))


class TLWebhookNotifier(BaseNotifier):
    """Sends the ``event`` message of the model whose spec is at ``spec_path`` to the channels the spec's
    ``notify.webhooks`` subscribe to that event (no channel: nothing is sent, nothing is read but the spec).

    ``source_task`` names the task whose XCom the message reports: the gate decision (gate_fail), the promotion or
    rollback record (promotion; default: the task itself), the drift result (drift)."""

    def __init__(self, spec_path: str, event: str, source_task: str | None = None) -> None:
        super().__init__()
        if event not in EVENTS:
            raise ValueError(f"notification event {event!r} is not one of {EVENTS}")
        self.spec_path = spec_path
        self.event = event
        self.source_task = source_task

    def notify(self, context: Any) -> None:
        from tl_core import notify
        from tl_core.config import load_spec

        spec = load_spec(self.spec_path)
        if not spec.notify.channels(self.event):
            return
        notify.send(spec.notify, self.build(spec.name, context))

    def build(self, model: str, context: Any) -> dict[str, Any]:
        """The message of this notifier's event, from the task context."""
        from tl_core import notify

        ti = context["ti"]
        dag_id, run_id = ti.dag_id, ti.run_id
        report = view_link("/tl/report/{dag_id}/{run_id}", dag_id, run_id)
        source = self.source_task or ti.task_id
        if self.event == "failure":
            return notify.failure_message(
                model, dag_id, run_id, ti.task_id, f"{type(context.get('exception')).__name__}: "
                f"{context.get('exception')}" if context.get("exception") else "",
                view_link("/dags/{dag_id}/runs/{run_id}/tasks/" + ti.task_id, dag_id, run_id),
                getattr(ti, "try_number", None))
        if self.event == "gate_fail":
            return notify.gate_fail_message(model, dag_id, run_id, ti.xcom_pull(task_ids=source), report)
        if self.event == "pending_approval":
            task = context["task"]
            timeout = getattr(task, "response_timeout", None)
            return notify.pending_approval_message(model, dag_id, run_id, str(getattr(task, "subject", "")),
                                                   approval_link(context), report, str(timeout or ""))
        if self.event == "promotion":
            return notify.promotion_message(model, dag_id, run_id, ti.xcom_pull(task_ids=source),
                                            view_link("/tl/registry/{dag_id}?run_id={run_id}", dag_id, run_id))
        return notify.drift_message(model, dag_id, run_id, ti.xcom_pull(task_ids=source) or {})


def approval_link(context: Any) -> str:
    """The approval task's "required actions" page (Airflow's own link, from $TL_AIRFLOW_PUBLIC_URL or
    [api] base_url; the same path relative to the UI when neither is set)."""
    from airflow.providers.standard.operators.hitl import HITLOperator

    base = public_url()
    try:
        return HITLOperator.generate_link_to_ui_from_context(context=context, base_url=base or None)
    except ValueError:  # no base URL configured anywhere: a link relative to the Airflow UI
        ti = context["ti"]
        return view_link("/dags/{dag_id}/runs/{run_id}/tasks/" + ti.task_id + "/required_actions", ti.dag_id,
                         ti.run_id) + f"?map_index={ti.map_index}"
