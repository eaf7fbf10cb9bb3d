"""README's "Try it by hand (KEEP=1)": `KEEP=1` demo, then every command line of that block, each checked.

The demo runs as `make demo` does (python -m tl_core.demo) with KEEP=1 under a temporary TL_DEMO_ROOT and, to
keep the suite short, only the frozen strategy (TL_DEMO_STRATEGIES=frozen); the lines are read from README.md
itself and run with bash in the directory the demo ran from. The approval the README asks for in the UI is clicked
in headless Chromium on the approval task's Required Actions page. The demo's Airflow is stopped by PID.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from browser import ARTIFACTS, ROOT, Chromium
from tl_core.airflow_api import SETTLE_S, AirflowClient
from tl_core.config import parse_spec
from tl_core.registry import Registry

RETRAIN, PROMOTE = "retrain_support-tickets", "promote_support-tickets"


def readme_commands() -> list[str]:
    """The command lines of the README's by-hand block (comments dropped), in order."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Try it by hand (`KEEP=1`)"):]
    block = section[section.index("```sh\n") + 6:section.index("\n```", section.index("```sh\n"))]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _sh(cwd: Path, env: dict[str, str], source: str, line: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["timeout", "-k", "5", "300", "bash", "-c", f"set -e; {source}; {line}"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"{line}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def _wait_run(client: AirflowClient, dag: str, pick: Any, until: tuple[str, ...], timeout: float = 420) -> str:
    """Poll until a run chosen by ``pick`` (from the DAG's runs) is in one of ``until`` (or awaits input)."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = client.get(f"/api/v2/dags/{dag}/dagRuns?limit=100")["dag_runs"]
        run = pick(seen)
        if run is not None:
            if run["state"] in until:
                return str(run["dag_run_id"])
            if "awaiting_input" in until and client.pending_approvals(dag, run["dag_run_id"]):
                return str(run["dag_run_id"])
        time.sleep(3)
    states = [(r["dag_run_id"], r["state"]) for r in seen]
    raise AssertionError(f"{dag}: no run reached {until} in {timeout}s: {states}")


def _approve_in_the_ui(url: str, token: str, run_id: str) -> None:
    page = f"{url}/dags/{PROMOTE}/runs/{urllib.parse.quote(run_id, safe='')}/tasks/approval/required_actions"
    with Chromium() as browser:
        browser.set_cookie(url, "_token", token)
        text = browser.open(page, ("Promote support-tickets", "Approve", "Reject"), timeout=90)
        assert "(manual)" in text
        browser.screenshot(ARTIFACTS / "by-hand-approval.png")
        # A reviewer reads the summary first: Airflow 3.3.2 loses answers given in the request's first seconds
        # (docs/reliability.md), so the click waits as long as `tl approve` does.
        time.sleep(SETTLE_S)
        clicked = browser.send("Runtime.evaluate", returnByValue=True, expression=(
            "(() => { const b = [...document.querySelectorAll('button')].find(x => x.textContent.trim() === "
            "'Approve'); if (!b) return false; b.click(); return true; })()"))["result"]["value"]
        assert clicked, "no Approve button on the Required Actions page"
        time.sleep(3)
        browser.screenshot(ARTIFACTS / "by-hand-approved.png")


def _start_demo(tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    env = {**os.environ, "KEEP": "1", "TL_DEMO_ROOT": str(tmp_path / ".tl"), "TL_DEMO_STRATEGIES": "frozen",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["timeout", "-k", "10", "1200", sys.executable, "-m", "tl_core.demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    return proc, env


def _settings(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        out[key] = shlex.split(value)[0] if value else ""
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_readme_by_hand_commands_work_against_the_demo_airflow(tmp_path: Path) -> None:
    source, backfill, history, unpause, trigger, rollback = readme_commands()
    assert source == "source .tl/airflow/env.sh" and backfill.startswith("airflow backfill create")
    proc, env = _start_demo(tmp_path)
    pid = re.search(r"kill -TERM -(\d+)", proc.stdout)
    try:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
        assert "registered 2 shadow versions" in proc.stdout
        settings = _settings(tmp_path / ".tl" / "airflow" / "env.sh")
        login = re.search(r"Airflow stays up: (\S+)  login admin / (\S+)", proc.stdout)
        assert login and pid, proc.stdout[-2000:]
        client = AirflowClient(login.group(1), "admin", login.group(2))
        registry = Registry.for_spec(parse_spec(yaml.safe_load(Path(settings["TL_DEMO_SPEC"]).read_text())))
        champion, shadow = settings["TL_DEMO_CHAMPION"], settings["TL_DEMO_SHADOW"]
        assert registry.champion() is not None and registry.champion().version == champion  # type: ignore[union-attr]
        assert registry.show(shadow)["shadow"] is True

        # 1. the backfill of 2026-11-04: one more shadow run, the champion stays
        before = set(registry.list_versions())
        _sh(tmp_path, env, source, backfill)
        _wait_run(client, RETRAIN, lambda runs: next((r for r in runs if r["run_type"] == "backfill" and
                                                      r["logical_date"].startswith("2026-11-04")), None),
                  ("success", "failed"))
        new = [r for r in registry.history() if r.get("run_id", "").startswith("backfill") and
               "2026-11-04" in r.get("run_id", "")]
        assert new and new[0]["action"] in ("register", "reject"), new  # registered, or the gate said why not
        assert set(registry.list_versions()) - before == ({new[0]["version"]} if new[0]["action"] == "register"
                                                          else set())
        assert registry.champion().version == champion  # type: ignore[union-attr]

        # 2. the ledger, as a table
        table = _sh(tmp_path, env, source, history).stdout
        assert "promote" in table and shadow in table and "register" in table

        # 3. the manual promotion of the shadow version, approved in the UI
        _sh(tmp_path, env, source, unpause)
        _sh(tmp_path, env, source, trigger)
        run_id = _wait_run(client, PROMOTE, lambda runs: runs[0] if runs else None, ("awaiting_input",))
        _approve_in_the_ui(login.group(1), client.token(), run_id)
        _wait_run(client, PROMOTE, lambda runs: next((r for r in runs if r["dag_run_id"] == run_id), None),
                  ("success",), timeout=240)
        assert registry.champion().version == shadow  # type: ignore[union-attr]
        promote = [r for r in registry.history() if r["action"] == "promote"][-1]
        assert promote["version"] == shadow and promote["approval"]["chosen"] == "Approve"
        assert promote["override"]["reason"] == "demo: reviewed the shadow run's evidence"
        assert any("shadow version" in p for p in promote["override"]["overrides"])

        # 4. the rollback: back to the champion before
        _sh(tmp_path, env, source, rollback)
        assert registry.champion().version == champion  # type: ignore[union-attr]
        assert registry.history()[-1]["action"] == "rollback"
    finally:
        if pid:
            _stop(int(pid.group(1)))


def _stop(pgid: int) -> None:
    """Stop the demo's Airflow (its own process group) by PID: SIGTERM, then SIGKILL after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(1)
