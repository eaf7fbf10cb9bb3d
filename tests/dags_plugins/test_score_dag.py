"""score_<model> in a real Airflow (dag.test(), SQLite, fresh process): on a day whose unlabeled partition has its
completion marker, the champion scores it (predictions with the version, the challenger in shadow with its
disagreement), drift is measured against the champion's training snapshot, and a class-mix shift emits the drift
asset tl://<model>/drift with the alerts and reaches the spec's webhook."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import yaml

from airflow_fixtures import ROOT, WebhookRecorder, airflow_env
from model_fixtures import tiny_bert_dir
from monitor_fixtures import build_champion, class_mix, put_partition, unlabeled
from tl_core.data.partitions import write_marker
from tl_core.store import open_store

RUN = r"""
import json, sys
from datetime import datetime, timezone
from airflow.dag_processing.dagbag import DagBag
from sqlalchemy import select
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags[sys.argv[2]].test(logical_date=datetime.fromisoformat(sys.argv[3]).replace(tzinfo=timezone.utc))
print("STATE", run.state)
print("TASKS", json.dumps({ti.task_id: str(ti.state) for ti in run.get_task_instances()}))
with create_session() as s:
    events = s.execute(select(AssetModel.uri, AssetEvent.extra).join(AssetModel, AssetModel.id == AssetEvent.asset_id)
                       ).all()
print("EVENTS", json.dumps([list(e) for e in events]))
"""
DAY = date(2026, 12, 3)


def _line(out: str, tag: str) -> object:
    return json.loads(next(x for x in out.splitlines() if x.startswith(tag + " "))[len(tag) + 1:])


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_score_dag_scores_with_the_champion_and_raises_drift(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("tl_core.registry.CACHE_DIR", tmp_path / "cache")
    champion = build_champion(tmp_path, tiny_bert_dir(tmp_path / "models"))
    spec = champion.spec
    put_partition(spec, DAY, unlabeled(class_mix()))
    write_marker(open_store(spec.monitor.scoring_root), spec.data.dataset, DAY, spec.data.completion_marker)
    hook = WebhookRecorder()
    try:
        raw = spec.model_dump(mode="json")
        raw["data"]["arrival_poke_seconds"] = 1
        raw["notify"] = {"webhooks": [{"url": hook.url, "events": ["drift", "failure"]}]}
        configs = tmp_path / "configs"
        configs.mkdir()
        (configs / "tiny.yaml").write_text(yaml.safe_dump(raw))
        env = airflow_env(tmp_path / "airflow")
        env["TL_CONFIGS_DIR"] = str(configs)
        (tmp_path / "airflow").mkdir()
        subprocess.run(["timeout", "-k", "10", "240", sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                       check=True, capture_output=True)
        proc = subprocess.run(["timeout", "-k", "10", "700", sys.executable, "-c", RUN, str(ROOT / "dags"),
                               f"score_{spec.name}", DAY.isoformat()], env=env, capture_output=True, text=True,
                              cwd=tmp_path)
    finally:
        hook.close()
    assert proc.returncode == 0 and "STATE success" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    tasks = _line(proc.stdout, "TASKS")
    assert tasks == {"wait_for_data": "success", "score": "success", "drift": "success", "drifted": "success",
                     "drift_alert": "success"}, tasks
    store = open_store(spec.store)
    prefix = f"scores/{spec.name}/dt={DAY.isoformat()}"
    pred = pd.read_parquet(io.BytesIO(store.get_bytes(f"{prefix}/predictions.parquet")))
    assert len(pred) == len(class_mix()) and (pred["model_version"] == "v0001").all()
    record = json.loads(store.get_bytes(f"{prefix}/scoring.json"))
    assert record["champion_version"] == "v0001" and record["challenger_version"] == "v0002"
    assert 0.0 <= record["disagreement"]["rate"] <= 1.0
    events = _line(proc.stdout, "EVENTS")
    [(uri, extra)] = events  # type: ignore[misc]
    assert uri == f"tl://{spec.name}/drift" and extra["dt"] == DAY.isoformat() and extra["champion_version"] == "v0001"
    assert any("billing" in a for a in extra["alerts"]), extra["alerts"]
    (message,) = hook.events("drift")
    assert message["title"].startswith(f"{spec.name}: drift beyond the spec's thresholds")
    assert message["lines"] == extra["alerts"]
