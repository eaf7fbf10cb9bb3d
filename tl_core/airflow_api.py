"""The Airflow REST API v2 client and the approval logic behind `tl approve` / `tl reject`.

Airflow has no CLI for human-in-the-loop answers; the answer is
``PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/-1/hitlDetails``. The base URL comes from
TL_AIRFLOW_URL (default http://127.0.0.1:8080); credentials from TL_AIRFLOW_USER / TL_AIRFLOW_PASSWORD, or
the simple auth manager's generated password file in $AIRFLOW_HOME. Only HTTP here: tl_core never imports Airflow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tl_core.errors import TLError

logger = logging.getLogger(__name__)
# How old an approval request must be before `tl approve` answers it (the scheduler must have processed the
# executor event of the process that parked the task first; measured under load in test_approval_race.py).
SETTLE_S = float(os.environ.get("TL_APPROVAL_SETTLE_S", "15"))
# how long a retry's request (Airflow lost the answer before) settles first; doubled on each further retry
RETRY_SETTLE_S = 15.0


class AirflowAPIError(TLError):
    """The Airflow REST API refused or failed a request (``status``: the HTTP status, None when unreachable)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AirflowTimeout(AirflowAPIError):
    """The API server did not answer in time (the request may or may not have been applied)."""


TIMEOUT_ENV = "TL_AIRFLOW_TIMEOUT_S"


def _timeout_from_env() -> float:
    """Seconds to wait for one HTTP answer: ``TL_AIRFLOW_TIMEOUT_S``, default 30."""
    raw = os.environ.get(TIMEOUT_ENV, "30")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise AirflowAPIError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


class AirflowClient:
    def __init__(self, base_url: str | None = None, user: str | None = None, password: str | None = None) -> None:
        self.base = (base_url or os.environ.get("TL_AIRFLOW_URL", "http://127.0.0.1:8080")).rstrip("/")
        self.user = user or os.environ.get("TL_AIRFLOW_USER", "admin")
        self.password = password or os.environ.get("TL_AIRFLOW_PASSWORD") or self._generated_password()
        self._token: str | None = None
        # per HTTP request; a SQLite-backed API server under load can take many seconds to commit a write
        self.timeout_s = _timeout_from_env()
        # a caller that waits anyway (``tl approve``) keeps re-reading a busy server until its own deadline
        self.read_deadline: float | None = None
        self.read_retry_wait_s = 2.0

    def _generated_password(self) -> str | None:
        home = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow"))
        path = home / "simple_auth_manager_passwords.json.generated"
        if path.exists():
            return json.loads(path.read_text()).get(self.user)  # type: ignore[no-any-return]
        return None

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - URL from our own config
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise AirflowAPIError(f"{method} {path} -> HTTP {exc.code}: {detail}", exc.code) from None
        except urllib.error.URLError as exc:
            raise AirflowAPIError(f"cannot reach Airflow at {self.base} ({exc.reason}); set TL_AIRFLOW_URL") from None
        except TimeoutError:
            raise AirflowTimeout(f"{method} {path}: Airflow at {self.base} did not answer within "
                                 f"{self.timeout_s:g} s") from None
        return json.loads(raw) if raw else None

    def token(self) -> str:
        if self._token is None:
            if not self.password:
                raise AirflowAPIError("no Airflow password: set TL_AIRFLOW_PASSWORD or AIRFLOW_HOME")
            self._token = self._request("POST", "/auth/token", {"username": self.user, "password": self.password},
                                        auth=False)["access_token"]
        return self._token

    def get(self, path: str) -> Any:
        """GET is idempotent: a read that timed out (a busy API server, e.g. SQLite under load) is tried twice more,
        and on until ``read_deadline`` (a monotonic time) when one is set."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._request("GET", path)
            except AirflowTimeout as exc:
                patient = (self.read_deadline is not None
                           and time.monotonic() + self.read_retry_wait_s < self.read_deadline)
                if attempt >= 3 and not patient:
                    if attempt > 3:
                        raise AirflowTimeout(f"{exc} ({attempt} tries)") from None
                    raise
                logger.warning("%s (try %d); reading again", exc, attempt)
                time.sleep(self.read_retry_wait_s)

    def post(self, path: str, body: Any) -> Any:
        return self._request("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self._request("PATCH", path, body)

    def latest_run(self, dag_id: str) -> dict[str, Any]:
        runs = self.get(f"/api/v2/dags/{q(dag_id)}/dagRuns?order_by=-run_after&limit=1")["dag_runs"]
        if not runs:
            raise AirflowAPIError(f"DAG {dag_id} has no runs")
        return runs[0]  # type: ignore[no-any-return]

    def pending_approvals(self, dag_id: str = "~", run_id: str = "~") -> list[dict[str, Any]]:
        details = self.get(f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/hitlDetails")["hitl_details"]
        # unanswered, and the task still waiting (a timed-out or cleared request is no longer pending)
        waiting = ("awaiting_input", "deferred", None)
        return [d for d in details
                if not d.get("response_received") and (d.get("task_instance") or {}).get("state") in waiting]

    def answer(self, dag_id: str, run_id: str, task_id: str, option: str, comment: str) -> Any:
        path = f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}/-1/hitlDetails"
        return self.patch(path, {"chosen_options": [option], "params_input": {"comment": comment}})

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}")  # type: ignore[no-any-return]

    def hitl_detail(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self.get(  # type: ignore[no-any-return]
            f"/api/v2/dags/{q(dag_id)}/dagRuns/{q(run_id)}/taskInstances/{q(task_id)}/-1/hitlDetails")


# Task states in which an approval task has not yet acted on an answer (it is parked, or resuming).
PENDING_STATES = ("awaiting_input", "deferred", "scheduled", "queued", "running", "restarting")
# ... and in which Airflow will open a new request for it (a retry).
RETRY_STATES = ("up_for_retry",)


@dataclasses.dataclass
class ApprovalOutcome:
    """What became of an answer: the task's final state, and every try that had to be answered."""

    option: str
    responded_by: str
    task_state: str
    answered_tries: list[int]


