"""Data arrival in a real Airflow (dag.test(), SQLite, fresh process): retrain_<model> waits, deferred, for the run
day's completion marker and proceeds when it appears; without it the run fails naming the partition, and the
failure reaches the spec's webhook (a local HTTP server). The tasks after the snapshot are marked success
(dag.test's mark_success_pattern): what is proven here is the wait, not the training."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import pytest
import yaml

from airflow_fixtures import ROOT, WebhookRecorder, airflow_env
from tl_core.artifacts import SnapshotManifest
from tl_core.config import parse_spec
from tl_core.data.partitions import mark_complete
from tl_core.demo.data import write_demo_data
from tl_core.runs import RunContext

RUN = r"""
import sys
from datetime import datetime, timezone
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags[sys.argv[2]].test(logical_date=datetime.fromisoformat(sys.argv[3]).replace(tzinfo=timezone.utc),
                                 mark_success_pattern=sys.argv[4])
print("RUN", run.run_id, flush=True)
print("STATE", run.state, flush=True)
"""
# every task but the wait, the snapshot and the plan tasks is marked success (the mapped train tasks expand over
# what the plan tasks return, so those run for real: they only check the spec and write plan.json)
AFTER_SNAPSHOT = r"(?!wait_for_data$|snapshot$|plan_frozen$|plan_tuned$).*"
DAY = date(2026, 11, 1)


def _spec(tmp: Path, hook: str, timeout_minutes: float) -> tuple[Path, object]:
    raw = {"name": "arrive", "labels": ["billing", "login", "shipping", "bug", "cancel"],
           "backbone": {"library": "transformers", "name": "bert", "weights": "none"},
           "data": {"root": (tmp / "data").as_uri(), "dataset": "tickets", "window_days": 3, "test_days": 1,
                    "arrival_timeout_minutes": timeout_minutes, "arrival_poke_seconds": 1},
           "train": {"strategies": ["frozen"]}, "store": (tmp / "store").as_uri(),
           "notify": {"webhooks": [{"url": hook, "events": ["failure"]}]}}
    configs = tmp / "configs"
    configs.mkdir(exist_ok=True)
    path = configs / "arrive.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, parse_spec(raw)


def _start(tmp: Path, configs: Path, day: str) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    """dag.test() of retrain_arrive in a fresh process (bounded); its output lines, and an event set once the
    sensor has deferred and its trigger runs."""
    home = tmp / "airflow"
    home.mkdir(exist_ok=True)
    env = airflow_env(home)
    env["TL_CONFIGS_DIR"] = str(configs)
    if not (home / "airflow.db").exists():
        subprocess.run(["timeout", "-k", "10", "240", sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                       check=True, capture_output=True)
    proc = subprocess.Popen(["timeout", "-k", "10", "300", sys.executable, "-c", RUN, str(ROOT / "dags"),
                             "retrain_arrive", day, AFTER_SNAPSHOT], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deferred = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "running trigger in line" in line:
                deferred.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, deferred


def _finish(proc: subprocess.Popen[str], lines: list[str]) -> str:
    proc.wait(timeout=320)
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_retrain_waits_for_the_marker_then_times_out_naming_the_partition(tmp_path: Path) -> None:
    hook = WebhookRecorder()
    try:
        path, spec = _spec(tmp_path, hook.url, timeout_minutes=2.0)
        write_demo_data(spec, end_date=DAY, days=4, rows_per_day=20)  # type: ignore[arg-type]
        (tmp_path / "data" / "tickets" / f"dt={DAY}" / "_SUCCESS").unlink()  # the writer of Nov 1 is not done

        # 1. the run defers on the missing marker; the writer finishes; the run proceeds and snapshots Nov 1
        proc, lines, deferred = _start(tmp_path, path.parent, f"{DAY}T00:00:00")
        assert deferred.wait(timeout=240), "".join(lines)[-3000:]
        assert mark_complete(spec, DAY) == f"{spec.data.root}/tickets/dt={DAY}/_SUCCESS"  # type: ignore[attr-defined]
        out = _finish(proc, lines)
        assert "STATE success" in out, out[-3000:]
        run_id = next(line.split(" ", 1)[1].strip() for line in out.splitlines() if line.startswith("RUN "))
        manifest = RunContext.open(spec, run_id).read(SnapshotManifest).model_dump(mode="json")  # type: ignore[arg-type]
        assert manifest["partitions"][-1]["dt"] == str(DAY) and manifest["completion_marker"] == "_SUCCESS"
        assert hook.received == []  # nothing failed

        # 2. the next day's partition never completes: the wait ends at the spec's timeout (3 s here) and the run
        # fails naming the partition and the marker; the snapshot never runs; the failure reaches the webhook
        path, spec = _spec(tmp_path, hook.url, timeout_minutes=0.05)
        nov2 = date(2026, 11, 2)
        write_demo_data(spec, end_date=nov2, days=1, rows_per_day=20)  # type: ignore[arg-type]
        (tmp_path / "data" / "tickets" / f"dt={nov2}" / "_SUCCESS").unlink()
        proc, lines, deferred = _start(tmp_path, path.parent, f"{nov2}T00:00:00")
        out = _finish(proc, lines)
        assert deferred.is_set() and "STATE failed" in out, out[-3000:]
        partition = f"{spec.data.root}/tickets/dt={nov2}"  # type: ignore[attr-defined]
        expected = (f"partition {partition} did not arrive within 0:00:03: its completion marker '_SUCCESS' "
                    f"({partition}/_SUCCESS) is missing")
        assert expected in out, out[-3000:]
        run_id = next(line.split(" ", 1)[1].strip() for line in out.splitlines() if line.startswith("RUN "))
        ctx = RunContext.open(spec, run_id)  # type: ignore[arg-type]
        assert not ctx.store.exists(ctx.key("snapshot/manifest.json"))
        (failure,) = hook.events("failure")
        assert failure["model"] == "arrive" and failure["run_id"] == run_id and failure["dag_id"] == "retrain_arrive"
        assert failure["title"] == "arrive: task wait_for_data of retrain_arrive failed"
        assert expected in failure["text"] and failure["content_type"] == "application/json"
        assert failure["links"]["task"].startswith("/dags/retrain_arrive/runs/")
    finally:
        hook.close()


ROLLBACK = r"""
import json, sys
from datetime import datetime, timezone
from airflow.dag_processing.dagbag import DagBag
from sqlalchemy import select
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags["rollback_reg-test"].test(logical_date=datetime(2026, 11, 5, tzinfo=timezone.utc),
                                         run_conf={"reason": "test: back to v0001"})
