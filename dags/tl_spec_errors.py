"""Broken tl-retrain model specs as Airflow DAG import errors (this file defines no DAG).

dags/tl_dags.py builds each model's DAGs from its own spec and skips a spec that does not validate, so one broken
file never removes the other models' DAGs. This file makes the skipped ones visible where Airflow shows parse
problems (the UI's "DAG import errors", `airflow dags list-import-errors`): when any spec in the configs folder
gives no DAGs, importing it fails with one message naming every such file and why. It holds no DAG, so its
import error marks no other DAG stale.
"""

from __future__ import annotations

from tl_dag_factory import build_model_dags  # plugins/: on sys.path in Airflow

from tl_core.config import configs_dir, load_spec_folder
from tl_core.errors import SpecError


class BrokenModelSpecs(SpecError):
    """One or more model specs in the configs folder give no DAGs."""


def spec_problems() -> dict[str, str]:
    """File -> why it gives no DAGs: a spec that does not validate, a duplicated model name, or DAGs that do not
    build from a valid spec (built here without registering them, exactly as dags/tl_dags.py builds them)."""
    folder = load_spec_folder(configs_dir())
    problems = {str(path): message for path, message in folder.errors.items()}
    for name, (path, spec) in folder.specs.items():
        try:
            build_model_dags(str(path), spec, auto_register=False)
        except Exception as exc:  # noqa: BLE001 - reported below, naming the model and its file
            problems[str(path)] = f"{path}: the DAGs of model {name!r} do not build: {type(exc).__name__}: {exc}"
    return problems


_problems = spec_problems()
if _problems:
    raise BrokenModelSpecs(
        f"{len(_problems)} tl-retrain model spec(s) give no DAGs; the other models' DAGs are unaffected. Fix each "
        "file (`tl validate-spec FILE` shows the same message):\n\n" + "\n\n".join(_problems.values()))