def answer_when_settled(client: AirflowClient, dag_id: str, run_id: str, task_id: str, option: str, comment: str,
                        settle_s: float = SETTLE_S, timeout_s: float = 600.0, poll_s: float = 1.0,
                        retry_settle_s: float = RETRY_SETTLE_S) -> ApprovalOutcome:
    """Answer an approval request once it has settled, then confirm the approval task acted on the answer.

    Airflow 3.3.2 races an immediate answer: the PATCH resumes the parked task (state queued) before the
    scheduler has processed the executor's "success" event of the process that parked it; the scheduler then
    reads that event as a task killed externally and fails the approval task ("finished with state success, but
    the task instance's state attribute is queued"), and the answer is lost. So this waits until the request is
    ``settle_s`` old before answering, then watches the task: if Airflow lost the answer anyway, the approval
    task's retry opens a new request for the same run, and that request gets the same answer (every answered try
    is reported). It fails, naming the state, when the task ends without having used the answer.
    """
    deadline = time.monotonic() + timeout_s
    # this waits up to timeout_s anyway: an API server too busy to answer a read for minutes is waited out too
    client.read_deadline = deadline
    try:
        return _answer_and_confirm(client, dag_id, run_id, task_id, option, comment, settle_s, retry_settle_s,
                                   deadline, poll_s)
    finally:
        client.read_deadline = None


def _answer_and_confirm(client: AirflowClient, dag_id: str, run_id: str, task_id: str, option: str, comment: str,
                        settle_s: float, retry_settle_s: float, deadline: float, poll_s: float) -> ApprovalOutcome:
    tries: list[int] = []
    responded_by = ""
    while True:
        # a retry's request (Airflow lost the answer before) settles longer each time: 15 s, 30 s, 60 s by default
        settle = settle_s if not tries else max(settle_s, retry_settle_s) * 2 ** (len(tries) - 1)
        ti = _wait_for_request(client, dag_id, run_id, task_id, settle, deadline, tries)
        result = _answer_once(client, dag_id, run_id, task_id, option, comment, deadline)
        responded_by = str((result.get("responded_by") or {}).get("name") or responded_by)
        tries.append(int(ti["try_number"]))
        state = _wait_for_outcome(client, dag_id, run_id, task_id, int(ti["try_number"]), deadline, poll_s)
        if state in RETRY_STATES:
            logger.warning("%s run %s: Airflow lost the answer to %s try %d (task now %s); answering its retry",
                           dag_id, run_id, task_id, tries[-1], state)
            continue
        if state != "success":
            why = _state_mismatch_note(client, dag_id, run_id, task_id)
            raise AirflowAPIError(
                f"{dag_id} run {run_id}: answered {option!r} on {task_id} try {tries[-1]}, but the task ended "
                f"{state!r} without using the answer and will not retry{why}; see the task's log")
        return ApprovalOutcome(option, responded_by, state, tries)


