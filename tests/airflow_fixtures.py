"""A throwaway Airflow home for DagBag and dag.test() runs in a fresh process (SQLite)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def airflow_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"), TL_CONFIGS_DIR=str(ROOT / "configs"),
               AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"))
    return env
