"""The production topology on 127.0.0.1, from Debian packages, started and stopped by PID (not a test module).

PostgreSQL (a throwaway cluster: initdb in a temp dir, the server run directly so its PID is ours) as Airflow's
metadata database, Redis as the Celery broker, and Airflow's api-server, scheduler, dag-processor, triggerer and
Celery workers as separate processes: what docker/compose.yaml runs, without containers.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from airflow_fixtures import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s; see {log}")


def stop_process(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 30,
                 group: bool = False) -> None:
    """End ``proc`` (or its whole process group) with ``sig``, then SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if found:
        return str(found[-1])
    on_path = shutil.which(name)
    if on_path is None:
        raise RuntimeError(f"PostgreSQL's {name} not found under /usr/lib/postgresql/*/bin or on PATH: install the "
                           "Debian package postgresql (`make system-deps`)")
    return on_path


class Postgres:
    """A throwaway cluster; as root it runs as the Debian package's `postgres` user (the server refuses root)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tl-pg-"))  # under /tmp: pytest's tmp dirs are private to root
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.url = f"postgresql+psycopg2://airflow@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        data, log = self.dir / "data", self.dir / "server.log"
        subprocess.run(["timeout", "-k", "5", "120", _pg_bin("initdb"), "-D", str(data), "-U", "airflow",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True, cwd=self.dir,
                       **self.user)  # cwd: the postgres user may not enter the suite's directory
        out = log.open("ab")
        self.proc = subprocess.Popen(
            [_pg_bin("postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.dir),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir, **self.user)
        wait_port(self.port, self.proc, "postgres", log)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)  # fast shutdown
        shutil.rmtree(self.dir, ignore_errors=True)


class Redis:
    """redis-server with an append-only file: a stop and start keeps the queued Celery messages."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.dir = free_port(), workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("redis-server not found: install the Debian package redis-server (`make system-deps`)")
        log = self.dir / "redis.log"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--appendonly", "yes",
             "--save", "", "--protected-mode", "no"],
            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self.proc, "redis-server", log)

    def stop(self) -> None:
        stop_process(self.proc)


# Each worker names itself in its task instances' hostname (the two workers share this machine's name).
HOSTNAME_MODULE = '''
import os, socket

def hostname() -> str:
    return os.environ.get("TL_TEST_WORKER_NAME") or socket.getfqdn()
'''


class CeleryAirflow:
    """Airflow's components as separate processes on the CeleryExecutor, each with its own log and PID."""

    def __init__(self, home: Path, configs: Path, pg: Postgres, redis: Redis, extra_env: dict[str, str]) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "tl_test_hostname.py").write_text(HOSTNAME_MODULE)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, IO[bytes]] = {}
        self.env = {
            **os.environ,
            "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url,
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": redis.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg.url.replace("+psycopg2", ""),
            "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # one secret for every process (the api-server signs the tokens the workers' tasks present)
            "AIRFLOW__API_AUTH__JWT_SECRET": "tl-topology-test-jwt-secret-0123456789abcdef",
            "AIRFLOW__API__SECRET_KEY": "tl-topology-test-secret-key",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tl_test_hostname.hostname",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "PYTHONPATH": os.pathsep.join([str(home), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "TL_CONFIGS_DIR": str(configs), "TL_AIRFLOW_URL": self.url, "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **extra_env,
        }

    def airflow(self, *args: str, timeout: int = 240) -> str:
        proc = subprocess.run(["timeout", "-k", "10", str(timeout), sys.executable, "-m", "airflow", *args],
                              env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start component ``name`` (`airflow <args>`) in its own process group; its log is <home>/<name>.log."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running (pid {self.procs[name].pid})")
        log = self.logs.get(name) or (self.home / f"{name}.log").open("ab")
        self.logs[name] = log
        proc = subprocess.Popen([sys.executable, "-m", "airflow", *args], env={**self.env, **(env or {})},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        stop_process(self.procs.get(name), sig, timeout=60, group=True)

    def crash(self, name: str) -> list[int]:
        """SIGKILL component ``name`` and every process under it, as when its machine dies: Airflow runs a task in
        a process of its own session, which would otherwise live on (and finish) without its worker. Returns the
        PIDs killed."""
        import psutil

        proc = self.procs[name]
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for member in tree:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait(timeout=30)
        psutil.wait_procs(tree, timeout=30)
        return [member.pid for member in tree]

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
        for log in self.logs.values():
            log.close()

    def log(self, name: str) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")
