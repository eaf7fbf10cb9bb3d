"""Approvals answered the moment they appear, in a real `airflow standalone` (127.0.0.1, LocalExecutor) on
PostgreSQL, the production database.

Airflow 3.3.2 loses such answers: the answer resumes the parked approval task (queued) before the scheduler has
processed the executor's success event of the process that parked it, reads that event as a task killed
externally and fails the task. Measured with the plain ApprovalOperator and immediate answers: 9 of 10 runs lost
their approval. `tl approve` answers once the request has settled and answers the approval task's retry when
Airflow lost the answer anyway; here five runs a batch are answered by `tl approve` started the instant each
request shows, and every one must reach its promote task.

PostgreSQL rather than the demo's SQLite: under five concurrent runs on a slow 2-core CI machine the SQLite-backed
standalone answered no API read for over 90 s (one write lock for the API server, scheduler, triggerer and task
processes), which tests the database, not the approval.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tl_core.demo.local_airflow import REPO, LocalAirflow
from topology_fixtures import Postgres

DAG_ID = "approval_race"
# Five concurrent runs a batch (on 2 cores, with ten, the machine's load rather than the approval was tested).
RUNS = 5
# The production approval task (plugins/tl_operators.py), with a downstream task that needs the Approve answer.
DAG_FILE = f'''
import sys
from datetime import datetime, timedelta
sys.path.insert(0, {str(REPO / "plugins")!r})
from tl_operators import RecordedApproval, approval_retry_args
from airflow.sdk import DAG, task

with DAG("{DAG_ID}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, max_active_runs={RUNS}) as dag:
    approval = RecordedApproval(task_id="approval", subject="Promote race", body="immediate answers",
                                assigned_users=[{{"id": "admin", "name": "admin"}}],
                                response_timeout=timedelta(minutes=20), **approval_retry_args())

    @task
    def promote(**context) -> str:
        answer = context["ti"].xcom_pull(task_ids="approval", key="answer") or {{}}
        if answer.get("chosen") != "Approve":
            raise ValueError(f"no Approve answer: {{answer}}")
        return "promoted"

    approval >> promote()
'''


def _approve_each_as_it_appears(af: LocalAirflow, runs: list[str], settle: str) -> dict[str, str]:
    """Start `tl approve` the instant each run's request shows; returns each approver's output."""
    approvers: dict[str, subprocess.Popen[str]] = {}
    client = af.client()
    deadline = time.monotonic() + 300
    try:
        while len(approvers) < len(runs) and time.monotonic() < deadline:
            for detail in client.pending_approvals(DAG_ID):
                run_id = detail["task_instance"]["dag_run_id"]
                if run_id in runs and run_id not in approvers:
                    approvers[run_id] = subprocess.Popen(
                        ["timeout", "-k", "10", "600", sys.executable, "-m", "tl_core.cli", "approve", "--dag", DAG_ID,
                         "--run", run_id, "--comment", "immediate", "--settle-seconds", settle],
                        env=af.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(0.5)  # immediate enough (Airflow's race window is seconds) without flooding the API server
        assert sorted(approvers) == sorted(runs), "not every run showed its approval request"
        outputs = {run_id: proc.communicate(timeout=620)[0] for run_id, proc in approvers.items()}
        for run_id, proc in approvers.items():
            assert proc.returncode == 0, outputs[run_id]
            assert f"Approve: {DAG_ID} run {run_id} (by admin); approval success" in outputs[run_id]
        return outputs
    finally:
        for proc in approvers.values():
            if proc.poll() is None:
                proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_immediate_approvals_all_promote(tmp_path: Path) -> None:
    """Five runs answered by `tl approve` as each request appears (it settles first); then five answered with no
    settling at all, where Airflow loses answers and `tl approve` answers the approval task's retry."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "approval_race.py").write_text(DAG_FILE)
    configs = tmp_path / "configs"
    configs.mkdir()
    pg = Postgres()
    af = LocalAirflow(tmp_path / "airflow", configs, extra_env={
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url})
    try:
        pg.start()
        af.start()
        for batch, settle in enumerate(("15", "0")):
            runs = [af.trigger(DAG_ID, f"2026-{10 + batch}-{day + 1:02d}T00:00:00Z") for day in range(RUNS)]
            outputs = _approve_each_as_it_appears(af, runs, settle)
            states = {run_id: af.wait(DAG_ID, run_id, ("success", "failed"), timeout=300) for run_id in runs}
            tasks = {run_id: af.task_states(DAG_ID, run_id) for run_id in runs}
            assert all(s == "success" for s in states.values()), tasks
            assert all(t["promote"] == "success" for t in tasks.values()), tasks
            lost = [r for r, out in outputs.items() if "Airflow lost the answer" in out]
            print(f"settle {settle}s: {len(lost)} of {RUNS} answers lost by Airflow and answered again on the retry; "
                  f"{RUNS} of {RUNS} promoted")
    finally:
        af.stop()
        pg.stop()
    assert af.proc is not None and af.proc.poll() is not None
