"""tl-retrain: an Airflow-scheduled retraining service for transfer learning on PyTorch.

`tl_core` is the product; it never imports Airflow. Every step runs as `tl <step>` too.

The public surface is ``__all__`` below: the spec, the store, a run, the registry, the steps the DAGs call and
the errors. Everything else (the modules under data/, models/, train/, evaluate/, gate/, export/, cli/, demo/)
is internal and may change between versions. Names load lazily: importing ``tl_core`` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # the model spec
    "ModelSpec": "tl_core.config", "load_spec": "tl_core.config", "parse_spec": "tl_core.config",
    # the object store and the run layout
    "ObjectStore": "tl_core.store", "open_store": "tl_core.store", "RunContext": "tl_core.runs",
    # the registry
    "Registry": "tl_core.registry", "Champion": "tl_core.registry",
    # the steps (one per DAG task and `tl` command) and a whole local run
    "step_snapshot": "tl_core.pipeline", "step_audit": "tl_core.pipeline", "step_split": "tl_core.pipeline",
    "step_train": "tl_core.pipeline", "step_select": "tl_core.pipeline", "step_export": "tl_core.pipeline",
    "step_evaluate": "tl_core.pipeline", "step_gate": "tl_core.pipeline", "step_register": "tl_core.pipeline",
    "step_promote": "tl_core.pipeline", "step_rollback": "tl_core.pipeline", "run_local": "tl_core.pipeline",
    # errors
    "TLError": "tl_core.errors", "SpecError": "tl_core.errors", "StoreError": "tl_core.errors",
    "DataError": "tl_core.errors", "RegistryError": "tl_core.registry", "ConflictError": "tl_core.registry",
    "IntegrityError": "tl_core.registry",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tl_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
