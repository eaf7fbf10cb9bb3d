"""The steps a retrain run is made of: one function per DAG task and per `tl` command.

Each takes a spec path and run id (and plain values), returns a URI or a small JSON-able dict, and is
idempotent for the same run id. The DAG tasks call exactly one of these each; the imports are lazy so
that importing this module stays cheap.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from tl_core.config import load_spec
from tl_core.runs import RunContext


def _ctx(spec_path: str, run_id: str) -> RunContext:
    ctx = RunContext.open(load_spec(spec_path), run_id)
    ctx.save_spec()
    return ctx


def step_snapshot(spec_path: str, run_id: str, logical_date: str) -> str:
    from tl_core.data.snapshot import run_snapshot

    return run_snapshot(_ctx(spec_path, run_id), date.fromisoformat(logical_date[:10]))


def step_audit(spec_path: str, run_id: str) -> str:
    from tl_core.data.audit import run_audit

    return run_audit(_ctx(spec_path, run_id))


def step_split(spec_path: str, run_id: str) -> str:
    from tl_core.data.split import run_split

    return run_split(_ctx(spec_path, run_id))


def step_train(spec_path: str, run_id: str, strategy: str) -> str:
    from tl_core.train.run import run_train

    return run_train(_ctx(spec_path, run_id), strategy)


def step_select(spec_path: str, run_id: str) -> str:
    from tl_core.train.run import run_select

    return run_select(_ctx(spec_path, run_id))


def step_export(spec_path: str, run_id: str) -> str:
    from tl_core.export.onnx_export import run_export

    return run_export(_ctx(spec_path, run_id))


def step_evaluate(spec_path: str, run_id: str) -> str:
    from tl_core.evaluate.run import run_evaluate

    return run_evaluate(_ctx(spec_path, run_id))


def step_gate(spec_path: str, run_id: str) -> dict[str, Any]:
    from tl_core.evaluate.run import run_gate

    return run_gate(_ctx(spec_path, run_id))
