"""Issue 29 #1: one broken spec in the configs folder must not take the other models' DAGs and pages down.

A real Airflow dag processor (``airflow dag-processor --num-runs 1``, SQLite) parses dags/ with a configs folder
holding one valid spec and five broken ones: the valid model keeps its four DAGs (not stale), the broken files show
up as one DAG import error naming each file and field, and fixing them clears it on the next parse.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from airflow_fixtures import ROOT, airflow_env
from tl_core.config import load_spec_folder

BROKEN = {  # file -> (raw YAML text, or a change to the valid spec; what the import error must say about it)
    "b_yaml.yaml": ("name: [unclosed\n", "not valid YAML"),
    "b_noname.yaml": ({"name": None}, r"name: is required in a spec file"),
    "b_approval.yaml": ({"name": "b3", "approval": None}, "approval: input should be a valid dictionary"),
    "b_timeout.yaml": ({"name": "b4", "approval": {"response_timeout_hours": "1e300"}},
                       r"approval.response_timeout_hours: must be at most 720"),
    "b_arrival.yaml": ({"name": "b5", "data": {"arrival_timeout_minutes": "1e300"}},
                       r"data.arrival_timeout_minutes: must be at most 10080"),
    "a_dup.yaml": ({"name": "m1", "description": "a copy"}, "model name 'm1' is already given by m1.yaml"),
}


def _valid() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "support-tickets.yaml").read_text())
    return {**raw, "name": "m1"}


def _write_configs(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "m1.yaml").write_text(yaml.safe_dump(_valid()))
    for file, (change, _) in BROKEN.items():
        if isinstance(change, str):
            (folder / file).write_text(change)
            continue
        raw = {**_valid(), **change}
        if raw["name"] is None:
            del raw["name"]
        if "data" in change:
            raw["data"] = {**_valid()["data"], **change["data"]}
        (folder / file).write_text(yaml.safe_dump(raw))


def _airflow(env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> str:
    proc = subprocess.run(["timeout", "-k", "10", "300", str(Path(sys.executable).parent / "airflow"), *args],
                          env=env, capture_output=True, text=True)
    assert proc.returncode in ok, f"airflow {' '.join(args)} exited {proc.returncode}: {proc.stderr[-3000:]}"
    return proc.stdout


def _json_out(text: str) -> Any:
    return json.loads(next(line for line in reversed(text.splitlines()) if line.startswith("[")))


def test_a_broken_spec_is_an_import_error_naming_it_and_the_other_models_keep_their_dags(tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    _write_configs(configs)
    env = {**airflow_env(tmp_path / "home"), "TL_CONFIGS_DIR": str(configs)}
    _airflow(env, "db", "migrate")
    _airflow(env, "dag-processor", "--num-runs", "1")

    errors = _json_out(_airflow(env, "dags", "list-import-errors", "-o", "json", ok=(1,)))  # 1: errors found
    assert [e["filepath"] for e in errors] == ["tl_spec_errors.py"], errors
    message = errors[0]["error"]
    assert f"{len(BROKEN)} tl-retrain model spec(s) give no DAGs" in message
    for file, (_, expected) in BROKEN.items():
        assert re.search(rf"{re.escape(str(configs / file))}: [^\n]*(\n  )?[^\n]*{expected}", message), (file, message)
    with sqlite3.connect(tmp_path / "home" / "airflow.db") as db:
        dags = {row[0]: row[1:] for row in db.execute("select dag_id, is_stale, has_import_errors from dag")}
    assert dags == {f"{kind}_m1": (0, 0) for kind in ("retrain", "promote", "rollback", "score")}

    # fixed files: the next parse clears the import error and adds their models' DAGs
    shutil.rmtree(configs)
    configs.mkdir()
    (configs / "m1.yaml").write_text(yaml.safe_dump(_valid()))
    (configs / "b4.yaml").write_text(yaml.safe_dump({**_valid(), "name": "b4"}))
    _airflow(env, "dag-processor", "--num-runs", "1")
    assert _json_out(_airflow(env, "dags", "list-import-errors", "-o", "json") + "\n[]") == []
    with sqlite3.connect(tmp_path / "home" / "airflow.db") as db:
        live = {row[0] for row in db.execute("select dag_id from dag where is_stale = 0")}
    assert live == {f"{kind}_{m}" for kind in ("retrain", "promote", "rollback", "score") for m in ("m1", "b4")}


def test_the_file_named_after_the_model_keeps_a_duplicated_name(tmp_path: Path) -> None:
    _write_configs(tmp_path)
    folder = load_spec_folder(tmp_path)
    assert set(folder.specs) == {"m1"} and folder.specs["m1"][0].name == "m1.yaml"  # a_dup.yaml sorts first
    assert sorted(p.name for p in folder.errors) == sorted(BROKEN)
    assert folder.claimed["b3"].name == "b_approval.yaml"


@pytest.fixture()
def plugin(tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    configs = tmp_path / "configs"
    _write_configs(configs)
    raw = {**_valid(), "store": store_uri}
    (configs / "m1.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("TL_CONFIGS_DIR", str(configs))
    sys.path.insert(0, str(ROOT / "plugins"))
    try:
        import tl_plugin
    finally:
        sys.path.pop(0)
    tl_plugin.app.dependency_overrides[tl_plugin.readable_dag] = lambda dag_id: dag_id
    try:
        yield tl_plugin
    finally:
        tl_plugin.app.dependency_overrides.clear()


def test_the_other_models_pages_work_next_to_a_broken_spec(plugin: Any) -> None:
    client = TestClient(plugin.app)
    page = client.get("/registry/rollback_m1")
    assert page.status_code == 200 and "Model registry: m1" in page.text
    # issue 29 #10: the registry page sends the same Content-Security-Policy as the report and card pages
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert client.get("/report/retrain_m1/manual__1").status_code == 404  # no report yet: the model's own 404
    broken = client.get("/registry/retrain_b3")
    assert broken.status_code == 503 and "model spec of 'b3' does not validate" in broken.text
    assert "/configs" not in broken.text  # the reasons (with paths) are in the DAG import errors, not the page
    assert client.get("/registry/retrain_nobody").status_code == 404
