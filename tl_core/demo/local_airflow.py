"""A real `airflow standalone` on 127.0.0.1 for the demo and the end-to-end tests (started and stopped by PID).

Only subprocesses here: tl_core never imports Airflow. The DAG and plugin folders it serves are not part of the
installed package: they come from TL_DAGS_DIR / TL_PLUGINS_DIR, else from the source checkout this file is in.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tl_core.airflow_api import AirflowAPIError, AirflowClient
from tl_core.demo.sqlite_sessions import SESSION_MAKER_PATH
from tl_core.errors import DemoSetupError

logger = logging.getLogger(__name__)
# The source checkout (tl_core/demo/local_airflow.py -> the repository root), when the package runs from one.
REPO = Path(__file__).resolve().parents[2]
# Airflow folder -> (the variable naming it, a file it must hold)
AIRFLOW_FOLDERS = {"dags": ("TL_DAGS_DIR", "tl_dags.py"), "plugins": ("TL_PLUGINS_DIR", "tl_plugin.py")}


def airflow_folder(name: str) -> Path:
    """The ``dags`` or ``plugins`` folder to serve: $TL_DAGS_DIR / $TL_PLUGINS_DIR, else the source checkout's."""
    var, marker = AIRFLOW_FOLDERS[name]
    configured = os.environ.get(var)
    folder = Path(configured) if configured else REPO / name
    if not (folder / marker).is_file():
        where = f"{var}={configured}" if configured else f"{var} is not set and there is no source checkout at {REPO}"
        raise DemoSetupError(f"no Airflow {name} folder: {where} (expected {folder / marker}); set {var} to the "
                             f"{name}/ folder of a tl-retrain checkout")
    return folder.resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalAirflow:
    def __init__(self, home: Path, configs: Path, port: int | None = None, extra_env: dict[str, str] | None = None):
        self.home, self.configs = home.resolve(), configs.resolve()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        dags, plugins = airflow_folder("dags"), airflow_folder("plugins")
        self.env = dict(os.environ)
        self.env.update({
            "AIRFLOW_HOME": str(self.home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
            # SQLite locks the whole file for a write: a CLI command (e.g. `airflow backfill create`) next to the
            # running scheduler waits up to 60 s for the lock instead of failing after sqlite3's default 5 s.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}?timeout=60",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # A task's calls to the execution API wait on the same busy SQLite-backed API server; on 2 cores under
            # ten concurrent runs one took longer than the 5 s default and the task failed ("Workload execution
            # failed ... ReadTimeout"; test_approval_race on a fresh clone).
            "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "60",
            "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5", "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True", "TL_CONFIGS_DIR": str(self.configs),
            "TL_AIRFLOW_URL": self.url, "PYTHONUNBUFFERED": "1",
            # standalone starts its components as `airflow ...`: the venv's bin must come first on PATH
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        self.env.update(extra_env or {})

    def airflow(self, *args: str, timeout: int = 180) -> str:
        cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "airflow", *args]
        # a CLI command next to the running scheduler: see tl_core/demo/sqlite_sessions.py
        env = {**self.env, "AIRFLOW__DATABASE__SQL_ALCHEMY_SESSION_MAKER": SESSION_MAKER_PATH}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AirflowAPIError(f"airflow {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-1500:]}")
        return proc.stdout

    def start(self, timeout: float = 180) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = (self.home / "standalone.log").open("ab")
        # Own process group, SIGINT restored: stop() can end the whole tree by PID.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", "standalone"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AirflowAPIError(f"airflow standalone exited ({self.proc.returncode}); see {log.name}")
            try:
                health = self.client().get("/api/v2/monitor/health")
                if health["scheduler"]["status"] == "healthy":
                    break
            except (AirflowAPIError, KeyError, TypeError):
                pass
            time.sleep(2)
        else:
            self.stop()
            raise AirflowAPIError(f"airflow standalone not healthy after {timeout}s; see {self.home}/standalone.log")
        self.airflow("pools", "set", "gpu", "2", "GPU workers (LocalExecutor ignores queues)")
        self.airflow("dags", "reserialize")

    def password(self) -> str:
        path = self.home / "simple_auth_manager_passwords.json.generated"
        for _ in range(60):
            if path.exists():
                return str(json.loads(path.read_text())["admin"])
            time.sleep(1)
        raise AirflowAPIError(f"no admin password file at {path}")

    def client(self) -> AirflowClient:
        path = self.home / "simple_auth_manager_passwords.json.generated"
        if not path.exists():
            raise AirflowAPIError("admin password not generated yet")
        return AirflowClient(self.url, "admin", self.password())

    def trigger(self, dag_id: str, logical_date: str, conf: dict[str, Any] | None = None) -> str:
        c = self.client()
        for _ in range(60):
            try:
                c.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})
                break
            except AirflowAPIError:
                time.sleep(2)  # the DAG may not be serialized yet
        run = c.post(f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf or {}})
        return str(run["dag_run_id"])

    def wait(self, dag_id: str, run_id: str, until: tuple[str, ...], timeout: float = 900) -> str:
        """Poll until the run ends or its approval task awaits input; returns 'awaiting_input' or the run state."""
        c = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = c.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if run["state"] in ("success", "failed") and run["state"] in until:
                return str(run["state"])
            if "awaiting_input" in until and c.pending_approvals(dag_id, run_id):
                return "awaiting_input"
            if run["state"] == "failed":
                return "failed"
            time.sleep(3)
        raise AirflowAPIError(f"{dag_id} run {run_id} did not reach {until} within {timeout}s")

    def write_env(self, extra: dict[str, str] | None = None) -> Path:
        """``<home>/env.sh``: the settings of this Airflow for `airflow` and `tl` in another shell (KEEP=1), plus
        ``extra``. Its CLI transactions begin IMMEDIATE on the SQLite database."""
        keep = {k: v for k, v in self.env.items() if k.startswith(("AIRFLOW_", "AIRFLOW__", "TL_"))}
        # the shell's CLI commands write next to the running scheduler: see tl_core/demo/sqlite_sessions.py
        keep["AIRFLOW__DATABASE__SQL_ALCHEMY_SESSION_MAKER"] = SESSION_MAKER_PATH
        keep.update(extra or {})
        path = self.home / "env.sh"
        path.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(keep.items())))
        return path

    def backfill(self, dag_id: str, from_date: str, to_date: str) -> dict[str, Any]:
        """Create a backfill through the REST API (what the UI's Backfill dialog does); returns the backfill."""
        body = {"dag_id": dag_id, "from_date": f"{from_date}T00:00:00Z", "to_date": f"{to_date}T00:00:00Z",
                "max_active_runs": 1}
        return dict(self.client().post("/api/v2/backfills", body))

    def wait_backfill(self, dag_id: str, backfill_id: int, expected: int, timeout: float = 900) -> dict[str, str]:
        """Poll until ``expected`` backfill runs of the DAG have ended and Airflow marked the backfill completed (a
        DAG takes one backfill at a time: the next one is refused until then); returns run id -> state."""
        c = self.client()
        deadline = time.monotonic() + timeout
        runs: dict[str, str] = {}
        while time.monotonic() < deadline:
            found = c.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
            runs = {r["dag_run_id"]: r["state"] for r in found if r["run_type"] == "backfill"}
            ended = len(runs) >= expected and all(s in ("success", "failed") for s in runs.values())
            if ended and c.get(f"/api/v2/backfills/{backfill_id}").get("completed_at"):
                return runs
            time.sleep(3)
        raise AirflowAPIError(f"{dag_id}: backfill {backfill_id} with {expected} runs did not complete within "
                              f"{timeout}s (runs now: {runs})")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tis = self.client().get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {t["task_id"]: t["state"] for t in tis}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
