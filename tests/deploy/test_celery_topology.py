"""The production topology, for real, on 127.0.0.1: CeleryExecutor with Redis and PostgreSQL, a GPU queue, faults.

Started by the test, by PID, from Debian packages and the test extra: PostgreSQL (throwaway cluster) as Airflow's
metadata database, redis-server as the Celery broker, moto server as S3 (store and data), Airflow's api-server,
scheduler, dag-processor and triggerer, and two Celery workers: `default` and `gpu` (concurrency 1, the `gpu`
pool of one slot). Each worker names itself in its task instances' hostname.

One nightly run (frozen baseline + full fine-tuning, mapped) meets three faults:
- the `gpu` worker is SIGKILLed while `full` trains (after an epoch checkpoint); Redis is stopped for 8 s while
  that worker is down; the worker starts again: Airflow times the dead task's heartbeat out, retries it, and the
  retry resumes from the last epoch checkpoint;
- the scheduler is restarted while the approval waits, and again right after the approval was answered;
while the approval waits, `tl status`, the plugin's views and the approval page (headless Chromium) show it; it is
answered over the REST API (`tl approve`), the champion is promoted in the S3 registry, and the ledger holds one
registration and one promotion. Then a backfill of two dates (REST API, `strategies` run param)
runs as two shadow runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from browser import ARTIFACTS, Chromium, png_size
from model_fixtures import tiny_bert_dir
from tl_core.airflow_api import AirflowAPIError, AirflowClient
from tl_core.artifacts import Plan, TrainReport
from tl_core.config import parse_spec
from tl_core.demo.data import write_demo_data
from tl_core.registry import Registry
from tl_core.runs import RunContext
from tl_core.store import open_store
from topology_fixtures import CeleryAirflow, Postgres, Redis, free_port

DAG = "retrain_topo"
EPOCHS = 40  # enough epochs (each under a second) to kill the worker between two of them


def _spec(tmp: Path, bucket: str) -> tuple[Path, Any]:
    raw = {
        "name": "topo", "modality": "text", "labels": ["billing", "login", "shipping", "bug", "cancel"],
        "backbone": {"library": "transformers", "name": "tiny-bert", "weights": "local",
                     "path": str(tiny_bert_dir(tmp)), "max_length": 32},
        "data": {"root": f"s3://{bucket}/data", "dataset": "tickets", "window_days": 5, "slice_columns": ["region"],
                 "test_days": 2, "min_examples_per_class": 3},
        "train": {"strategies": ["frozen", "full"], "frozen_c_grid": [1.0], "epochs": EPOCHS, "warmup_epochs": 0,
                  "patience": 1000},
        # lenient on purpose: this test is about the topology, the gate has its own tests
        "gate": {"n_bootstrap": 200, "min_slice_size": 10, "absolute_minimums": {"macro_f1": 0.0},
                 "margins": {"macro_f1": 1.0, "accuracy": 1.0}, "must_match_frozen": False,
                 "calibration": {"ece_max": 1.0, "ece_tolerance": 1.0}},
        "approval": {"assigned_users": ["admin"], "response_timeout_hours": 2},
        "store": f"s3://{bucket}/tl",
        "schedule": "@daily",
    }
    configs = tmp / "configs"
    configs.mkdir()
    path = configs / "topo.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = parse_spec(raw)
    write_demo_data(spec, end_date=date(2026, 11, 3), days=8, rows_per_day=60)
    return path, spec


def _worker_env(name: str) -> dict[str, str]:
    # two workers on one machine: each serves its logs on its own port and names itself in its task instances
    return {"TL_TEST_WORKER_NAME": name, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}


def _start_gpu_worker(af: CeleryAirflow) -> None:
    af.start("worker-gpu", "celery", "worker", "--queues", "gpu", "--concurrency", "1", "--celery-hostname",
             "gpu@%h", env=_worker_env("worker-gpu"))


def _client(af: CeleryAirflow, timeout: float = 180) -> AirflowClient:
    """A client once the api-server is up and every component reports healthy."""
    deadline = time.monotonic() + timeout
    health: Any = None
    while time.monotonic() < deadline:
        path = af.home / "simple_auth_manager_passwords.json.generated"
        try:
            if path.exists():
                client = AirflowClient(af.url, "admin", json.loads(path.read_text())["admin"])
                health = client.get("/api/v2/monitor/health")
                if all(health.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler", "triggerer",
                                                                            "dag_processor")):
                    return client
        except (AirflowAPIError, KeyError, ValueError):
            pass
        time.sleep(2)
    raise AssertionError(f"Airflow not healthy within {timeout}s: {health}")


def _tis(client: AirflowClient, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's task instances by '<task_id>' or '<task_id>[<map index>]'."""
    found = client.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
    return {t["task_id"] + (f"[{t['map_index']}]" if t["map_index"] >= 0 else ""): t for t in found}


