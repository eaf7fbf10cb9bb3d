"""DAG integrity: parse with a real DagBag in a fresh process (temp AIRFLOW_HOME, SQLite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_fixtures import ROOT, airflow_env

PROBE = r"""
import json, sys, time
as_list = lambda x: x if isinstance(x, list) else ([] if x is None else [x])
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "parse_s": time.perf_counter() - t0,
       "heavy": sorted(m for m in ("torch", "timm", "transformers", "peft", "onnxruntime", "sklearn", "boto3",
                                   "tl_core.store", "tl_core.pipeline") if m in sys.modules),
       "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "tasks": sorted(t.task_id for t in dag.tasks),
        "queues": {t.task_id: t.queue for t in dag.tasks},
        "pools": {t.task_id: t.pool for t in dag.tasks},
        "params": sorted(dag.params.keys()),
        "schedule": str(dag.schedule) if hasattr(dag, "schedule") else None,
        "timetable": type(dag.timetable).__name__,
        "schedule_assets": sorted(a.uri for _, a in dag.timetable.asset_condition.iter_assets())
        if getattr(dag.timetable, "asset_condition", None) is not None else [],
        "catchup": dag.catchup,
        "outlets": {t.task_id: [a.uri for a in t.outlets] for t in dag.tasks if t.outlets},
        "sensor": next((type(t).__name__ for t in dag.tasks if t.task_id == "wait_for_data"), None),
        "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks},
        "mapped": {t.task_id: {"template": t.partial_kwargs.get("map_index_template"),
                               "per_run": t.partial_kwargs.get("max_active_tis_per_dagrun")}
                   for t in dag.tasks if hasattr(t, "partial_kwargs")},
        "param_schema": {k: dag.params.get_param(k).schema for k in dag.params.keys()},
        "callbacks": {t.task_id: [n.event for n in [*(getattr(t, "notifiers", None) or []),
                                                     *as_list(t.on_success_callback)] if hasattr(n, "event")]
                      for t in dag.tasks},
    }
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow-home")
    proc = subprocess.run(["timeout", "-k", "10", "180", sys.executable, "-c", PROBE, str(ROOT / "dags")],
                          env=airflow_env(home), capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_no_import_errors_and_no_heavy_imports(parsed: dict) -> None:
    assert parsed["errors"] == {}
    # boto3: any Asset in a DAG file makes Airflow load every provider's asset URI handlers (the amazon provider's
    # s3 handler imports its S3 hook); nothing of ours imports it at parse time
    assert [m for m in parsed["heavy"] if m != "boto3"] == [], f"parsing the DAG folder imported {parsed['heavy']}"


def test_expected_dags_and_tasks(parsed: dict) -> None:
    import yaml

    specs = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    expected = {f"{kind}_{s['name']}" for s in specs for kind in ("retrain", "promote", "rollback", "score")}
    assert set(parsed["dags"]) == expected
    for s in specs:
        d = parsed["dags"][f"retrain_{s['name']}"]
        trains = {"train_frozen", "train_tuned"}  # mapped over the run's plan: one task instance per model
        assert trains | {"snapshot", "audit", "split", "label_issues", "plan_frozen", "plan_tuned",
                         "select", "export", "evaluate", "gate", "route", "register",
                         "approval", "check_evidence", "promote", "reject_candidate", "record_no_promotion",
                         "route_shadow", "shadow_recorded", "wait_for_data"} == set(d["tasks"])
        for t in trains | {"label_issues", "export", "evaluate"}:
            assert d["queues"][t] == "gpu" and d["pools"][t] == "gpu"
        # label issues: an explicit step between split and the plans (train tasks read its finding)
        assert d["upstream"]["label_issues"] == ["split"] and d["upstream"]["plan_frozen"] == ["label_issues"]
        assert d["queues"]["snapshot"] != "gpu"
        assert d["params"] == ["allow_promotion", "strategies", "window_days"]
        models = [*s["train"]["strategies"], *(f"{x}-{c['name']}" for c in s.get("candidates") or []
                                               for x in c["strategies"])]
        assert d["param_schema"]["strategies"]["items"]["enum"] == models  # the UI offers the spec's models
        assert d["mapped"] == {t: {"template": "{{ tl_model }}", "per_run": s["train"].get("tasks_per_run", 1)}
                               for t in trains}
        assert d["upstream"]["train_frozen"] == ["plan_frozen"] and d["upstream"]["select"] == sorted(trains)
        assert d["upstream"]["train_tuned"] == ["plan_tuned", *(["train_frozen"] if s.get("candidates") else [])]
        assert d["catchup"] is False
        assert parsed["dags"][f"rollback_{s['name']}"]["params"] == ["reason", "target"]
        promote = parsed["dags"][f"promote_{s['name']}"]
        assert promote["params"] == ["expect_champion", "override_gate", "override_reason", "reason", "version"]
        # manual promotion is approval-gated like the nightly one
        assert set(promote["tasks"]) == {"check_promotable", "approval", "promote", "record_no_promotion"}
        score = parsed["dags"][f"score_{s['name']}"]
        assert set(score["tasks"]) == {"wait_for_data", "score", "drift", "drifted", "drift_alert"}
        assert score["queues"]["score"] == "gpu" and score["params"] == ["dt"]
        # the loop's wiring: promotion and rollback emit the champion asset; score_ runs on it or on its cron
        champion = f"tl://{s['name']}/champion"
        assert d["outlets"]["promote"] == [champion] and promote["outlets"]["promote"] == [champion]
        assert parsed["dags"][f"rollback_{s['name']}"]["outlets"]["rollback"] == [champion]
        assert score["outlets"]["drift_alert"] == [f"tl://{s['name']}/drift"]
        assert score["timetable"] == "AssetOrTimeSchedule" and score["schedule_assets"] == [champion]
        assert d["sensor"] == "MarkerFileSensor" and d["upstream"]["snapshot"] == ["wait_for_data"]
        assert d["callbacks"]["approval"] == ["pending_approval"] and d["callbacks"]["reject_candidate"] == [
            "gate_fail"]


def test_shadow_rule() -> None:
    sys.path[:0] = [str(ROOT / "dags"), str(ROOT / "plugins")]  # the DAG file imports our operators by name
    try:
        from tl_dag_factory import is_shadow
    finally:
        del sys.path[:2]
    assert is_shadow("backfill", False) and is_shadow("DagRunType.BACKFILL_JOB", False)
    assert not is_shadow("backfill", True)
    assert not is_shadow("scheduled", False) and not is_shadow("manual", False)


def test_window_days_param_overrides_the_snapshot_window(tmp_path: Path) -> None:
    """The retrain DAG's `window_days` param reaches the snapshot (one run only; the spec is unchanged)."""
    from datetime import date

    import yaml

    from tl_core.artifacts import SnapshotManifest
    from tl_core.config import load_spec
    from tl_core.demo.data import write_demo_data
    from tl_core.pipeline import step_snapshot
    from tl_core.runs import RunContext

    raw = {"name": "win", "labels": ["billing", "login", "shipping", "bug", "cancel"],
           "backbone": {"library": "transformers", "name": "bert"}, "store": (tmp_path / "store").as_uri(),
           "data": {"root": (tmp_path / "data").as_uri(), "dataset": "t", "window_days": 4, "test_days": 1}}
    path = tmp_path / "win.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    write_demo_data(spec, end_date=date(2026, 11, 1), days=8, rows_per_day=20)

    step_snapshot(str(path), "nightly", "2026-11-01T00:00:00+00:00")
    step_snapshot(str(path), "override", "2026-11-01T00:00:00+00:00", 1)
    nightly = RunContext.open(spec, "nightly").read(SnapshotManifest).model_dump(mode="json")
    override = RunContext.open(spec, "override").read(SnapshotManifest).model_dump(mode="json")
    assert [p["dt"] for p in nightly["partitions"]] == [f"2026-10-{d}" for d in (28, 29, 30, 31)] + ["2026-11-01"]
    assert [p["dt"] for p in override["partitions"]] == ["2026-10-31", "2026-11-01"]
    assert override["window_days"] == 1 and nightly["window_days"] == 4
    assert load_spec(path).data.window_days == 4
    for bad in (0, -3, True, "2"):
        with pytest.raises(ValueError, match=rf"run bad: window_days override must be .* got {bad!r}"):
            step_snapshot(str(path), "bad", "2026-11-01", bad)  # type: ignore[arg-type]


def test_plugin_loads_without_heavy_imports(tmp_path: Path) -> None:
    """The plugin module is imported by every Airflow component: no torch, no store, no boto3 at import."""
    probe = ("import json, sys; sys.path.insert(0, sys.argv[1]); import tl_plugin; "
             "print(json.dumps([m for m in ('torch', 'transformers', 'boto3', 'tl_core.store', 'tl_core.registry') "
             "if m in sys.modules] + [p.name for p in [tl_plugin.TLRetrainPlugin]]))")
    proc = subprocess.run(["timeout", "-k", "10", "120", sys.executable, "-c", probe, str(ROOT / "plugins")],
                          env=airflow_env(tmp_path), capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["tl_retrain"]
