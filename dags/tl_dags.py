"""tl-retrain DAGs: for every valid model spec in the configs folder ($TL_CONFIGS_DIR), four DAGs.

  retrain_<model>   nightly retrain: snapshot -> audit -> split -> label issues -> train -> select -> export ->
                    evaluate -> gate -> register -> approval -> promote (backfills are shadow runs)
  promote_<model>   manual, approval-gated promotion of a registered version
  rollback_<model>  manual rollback of the champion
  score_<model>     scoring of the unlabeled partitions and drift, on every new champion and daily

What each DAG does is in plugins/tl_dag_factory.py. Each model's DAGs depend on its own spec only: a spec that
does not validate (or names a model another file already gives) gets no DAGs and shows up as an Airflow DAG import
error of dags/tl_spec_errors.py naming the file and the field; every other model keeps its four DAGs.
At parse time this reads the small YAML specs and nothing else: no torch, no store.
"""

from __future__ import annotations

import logging

from tl_dag_factory import build_model_dags  # plugins/: on sys.path in Airflow

from tl_core.config import configs_dir, load_spec_folder

log = logging.getLogger(__name__)


def _register_dags() -> None:
    folder = load_spec_folder(configs_dir())
    for path in folder.errors:  # the reasons are the import error of dags/tl_spec_errors.py
        log.warning("tl-retrain: %s gives no DAGs (see the DAG import error of tl_spec_errors.py)", path)
    for name, (path, spec) in folder.specs.items():
        try:
            dags = build_model_dags(str(path), spec)
        except Exception:  # noqa: BLE001 - one model's DAGs must never take the other models' DAGs down
            log.exception("tl-retrain: the DAGs of model %r (%s) could not be built", name, path)
            continue
        for dag in dags:
            globals()[dag.dag_id] = dag


_register_dags()