def _wait(what: str, check: Any, timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _run_state(client: AirflowClient, run_id: str) -> str | None:
    state = client.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}")["state"]
    return str(state) if state in ("success", "failed") else None


def _kill_gpu_worker_mid_training(af: CeleryAirflow, client: AirflowClient, run_id: str, run: RunContext,
                                  redis: Redis) -> None:
    """SIGKILL the gpu worker (its whole process group: the task too) once `full` has checkpointed an epoch;
    stop Redis for 8 s while it is down; start the worker again."""
    resume = run.model_key("full", "resume", "state.pt")

    def checkpointed() -> bool:
        ti = _tis(client, run_id).get("train_tuned[0]") or {}
        return ti.get("state") == "running" and run.store.exists(resume)

    _wait("a running `full` training with an epoch checkpoint", checkpointed, timeout=600, every=0.3)
    killed = af.crash("worker-gpu")
    assert len(killed) >= 3, killed  # the worker, its pool process, the task's supervisor and the task
    assert not run.store.exists(run.key("models/full/train_report.json")), "`full` finished before the kill"
    redis.stop()
    time.sleep(8)
    redis.start()
    _start_gpu_worker(af)


def _http_status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our own local server
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _check_what_the_approver_sees(af: CeleryAirflow, client: AirflowClient, spec_path: Path, run_id: str) -> None:
    """While the request waits: `tl status`, the plugin's views (login required, files only from the configured
    store), and the approval page, report and registry views in headless Chromium (screenshots in test-artifacts/)."""
    status = subprocess.run(["timeout", "-k", "10", "120", sys.executable, "-m", "tl_core.cli", "status", "--spec",
                             str(spec_path), "--json"], env=af.env, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    pending = json.loads(status.stdout)
    assert pending["champion"] is None and [p["run_id"] for p in pending["pending_approvals"]] == [run_id]
    assert "Promote topo: candidate v0001" in pending["pending_approvals"][0]["subject"]
    run_q = urllib.parse.quote(run_id, safe="")
    report_url = f"{af.url}/tl/report/{DAG}/{run_q}"
    token = client.token()
    assert _http_status(report_url) == 401 and _http_status(report_url, token) == 200
    assert _http_status(f"{af.url}/tl/report/{DAG}/..", token) in (400, 404)
    assert _http_status(f"{af.url}/tl/report/retrain_other/{run_q}", token) == 404
    with Chromium() as browser:
        browser.set_cookie(af.url, "_token", token)
        text = browser.open(f"{af.url}/dags/{DAG}/runs/{run_q}/tasks/approval/required_actions",
                            ("Promote topo: candidate v0001", "Approve", "Reject"), timeout=90)
        assert "Decision: PASS" in text
        assert png_size(browser.screenshot(ARTIFACTS / "approval-pending.png")) == (1400, 1000)
        browser.open(report_url, ("Evaluation: topo", "Gate: PASS"))
        browser.screenshot(ARTIFACTS / "evidence-report.png")
        text = browser.open(f"{af.url}/tl/registry/{DAG}?run_id={run_q}", ("Model registry: topo",))
        assert "no champion yet" in text and "register" in text
        browser.screenshot(ARTIFACTS / "registry-history.png")


def _restart_scheduler(af: CeleryAirflow) -> None:
    af.stop("scheduler")
    af.start("scheduler", "scheduler")


def _approve(af: CeleryAirflow, run_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["timeout", "-k", "10", "600", sys.executable, "-m", "tl_core.cli", "approve", "--dag", DAG,
                           "--run", run_id, "--comment", "topology: approved", "--settle-seconds", "5"],
                          env=af.env, capture_output=True, text=True)


def _attempt_log(af: CeleryAirflow, run_id: str, task: str, map_index: int, attempt: int) -> str:
    folder = af.home / "logs" / f"dag_id={DAG}" / f"run_id={run_id}" / f"task_id={task}" / f"map_index={map_index}"
    return (folder / f"attempt={attempt}.log").read_text(errors="replace")


def _check_nightly(af: CeleryAirflow, client: AirflowClient, run_id: str, run: RunContext) -> None:
    tis = _tis(client, run_id)
    assert {k: t["state"] for k, t in tis.items() if t["state"] != "success"} == {
        "reject_candidate": "skipped", "shadow_recorded": "skipped"}, tis
    assert tis["promote"]["state"] == "success" and tis["register"]["state"] == "success"
    # Airflow's fan-out: one mapped instance per model, labelled by it
    assert (tis["train_frozen[0]"]["rendered_map_index"], tis["train_tuned[0]"]["rendered_map_index"]) == (
        "frozen", "full")
    # the heavy tasks ran on the gpu worker, the rest on the default worker
    for key in ("train_frozen[0]", "train_tuned[0]", "export", "evaluate"):
        assert (tis[key]["queue"], tis[key]["hostname"]) == ("gpu", "worker-gpu"), (key, tis[key])
    for key in ("snapshot", "split", "gate", "register", "promote"):
        assert (tis[key]["queue"], tis[key]["hostname"]) == ("default", "worker-default"), (key, tis[key])
    # the killed training was retried, and the retry resumed from the last epoch checkpoint
    tuned = tis["train_tuned[0]"]
    assert tuned["try_number"] >= 2, tuned
    report = run.read(TrainReport, "full").model_dump(mode="json")
    assert 1 <= report["resumed_from_epoch"] < EPOCHS, report
    log = _attempt_log(af, run_id, "train_tuned", 0, tuned["try_number"])
    assert f"full: resuming after epoch {report['resumed_from_epoch']} " in log


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_celery_topology_nightly_with_faults_then_shadow_backfill(tmp_path: Path, s3_bucket: str) -> None:
    path, spec = _spec(tmp_path, s3_bucket)
    registry = Registry.for_spec(spec)
    pg, redis = Postgres(), Redis(tmp_path / "redis")
    af = CeleryAirflow(tmp_path / "airflow", path.parent, pg, redis, extra_env={
        # a dead worker's task is failed (and retried) 20 s after its last heartbeat (live tasks beat every 5 s)
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5"})
    started = time.monotonic()
    try:
        pg.start()
        redis.start()
        af.airflow("db", "migrate")
        af.airflow("pools", "set", "gpu", "1", "one GPU worker")
        for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
            af.start(component, component)
        af.start("worker-default", "celery", "worker", "--queues", "default", "--concurrency", "2",
                 "--celery-hostname", "default@%h", env=_worker_env("worker-default"))
        _start_gpu_worker(af)
        client = _client(af)
        _wait(f"{DAG} to be parsed", lambda: _unpause(client), timeout=120, every=2)

        run_id = str(client.post(f"/api/v2/dags/{DAG}/dagRuns",
                                 {"logical_date": "2026-11-01T00:00:00Z", "conf": {}})["dag_run_id"])
        run = RunContext.open(spec, run_id)
        _kill_gpu_worker_mid_training(af, client, run_id, run, redis)

        _wait("the approval request", lambda: client.pending_approvals(DAG, run_id) or _run_state(client, run_id),
              timeout=900, every=3)
        assert _run_state(client, run_id) is None, _tis(client, run_id)
        _restart_scheduler(af)  # while the approval waits
        _check_what_the_approver_sees(af, client, path, run_id)
        approved = _approve(af, run_id)
        assert approved.returncode == 0, approved.stdout + approved.stderr
        assert f"Approve: {DAG} run {run_id} (by admin)" in approved.stdout
        _restart_scheduler(af)  # while promote is scheduled or running
        assert _wait("the nightly run to end", lambda: _run_state(client, run_id), timeout=600, every=3) == "success", \
            _tis(client, run_id)
        again = _approve(af, run_id)
        assert again.returncode != 0 and "approval is 'success'; there is no request to answer" in again.stderr
        _check_nightly(af, client, run_id, run)
        # the faults happened as staged: the dead worker's task timed out, the broker was lost and re-established
        assert "Detected a task instance without a heartbeat" in af.log("scheduler")
        assert "Connection to broker lost" in af.log("worker-default")
        champion = registry.champion()
        assert champion is not None and champion.version == "v0001"
        # nothing that must not run twice ran twice: one registration, one promotion
        assert [r["action"] for r in registry.history()] == ["register", "promote"]

        # a backfill of two dates, each a shadow run of the frozen baseline only (the strategies run param)
        backfill = client.post("/api/v2/backfills", {
            "dag_id": DAG, "from_date": "2026-11-02T00:00:00Z", "to_date": "2026-11-03T00:00:00Z",
            "max_active_runs": 2, "dag_run_conf": {"strategies": ["frozen"]}})

        def backfill_done() -> dict[str, str] | None:
            runs = client.get(f"/api/v2/dags/{DAG}/dagRuns?limit=100")["dag_runs"]
            states = {r["dag_run_id"]: r["state"] for r in runs if r["run_type"] == "backfill"}
            ended = len(states) == 2 and all(s in ("success", "failed") for s in states.values())
            return states if ended and client.get(f"/api/v2/backfills/{backfill['id']}").get("completed_at") \
                else None

        states = _wait("the backfill", backfill_done, timeout=900, every=3)
        assert sorted(states.values()) == ["success", "success"], states
        for backfill_run in states:
            tis = _tis(client, backfill_run)
            assert tis["shadow_recorded"]["state"] == "success" and tis["promote"]["state"] == "skipped"
            assert tis["train_tuned"]["state"] == "skipped" and tis["train_frozen[0]"]["hostname"] == "worker-gpu"
            assert RunContext.open(spec, backfill_run).read(Plan).model_ids == ["frozen"]
        history = registry.history()
        assert [r["action"] for r in history] == ["register", "promote", "register", "register"]
        assert [r.get("shadow") for r in history[2:]] == [True, True]
        assert registry.champion().version == "v0001"  # type: ignore[union-attr]
        pointer = json.loads(open_store(spec.store).get_bytes("registry/topo/champion.json"))
        assert pointer["version"] == "v0001" and pointer["actor"] == "admin"
        summary = {"seconds": round(time.monotonic() - started),
                   "train_tuned_try": _tis(client, run_id)["train_tuned[0]"]["try_number"],
                   "resumed_after_epoch": run.read(TrainReport, "full").resumed_from_epoch,
                   "ledger": [r["action"] for r in history]}
        ARTIFACTS.mkdir(exist_ok=True)  # what the run did, for the reader of a CI log (pytest hides the print)
        (ARTIFACTS / "celery-topology.json").write_text(json.dumps(summary, indent=1))
        print("topology test:", json.dumps(summary))
    finally:
        af.stop_all()
        redis.stop()
        pg.stop()
    assert all(p.poll() is not None for p in af.procs.values())


def _unpause(client: AirflowClient) -> bool:
    try:
        client.patch(f"/api/v2/dags/{DAG}", {"is_paused": False})
        return True
    except AirflowAPIError:
        return False  # not parsed yet
