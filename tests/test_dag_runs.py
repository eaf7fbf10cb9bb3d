"""Whole retrain DAG runs through dag.test() on tiny data (a real Airflow, SQLite, fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from model_fixtures import tiny_bert_dir
from test_dags import ROOT, airflow_env
from tl_core.config import parse_spec
from tl_core.data.demo import write_demo_data
from tl_core.registry import Registry

RUN = r"""
import sys
from datetime import datetime, timezone
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
dag = bag.dags[sys.argv[2]]
run = dag.test(logical_date=datetime.fromisoformat(sys.argv[3]).replace(tzinfo=timezone.utc),
               mark_success_pattern=sys.argv[4] or None)
print("STATE", run.state)
"""


def _spec(tmp: Path, **gate: object) -> tuple[Path, object]:
    uri = tmp.as_uri()
    raw = {
        "name": "tiny-tickets", "modality": "text", "labels": ["billing", "login", "shipping", "bug", "cancel"],
        "backbone": {"library": "transformers", "name": "tiny-bert", "weights": "local",
                     "path": str(tiny_bert_dir(tmp)), "max_length": 32},
        "data": {"root": uri + "/data", "dataset": "tickets", "window_days": 5, "slice_columns": ["region"],
                 "test_days": 2, "min_examples_per_class": 3},
        "train": {"strategies": ["frozen", "full"], "epochs": 1, "warmup_epochs": 0, "frozen_c_grid": [1.0]},
        "gate": {"n_bootstrap": 200, "min_slice_size": 10, "absolute_minimums": {"macro_f1": 0.2},
                 "calibration": {"ece_max": 0.5}, **gate},
        "store": uri + "/store",
    }
    configs = tmp / "configs"
    configs.mkdir(exist_ok=True)
    path = configs / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = parse_spec(raw)
    write_demo_data(spec, end_date=date(2026, 11, 1), days=6, rows_per_day=60)
    return path, spec


def _dag_test(tmp: Path, configs: Path, dag_id: str, day: str, mark_success: str = "") -> str:
    home = tmp / "airflow"
    home.mkdir(exist_ok=True)
    env = airflow_env(home)
    env["TL_CONFIGS_DIR"] = str(configs)
    subprocess.run(["timeout", "-k", "10", "240", sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                   check=True, capture_output=True)
    proc = subprocess.run(["timeout", "-k", "10", "600", sys.executable, "-c", RUN, str(ROOT / "dags"), dag_id, day,
                           mark_success], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_retrain_dag_promotes_after_approval(tmp_path: Path) -> None:
    path, spec = _spec(tmp_path)
    out = _dag_test(tmp_path, path.parent, "retrain_tiny-tickets", "2026-11-01T00:00:00", "^approval$")
    assert "STATE success" in out
    registry = Registry.for_spec(spec)  # type: ignore[arg-type]
    champion = registry.champion()
    assert champion is not None and champion.version == "v0001"
    actions = [r["action"] for r in registry.history()]
    assert actions == ["register", "promote"]
    run_dirs = list((tmp_path / "store" / "runs" / "tiny-tickets").iterdir())
    decision = json.loads((run_dirs[0] / "gate" / "decision.json").read_text())
    assert decision["bootstrap"] is True and decision["passed"] is True
    assert (run_dirs[0] / "export" / "model.onnx").exists()


@pytest.mark.slow
def test_retrain_dag_gate_fail_records_rejection(tmp_path: Path) -> None:
    path, spec = _spec(tmp_path, absolute_minimums={"macro_f1": 0.999})
    out = _dag_test(tmp_path, path.parent, "retrain_tiny-tickets", "2026-11-01T00:00:00", "^approval$")
    assert "STATE success" in out
    registry = Registry.for_spec(spec)  # type: ignore[arg-type]
    assert registry.champion() is None and registry.list_versions() == []
    history = registry.history()
    assert [r["action"] for r in history] == ["reject"]
    assert "macro_f1 overall" in history[0]["reason"] and "minimum 0.999" in history[0]["reason"]
