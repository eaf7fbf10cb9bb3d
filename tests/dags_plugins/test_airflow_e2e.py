"""End to end against a real `airflow standalone` (127.0.0.1, free port, SQLite, LocalExecutor, parallelism 2).

The store and the data live on the moto S3 server (over HTTP). The run is triggered over the REST API, the
pending approval is looked at with `tl status`, in headless Chromium (the approval page and the plugin's report
view, screenshots in test-artifacts/), answered with `tl approve`. Backfills as shadow runs are tested on the
production topology (tests/deploy/test_celery_topology.py) and with `airflow backfill create` on this standalone
(tests/demo/test_demo_by_hand.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
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
from tl_core.config import parse_spec
from tl_core.demo.data import write_demo_data
from tl_core.demo.local_airflow import LocalAirflow
from tl_core.registry import Registry
from tl_core.store import open_store

DAG = "retrain_tiny-tickets"


def _spec(tmp: Path, bucket: str) -> tuple[Path, Any]:
    raw = {
        "name": "tiny-tickets", "modality": "text", "labels": ["billing", "login", "shipping", "bug", "cancel"],
        "backbone": {"library": "transformers", "name": "tiny-bert", "weights": "local",
                     "path": str(tiny_bert_dir(tmp)), "max_length": 32},
        "data": {"root": f"s3://{bucket}/data", "dataset": "tickets", "window_days": 5, "slice_columns": ["region"],
                 "test_days": 2, "min_examples_per_class": 3},
        "train": {"strategies": ["frozen"], "frozen_c_grid": [1.0]},
        # lenient on purpose: this test is about orchestration, the gate has its own tests
        "gate": {"n_bootstrap": 200, "min_slice_size": 10, "absolute_minimums": {"macro_f1": 0.2},
                 "margins": {"macro_f1": 1.0, "accuracy": 1.0}, "must_match_frozen": False,
                 "calibration": {"ece_max": 1.0, "ece_tolerance": 1.0}},
        "approval": {"assigned_users": ["admin"], "response_timeout_hours": 2},
        "store": f"s3://{bucket}/tl",
        "schedule": "@daily",
    }
    configs = tmp / "configs"
    configs.mkdir()
    path = configs / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = parse_spec(raw)
    write_demo_data(spec, end_date=date(2026, 11, 2), days=7, rows_per_day=60)
    return path, spec


def _tl(af: LocalAirflow, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["timeout", "-k", "10", "120", sys.executable, "-m", "tl_core.cli", *args], env=af.env,
                          capture_output=True, text=True)


def _http_status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our own local server
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_standalone_trigger_tl_approve_then_backfill_is_shadow(tmp_path: Path, s3_bucket: str) -> None:
    path, spec = _spec(tmp_path, s3_bucket)
    # no nightly run of its own: only the manual trigger and the backfill below run
    af = LocalAirflow(tmp_path / "airflow", path.parent, extra_env={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"})
    registry = Registry.for_spec(spec)
    try:
        af.start()
        run_id = af.trigger(DAG, "2026-11-01T00:00:00Z")
        state = af.wait(DAG, run_id, ("awaiting_input", "success", "failed"), timeout=420)
        assert state == "awaiting_input", (state, af.task_states(DAG, run_id))
        assert registry.champion() is None and registry.list_versions() == ["v0001"]

        status = _tl(af, "status", "--spec", str(path), "--json")
        assert status.returncode == 0, status.stderr
        pending = json.loads(status.stdout)
        assert pending["champion"] is None
        assert [p["run_id"] for p in pending["pending_approvals"]] == [run_id]
        assert "candidate v0001" in pending["pending_approvals"][0]["subject"]

        # the plugin's views: Airflow login required, files only from the configured store
        run_q = urllib.parse.quote(run_id, safe="")
        report_url = f"{af.url}/tl/report/{DAG}/{run_q}"
        token = af.client().token()
        assert _http_status(report_url) == 401
        assert _http_status(report_url, token) == 200
        assert _http_status(f"{af.url}/tl/report/{DAG}/..", token) in (400, 404)
        assert _http_status(f"{af.url}/tl/report/retrain_other/{run_q}", token) == 404

        with Chromium() as browser:
            browser.set_cookie(af.url, "_token", token)
            text = browser.open(f"{af.url}/dags/{DAG}/runs/{run_q}/tasks/approval/required_actions",
                                ("Promote tiny-tickets: candidate v0001", "Approve", "Reject"), timeout=90)
            assert "Decision: PASS" in text
            shot = browser.screenshot(ARTIFACTS / "approval-pending.png")
            assert png_size(shot) == (1400, 1000)
            browser.open(report_url, ("Evaluation: tiny-tickets", "Gate: PASS"))
            browser.screenshot(ARTIFACTS / "evidence-report.png")
            text = browser.open(f"{af.url}/tl/registry/{DAG}?run_id={run_q}", ("Model registry: tiny-tickets",))
            assert "no champion yet" in text and "register" in text
            browser.screenshot(ARTIFACTS / "registry-history.png")

        approved = _tl(af, "approve", "--dag", DAG, "--run", run_id, "--comment", "e2e: looks right")
        assert approved.returncode == 0, approved.stderr
        assert f"Approve: {DAG} run {run_id} (by admin)" in approved.stdout
        assert af.wait(DAG, run_id, ("success", "failed"), timeout=240) == "success", af.task_states(DAG, run_id)
        again = _tl(af, "approve", "--dag", DAG, "--run", run_id)
        assert again.returncode != 0 and "approval is 'success'; there is no request to answer" in again.stderr

        champion = registry.champion()
        assert champion is not None and champion.version == "v0001"
        pointer = json.loads(open_store(spec.store).get_bytes("registry/tiny-tickets/champion.json"))
        assert pointer["version"] == "v0001" and pointer["actor"] == "admin"
        history = registry.history()
        assert [r["action"] for r in history] == ["register", "promote"]
        assert history[1]["reason"] == "e2e: looks right" and history[1]["approval"]["chosen"] == ["Approve"]

    finally:
        af.stop()
    assert af.proc is not None and af.proc.poll() is not None
