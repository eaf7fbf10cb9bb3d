"""`tl approve` / `tl reject` / `tl status`: the REST calls they make and every error path.

A small recording HTTP server on 127.0.0.1 stands in for the API server's routes here (what is sent: paths,
encoding, token, body); the same commands run against real Airflow in tests/deploy/test_celery_topology.py and
tests/demo/test_demo_by_hand.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tl_core.airflow_api import AirflowAPIError, AirflowClient, answer_when_settled
from tl_core.cli import main

RUN = "manual__2026-11-01T00:00:00+00:00"


class Recorder(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, dict[str, str], Any]] = []
    # when the approval task's state was served and answers arrived: (monotonic time, (method, state, try))
    call_times: list[tuple[float, tuple[str, str | None, int]]] = []
    answered: set[tuple[str, int]] = set()
    # the approval task instance as successive GETs see it (the last one repeats)
    task_states: list[dict[str, Any]] = []
    current_try = 1
    # PATCH answers that fail first (e.g. SQLite "database is locked"): (status, what was committed anyway:
    # "ours" = the request's answer, "other" = someone else's, None = nothing; status 0 = no answer in time)
    patch_failures: list[tuple[int, str | None]] = []
    stored: dict[str, Any] | None = None
    # hitlDetails GETs still to answer late (a busy API server: longer than the client's timeout)
    slow_reads = 0
    # the DAG's hitlDetails across runs (/dagRuns/~/hitlDetails); None: one pending, one answered, one timed out
    details: list[dict[str, Any]] | None = None

    def log_message(self, *args: Any) -> None:
        return None

    def _reply(self, code: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.calls.append((method, self.path, dict(self.headers), body))
        if self.path == "/auth/token":
            if body == {"username": "admin", "password": "s3cret"}:
                return self._reply(201, {"access_token": "tok-123"})
            return self._reply(401, {"detail": "Invalid credentials"})
        if self.headers.get("Authorization") != "Bearer tok-123":
            return self._reply(401, {"detail": "Not authenticated"})
        if self.path.endswith("/taskInstances/approval") and method == "GET" and Recorder.task_states:
            ti = Recorder.task_states.pop(0) if len(Recorder.task_states) > 1 else Recorder.task_states[0]
            Recorder.current_try = ti["try_number"]
            Recorder.call_times.append((time.monotonic(), ("GET", ti["state"], ti["try_number"])))
            return self._reply(200, ti)
        if self.path.endswith("/approval/-1/hitlDetails") and method == "GET":
            if Recorder.slow_reads > 0:
                Recorder.slow_reads -= 1
                time.sleep(0.6)
            if Recorder.stored is not None:  # what a committed answer looks like
                return self._reply(200, {"created_at": "2026-11-01T00:00:00Z", "response_received": True,
                                         **Recorder.stored, "responded_by_user": {"id": "admin", "name": "admin"}})
            return self._reply(200, {"created_at": "2026-11-01T00:00:00Z", "response_received": False})
        if self.path.endswith("/hitlDetails") and method == "PATCH":
            Recorder.call_times.append((time.monotonic(), ("PATCH", None, Recorder.current_try)))
            if Recorder.patch_failures:
                code, committed = Recorder.patch_failures.pop(0)
                if committed:
                    self.answered.add((self.path, Recorder.current_try))
                    Recorder.stored = body if committed == "ours" else {"chosen_options": ["Reject"],
                                                                        "params_input": {"comment": "not ours"}}
                if code == 0:  # the server is still busy when the client stops waiting
                    time.sleep(1.0)
                    code = 500
                return self._reply(code, {"detail": {"reason": "Database error"}})
            if (self.path, Recorder.current_try) in self.answered:
                return self._reply(409, {"detail": "already been updated"})
            self.answered.add((self.path, Recorder.current_try))
            return self._reply(200, {"chosen_options": body["chosen_options"], "params_input": body["params_input"],
                                     "responded_by": {"id": "admin", "name": "admin"}, "responded_at": "now"})
        if self.path.startswith("/api/v2/dags/retrain_m1/dagRuns/~/hitlDetails"):
            pending = {"subject": "Promote m1: candidate v0002", "response_received": False,
                       "task_instance": {"dag_run_id": RUN, "state": "awaiting_input"}}
            answered = {**pending, "subject": "old", "response_received": True}
            timed_out = {**pending, "subject": "gone", "task_instance": {"dag_run_id": "x", "state": "failed"}}
            details = [pending, answered, timed_out] if Recorder.details is None else Recorder.details
            return self._reply(200, {"hitl_details": details, "total_entries": len(details)})
        if "/dagRuns?" in self.path:
            return self._reply(200, {"dag_runs": [{"dag_run_id": RUN, "state": "running", "run_type": "manual",
                                                   "logical_date": "2026-11-01T00:00:00Z"}], "total_entries": 1})
        return self._reply(404, {"detail": f"no route {self.path}"})

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    Recorder.calls, Recorder.answered, Recorder.task_states, Recorder.current_try = [], set(), [], 1
    Recorder.call_times = []
    Recorder.patch_failures, Recorder.stored, Recorder.slow_reads, Recorder.details = [], None, 0, None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setenv("TL_AIRFLOW_URL", url)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("TL_AIRFLOW_PASSWORD", raising=False)
    monkeypatch.delenv("TL_AIRFLOW_USER", raising=False)
    (tmp_path / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": "s3cret"}))
    try:
        yield url
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_approve_patches_the_hitl_detail_with_a_token(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--comment", "looks fine", "--no-wait"]) == 0
    assert "Approve: retrain_m run manual__2026-11-01T00:00:00+00:00 (by admin)" in capsys.readouterr().out
    token_call, patch_call = Recorder.calls
    assert token_call[:2] == ("POST", "/auth/token")
    method, path, headers, body = patch_call
    assert method == "PATCH"
    assert path == ("/api/v2/dags/retrain_m/dagRuns/manual__2026-11-01T00%3A00%3A00%2B00%3A00"
                    "/taskInstances/approval/-1/hitlDetails")
    assert headers["Authorization"] == "Bearer tok-123"
    assert body == {"chosen_options": ["Approve"], "params_input": {"comment": "looks fine"}}


def _ti(state: str, try_number: int) -> dict[str, Any]:
    return {"state": state, "try_number": try_number}


def test_approve_waits_for_a_settled_request_and_confirms_the_task_used_it(
        server: str, capsys: pytest.CaptureFixture[str]) -> None:
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("success", 1)]
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--settle-seconds", "0"]) == 0
    assert capsys.readouterr().out == f"Approve: retrain_m run {RUN} (by admin); approval success\n"
    ti = "/api/v2/dags/retrain_m/dagRuns/manual__2026-11-01T00%3A00%3A00%2B00%3A00/taskInstances/approval"
    assert [c[:2] for c in Recorder.calls[1:]] == [("GET", ti), ("GET", ti + "/-1/hitlDetails"),
                                                   ("PATCH", ti + "/-1/hitlDetails"), ("GET", ti)]


def test_approve_answers_the_retry_when_airflow_lost_the_answer(server: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("up_for_retry", 1), _ti("awaiting_input", 2),
                            _ti("awaiting_input", 2), _ti("success", 2)]
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--settle-seconds", "0", "--json",
                 "--retry-settle-seconds", "0.6"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["answered_tries"] == [1, 2] and outcome["task_state"] == "success"
    assert [c[0] for c in Recorder.calls].count("PATCH") == 2
    # the retry reuses the request row (created_at of try 1, long past): its settling counts from when the retry
    # was first seen parked, so the second PATCH comes at least --retry-settle-seconds after that
    seen_retry = next(i for i, c in enumerate(Recorder.call_times) if c[1] == ("GET", "awaiting_input", 2))
    patches = [t for t, call in Recorder.call_times if call[0] == "PATCH"]
    assert patches[1] - Recorder.call_times[seen_retry][0] >= 0.6
    # the task ends without using the answer: an error naming the state, never a silent success
    Recorder.calls, Recorder.answered = [], set()
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("failed", 1)]
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--settle-seconds", "0"]) == 1
    assert "answered 'Approve' on approval try 1, but the task ended 'failed'" in capsys.readouterr().err


def test_approve_retries_a_server_error_and_accepts_its_own_committed_answer(
        server: str, capsys: pytest.CaptureFixture[str]) -> None:
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("success", 1)]
    Recorder.patch_failures = [(500, None)]  # rolled back: the retry answers
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--settle-seconds", "0"]) == 0
    assert [c[0] for c in Recorder.calls].count("PATCH") == 2
    assert "approval success" in capsys.readouterr().out
    Recorder.calls, Recorder.answered = [], set()
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("success", 1)]
    Recorder.patch_failures = [(503, "ours")]  # committed although it failed: the retry's 409 is our own answer
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--settle-seconds", "0", "--comment", "ok"]) == 0
    assert [c[0] for c in Recorder.calls].count("PATCH") == 2 and "approval success" in capsys.readouterr().out
    # someone else's answer behind the 409 is never taken for ours
    Recorder.calls, Recorder.answered, Recorder.stored = [], set(), None
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("success", 1)]
    Recorder.patch_failures = [(500, "other")]
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--settle-seconds", "0"]) == 1
    assert "HTTP 409" in capsys.readouterr().err
    Recorder.calls, Recorder.answered, Recorder.stored = [], set(), None
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("success", 1)]
    Recorder.patch_failures = [(400, None)]  # a client error is not retried
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--settle-seconds", "0"]) == 1
    assert [c[0] for c in Recorder.calls].count("PATCH") == 1 and "HTTP 400" in capsys.readouterr().err


def test_approve_retries_a_patch_that_timed_out(server: str, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TL_AIRFLOW_TIMEOUT_S", "0.3")
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("success", 1)]
    Recorder.patch_failures = [(0, "ours")]  # committed, but the client gave up waiting: the 409 is our answer
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--settle-seconds", "0", "--comment", "ok"]) == 0
    assert [c[0] for c in Recorder.calls].count("PATCH") == 2 and "approval success" in capsys.readouterr().out
    Recorder.calls, Recorder.answered, Recorder.stored = [], set(), None
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("success", 1)]
    Recorder.patch_failures = [(0, None), (0, None)]  # nothing committed: the third PATCH answers
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--settle-seconds", "0"]) == 0
    assert [c[0] for c in Recorder.calls].count("PATCH") == 3


def test_approve_waits_out_an_api_server_too_busy_to_answer_reads(server: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that times out more than the client's three tries is read again while the approval's own deadline
    lasts (CI: a SQLite-backed server answered no read for over 90 s and `tl approve` gave up on a live request)."""
    monkeypatch.setenv("TL_AIRFLOW_TIMEOUT_S", "0.3")
    Recorder.task_states = [_ti("awaiting_input", 1), _ti("success", 1)]
    Recorder.slow_reads = 5
    client = AirflowClient()
    client.read_retry_wait_s = 0.05
    outcome = answer_when_settled(client, "retrain_m", RUN, "approval", "Approve", "busy", settle_s=0, timeout_s=60)
    assert outcome.task_state == "success" and outcome.answered_tries == [1]
    hitl_reads = [c for c in Recorder.calls if c[0] == "GET" and c[1].endswith("/-1/hitlDetails")]
    assert len(hitl_reads) == 6 and client.read_deadline is None  # the patience ends with the approval
    # without a caller's deadline the same server is named after three tries
    Recorder.slow_reads = 5
    with pytest.raises(AirflowAPIError, match=r"hitlDetails: Airflow at .* did not answer within 0\.3 s$"):
        client.hitl_detail("retrain_m", RUN, "approval")