def _answer_once(client: AirflowClient, dag_id: str, run_id: str, task_id: str, option: str, comment: str,
                 deadline: float) -> dict[str, Any]:
    """PATCH the answer; a server error (e.g. SQLite "database is locked" under load) or no answer in time is
    retried, and a 409 after one is accepted when the stored answer is ours (the failed-looking request had been
    committed)."""
    retried = False
    while True:
        try:
            return client.answer(dag_id, run_id, task_id, option, comment)  # type: ignore[no-any-return]
        except AirflowAPIError as exc:
            if exc.status == 409 and retried:
                detail = client.hitl_detail(dag_id, run_id, task_id)
                if detail.get("chosen_options") == [option] and (detail.get("params_input") or {}).get(
                        "comment", "") == comment:
                    return {"chosen_options": [option], "responded_by": detail.get("responded_by_user") or {}}
            timed_out = isinstance(exc, AirflowTimeout)  # the PATCH may or may not have been applied
            if (not timed_out and (exc.status is None or exc.status < 500)) or time.monotonic() > deadline:
                raise
            logger.warning("answering %s run %s failed on the server (%s); retrying", dag_id, run_id, exc)
            retried = True
            time.sleep(1.0)


def _state_mismatch_note(client: AirflowClient, dag_id: str, run_id: str, task_id: str) -> str:
    """Names Airflow's executor-event race when its event log recorded it for the task ("state mismatch")."""
    query = urllib.parse.urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "event": "state mismatch"})
    try:
        logs = client.get(f"/api/v2/eventLogs?{query}").get("event_logs") or []
    except AirflowAPIError:
        return ""
    if not logs:
        return ""
    return (f" (Airflow's scheduler failed it on a stale executor event {len(logs)} time(s): 'state mismatch' in "
            "the event log)")


def _request_age_s(detail: dict[str, Any]) -> float:
    created = datetime.fromisoformat(str(detail["created_at"]).replace("Z", "+00:00"))
    return (datetime.now(UTC) - created).total_seconds()


def _wait_for_request(client: AirflowClient, dag_id: str, run_id: str, task_id: str, settle_s: float,
                      deadline: float, answered: list[int]) -> dict[str, Any]:
    """The approval task instance once its (unanswered) request is ``settle_s`` old.

    A retry reuses its task instance's request row, created_at included (Airflow's upsert_hitl_detail), so a
    retry's age is counted from when this client first saw that try parked, not from created_at.
    """
    first_seen: dict[int, float] = {}
    while True:
        ti = client.task_instance(dag_id, run_id, task_id)
        if ti.get("state") in ("awaiting_input", "deferred") and int(ti["try_number"]) not in answered:
            detail = client.hitl_detail(dag_id, run_id, task_id)
            if detail.get("response_received"):
                raise AirflowAPIError(f"{dag_id} run {run_id}: {task_id} try {ti['try_number']} was already "
                                      f"answered {detail.get('chosen_options')} by "
                                      f"{(detail.get('responded_by_user') or {}).get('name')}")
            seen = first_seen.setdefault(int(ti["try_number"]), time.monotonic())
            age = _request_age_s(detail) if not answered else time.monotonic() - seen
            wait = settle_s - age
            if wait <= 0:
                return ti
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
        elif ti.get("state") not in (*PENDING_STATES, *RETRY_STATES, None):
            raise AirflowAPIError(f"{dag_id} run {run_id}: {task_id} is {ti.get('state')!r}; there is no request "
                                  "to answer")
        else:
            time.sleep(1.0)
        if time.monotonic() > deadline:
            raise AirflowAPIError(f"{dag_id} run {run_id}: no settled {task_id} request to answer in time "
                                  f"(task {ti.get('state')!r})")


def _wait_for_outcome(client: AirflowClient, dag_id: str, run_id: str, task_id: str, try_number: int,
                      deadline: float, poll_s: float) -> str:
    """The approval task's state once it has left the answered try (success, up_for_retry, failed, ...)."""
    while time.monotonic() < deadline:
        ti = client.task_instance(dag_id, run_id, task_id)
        state = str(ti.get("state"))
        if int(ti.get("try_number") or 0) > try_number and state in (*PENDING_STATES, "up_for_retry"):
            return "up_for_retry"  # the retry already started: its request comes next
        if state not in PENDING_STATES:
            return state
        time.sleep(poll_s)
    raise AirflowAPIError(f"{dag_id} run {run_id}: {task_id} did not act on the answer in time")


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="~")