print("STATE", run.state)
with create_session() as s:
    events = s.execute(select(AssetModel.uri, AssetEvent.extra, AssetEvent.source_dag_id, AssetEvent.source_task_id)
                       .join(AssetModel, AssetModel.id == AssetEvent.asset_id)).all()
print("EVENTS", json.dumps([list(e) for e in events]))
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rollback_emits_the_champion_asset_and_notifies(tmp_path: Path) -> None:
    """The rollback DAG moves the champion, emits tl://<model>/champion (extra: the new champion) for the score DAG
    to react to, and tells the spec's webhook."""
    from registry_fixtures import evidence_of, fake_run, make_spec
    from tl_core.registry import Registry

    hook = WebhookRecorder()
    try:
        store = (tmp_path / "store").as_uri()
        raw = make_spec(store).model_dump(mode="json")
        raw["notify"] = {"webhooks": [{"url": hook.url, "events": ["promotion", "failure"]}]}
        raw["data"]["completion_marker"] = None
        configs = tmp_path / "configs"
        configs.mkdir()
        (configs / "reg.yaml").write_text(yaml.safe_dump(raw))
        reg = Registry.for_spec(parse_spec(raw))
        v1, v2 = reg.register(fake_run(store, "r1")), reg.register(fake_run(store, "r2", seed=1))
        reg.promote(v1, None, {"approver": "alice"}, "alice", "first", evidence_of("r1"))
        reg.promote(v2, v1, {"approver": "alice"}, "alice", "second", evidence_of("r2"))
        env = airflow_env(tmp_path / "airflow")
        env["TL_CONFIGS_DIR"] = str(configs)
        (tmp_path / "airflow").mkdir()
        subprocess.run(["timeout", "-k", "10", "240", sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                       check=True, capture_output=True)
        proc = subprocess.run(["timeout", "-k", "10", "240", sys.executable, "-c", ROLLBACK, str(ROOT / "dags")],
                              env=env, capture_output=True, text=True)
    finally:
        hook.close()
    assert proc.returncode == 0 and "STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert reg.champion().version == v1  # type: ignore[union-attr]
    events = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("EVENTS "))[len("EVENTS "):])
    assert events == [["tl://reg-test/champion", {"version": v1, "previous": v2, "action": "rollback",
                                                  "actor": "dag_test"}, "rollback_reg-test", "rollback"]]
    (message,) = hook.received
    assert message["event"] == "promotion" and message["title"] == (
        f"reg-test: rolled back to {v1} (champion before: {v2})")
    assert message["lines"] == ["by dag_test", "reason: test: back to v0001"]
    assert message["links"]["registry"].startswith("/tl/registry/rollback_reg-test?run_id=")