@pytest.mark.parametrize("raw", ["soon", "0", "-5"])
def test_a_bad_http_timeout_is_named(server: str, monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("TL_AIRFLOW_TIMEOUT_S", raw)
    with pytest.raises(AirflowAPIError, match=f"TL_AIRFLOW_TIMEOUT_S={raw!r}: expected a positive number"):
        AirflowClient()


def test_reject_without_run_answers_the_single_pending_request_and_says_which(
        server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reject", "--dag", "retrain_m1", "--task", "approval", "--no-wait"]) == 0
    out, err = capsys.readouterr()
    assert f"Reject: retrain_m1 run {RUN}" in out
    assert f"Reject for retrain_m1 run {RUN}: Promote m1: candidate v0002" in err  # echoed before answering
    paths = [c[1] for c in Recorder.calls]
    assert paths[1] == "/api/v2/dags/retrain_m1/dagRuns/~/hitlDetails"  # never "the newest run"
    assert "/dagRuns/manual__2026-11-01T00%3A00%3A00%2B00%3A00/taskInstances/approval/-1/hitlDetails" in paths[2]
    assert Recorder.calls[2][3] == {"chosen_options": ["Reject"], "params_input": {"comment": ""}}


@pytest.mark.parametrize("pending", [0, 2])
def test_approve_without_run_refuses_unless_exactly_one_request_is_pending(
        server: str, capsys: pytest.CaptureFixture[str], pending: int) -> None:
    """Issue 30: `tl approve` without --run approved whatever the newest run asked next, unseen."""
    Recorder.details = [{"subject": f"Promote m1: candidate v000{i + 2} (strategy lora) over champion v0001",
                         "body": f"**Decision: {'PASS' if i else 'FAIL'}**", "created_at": f"2026-11-0{i + 1}T00:00Z",
                         "response_received": False, "task_instance": {"dag_run_id": f"run-{i}", "state": "deferred"}}
                        for i in range(pending)]
    assert main(["approve", "--dag", "retrain_m1", "--no-wait"]) == 1
    err = capsys.readouterr().err
    assert f"{pending} approval requests are pending for DAG retrain_m1; pass --run RUN" in err
    if pending:
        assert ("run run-0: Promote m1: candidate v0002 (strategy lora) over champion v0001 (gate FAIL), requested "
                "2026-11-01T00:00Z") in err and "run run-1: Promote m1: candidate v0003" in err
    assert [c[0] for c in Recorder.calls].count("PATCH") == 0  # nothing answered


def test_second_answer_is_refused_with_the_servers_reason(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--no-wait"]) == 0
    assert main(["approve", "--dag", "retrain_m", "--run", RUN, "--no-wait"]) != 0
    err = capsys.readouterr().err
    assert "HTTP 409" in err and "already been updated" in err and "hitlDetails" in err


def test_wrong_password_and_missing_password(server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(AirflowAPIError, match=r"POST /auth/token -> HTTP 401: .*Invalid credentials"):
        AirflowClient(password="wrong").token()
    (tmp_path / "simple_auth_manager_passwords.json.generated").unlink()
    with pytest.raises(AirflowAPIError, match="no Airflow password: set TL_AIRFLOW_PASSWORD or AIRFLOW_HOME"):
        AirflowClient().token()
    monkeypatch.setenv("TL_AIRFLOW_PASSWORD", "s3cret")
    assert AirflowClient().token() == "tok-123"


def test_unreachable_airflow_names_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = AirflowClient(f"http://127.0.0.1:{port}", "admin", "x")
    with pytest.raises(AirflowAPIError, match=rf"cannot reach Airflow at http://127.0.0.1:{port} .*TL_AIRFLOW_URL"):
        client.token()


def test_status_by_model_name(server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "m1.yaml").write_text(yaml.safe_dump({"name": "m1", "labels": ["a", "b"],
                                                     "store": (tmp_path / "store").as_uri(),
                                                     "backbone": {"library": "transformers", "name": "bert"}}))
    monkeypatch.setenv("TL_CONFIGS_DIR", str(configs))
    assert main(["status", "m1", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["model"] == "m1" and status["champion"] is None
    assert status["runs"] == [{"dag_run_id": RUN, "state": "running", "run_type": "manual",
                               "logical_date": "2026-11-01T00:00:00Z"}]
    assert status["pending_approvals"] == [{"run_id": RUN, "subject": "Promote m1: candidate v0002"}]

    assert main(["status", "m9"]) == 1
    assert "no spec named 'm9' in" in capsys.readouterr().err
    assert main(["status"]) == 1
    assert "tl status needs a MODEL name or --spec PATH" in capsys.readouterr().err
    assert status["registry"] == (tmp_path / "store").as_uri()  # "none" says where it looked
    # Airflow down: the registry part still answers, the error says where it looked, and the command fails
    monkeypatch.setenv("TL_AIRFLOW_URL", "http://127.0.0.1:9")
    assert main(["status", "m1"]) == 1
    out = capsys.readouterr().out
    assert f"model m1: champion none (registry {(tmp_path / 'store').as_uri()})" in out
    assert "cannot reach Airflow at http://127.0.0.1:9" in out


def test_status_names_a_missing_configs_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tl_core.cli.ops import spec_by_name
    from tl_core.errors import SpecError

    monkeypatch.setenv("TL_CONFIGS_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SpecError, match=r"no configs folder at .*nowhere to look up model 'm1' in: set TL_CONFIGS_DIR"):
        spec_by_name("m1")


def test_a_read_that_times_out_is_retried_and_then_named() -> None:
    """A busy API server (SQLite under load) may not answer a GET in time: it is tried twice more (on until the
    read deadline, when the caller set one), then named."""
    calls: list[str] = []
    slow_for = {"n": 2}

    class Slow(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            calls.append(self.path)
            if len(calls) <= slow_for["n"]:
                threading.Event().wait(1.0)  # longer than the client's timeout
            body = b'{"ok": true}'
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = AirflowClient(f"http://127.0.0.1:{httpd.server_port}", "admin", "pw")
        client._token, client.timeout_s, client.read_retry_wait_s = "t", 0.3, 0.1
        assert client.get("/api/v2/x") == {"ok": True} and len(calls) == 3
        calls.clear()
        slow_for["n"] = 10
        with pytest.raises(AirflowAPIError, match=r"GET /api/v2/x: Airflow at http://127\.0\.0\.1:\d+ did not "
                                                  r"answer within 0\.3 s$"):
            client.get("/api/v2/x")
        assert len(calls) == 3
        # a caller that waits anyway (tl approve) sets a read deadline: a server busy for more tries is waited out
        calls.clear()
        slow_for["n"] = 6
        client.read_deadline = time.monotonic() + 60
        assert client.get("/api/v2/x") == {"ok": True} and len(calls) == 7
        # ... and past that deadline the timeout is named with the number of tries
        calls.clear()
        slow_for["n"] = 100
        client.read_deadline = time.monotonic() + 2
        with pytest.raises(AirflowAPIError, match=r"GET /api/v2/x: .* did not answer within 0\.3 s \((\d+) tries\)"):
            client.get("/api/v2/x")
        assert 4 <= len(calls) <= 7
    finally:
        httpd.shutdown()
