"""The run layout's guarantees: run ids name one folder, a run is bound to the spec it started with, and a
step never rewrites what a later step already consumed (issue 13, section 5, items 4 and 10)."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from tl_core.config import load_spec
from tl_core.demo.data import write_demo_data
from tl_core.errors import InvalidRunId, RunConflict
from tl_core.pipeline import _ctx, step_audit, step_snapshot, step_split
from tl_core.runs import RunContext, check_run_id

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LABELS = ["billing", "login", "shipping", "bug", "cancel"]


def _write_spec(path: Path, store_uri: str, data_uri: str, **changes: Any) -> str:
    raw = yaml.safe_load((CONFIGS / "support-tickets.yaml").read_text())
    raw.update(store=store_uri, registry=store_uri, **changes)
    raw["data"].update(root=data_uri, window_days=5, test_days=1)
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize(
    ("run_id", "message"),
    [
        ("..", r"run id '\.\.' must not contain '/', '\\', '\.\.' or control characters"),
        (".", r"run id '\.' must not contain .* must not be '\.'"),
        ("a/../b", r"run id 'a/\.\./b' must not contain '/'"),
        ("nightly/2026", r"run id 'nightly/2026' must not contain '/'"),
        ("back\\slash", r"must not contain '/', '\\'"),
        ("support\n", r"run id 'support\\n' must not contain .* control characters"),
        ("", r"run id must be a non-empty string, got ''"),
        ("x" * 201, r"run id is 201 bytes long \(UTF-8\), at most 200 are allowed"),
        ("\u00e9" * 101, r"run id is 202 bytes long"),
    ],
)
def test_bad_run_ids_are_refused(run_id: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidRunId, match=message):
        check_run_id(run_id)
    spec = load_spec(_write_spec(tmp_path / "s.yaml", (tmp_path / "store").as_uri(), (tmp_path / "d").as_uri()))
    with pytest.raises(InvalidRunId, match=message):
        RunContext.open(spec, run_id)
    assert not (tmp_path / "store" / "runs").exists()


def test_airflow_and_manual_run_ids_are_accepted() -> None:
    for run_id in ("manual__2026-11-01T00:00:00+00:00", "scheduled__2026-11-01T00:00:00+00:00",
                   "manual-20261101T000000-ab12cd", "x" * 200):
        assert check_run_id(run_id) == run_id


def test_a_run_is_bound_to_the_spec_it_started_with(tmp_path: Path) -> None:
    store, data = (tmp_path / "store").as_uri(), (tmp_path / "data").as_uri()
    path = _write_spec(tmp_path / "s.yaml", store, data, labels=LABELS)
    write_demo_data(load_spec(path), date(2026, 11, 1), days=6, rows_per_day=40)
    step_snapshot(path, "r1", "2026-11-01")
    run_dir = tmp_path / "store" / "runs" / "support-tickets" / "r1"
    bound = json.loads((run_dir / "spec.json").read_text())
    assert bound["fingerprint"] == load_spec(path).fingerprint() and bound["labels"] == LABELS
    step_snapshot(path, "r1", "2026-11-01")  # the same spec again (an Airflow retry): fine

    six = _write_spec(tmp_path / "six.yaml", store, data, labels=[*LABELS, "refund"])
    new = load_spec(six).fingerprint()
    message = (rf"run r1 was started with spec fingerprint {bound['fingerprint'][:16]}, this spec \(support-tickets\) "
               rf"has fingerprint {new[:16]} \(changed: labels\); a run is bound to the spec it started with "
               rf"\(.*/runs/support-tickets/r1/spec\.json\): start a new run id to use the changed spec")
    for step in (lambda: step_split(six, "r1"), lambda: step_audit(six, "r1"),
                 lambda: step_snapshot(six, "r1", "2026-11-01"), lambda: _ctx(six, "r1")):
        with pytest.raises(RunConflict, match=message):
            step()
    assert json.loads((run_dir / "spec.json").read_text()) == bound  # spec.json still names 5 labels
    assert not (run_dir / "split").exists() and not (run_dir / "audit").exists()
    # a new run id takes the changed spec
    step_snapshot(six, "r2", "2026-11-01")
    assert json.loads((tmp_path / "store/runs/support-tickets/r2/spec.json").read_text())["fingerprint"] == new


def test_rerunning_a_step_after_a_later_one_keeps_what_it_consumed(tmp_path: Path) -> None:
    path = _write_spec(tmp_path / "s.yaml", (tmp_path / "store").as_uri(), (tmp_path / "data").as_uri())
    write_demo_data(load_spec(path), date(2026, 11, 1), days=6, rows_per_day=40)
    step_snapshot(path, "r1", "2026-11-01")
    step_audit(path, "r1")
    split_json = tmp_path / "store" / "runs" / "support-tickets" / "r1" / "split" / "split.json"
    # before anything used the split, a re-run may write anything (an Airflow retry of a failed step)
    _ctx(path, "r1", "split").write_json("split/split.json", {"half": "written"})
    step_split(path, "r1")
    before = (split_json.read_bytes(), split_json.stat().st_ino, split_json.stat().st_mtime_ns)

    _ctx(path, "r1", "train", "frozen")  # training starts: it has consumed the split
    step_split(path, "r1")  # the same spec and data give the same bytes: allowed, and nothing is rewritten
    assert (split_json.read_bytes(), split_json.stat().st_ino, split_json.stat().st_mtime_ns) == before
    with pytest.raises(RunConflict, match=re.escape(
            "run r1: step 'split' would rewrite split/split.json with different content, but step 'train' has "
            "already used this run's artifacts (") + r".*\); a run never changes what a later step consumed: "
            r"start a new run id to redo 'split'"):
        _ctx(path, "r1", "split").write_json("split/split.json", {"counts": "changed"})
    assert split_json.read_bytes() == before[0]


def test_step_guard_on_both_backends(store_uri: str, tmp_path: Path) -> None:
    path = _write_spec(tmp_path / "s.yaml", store_uri, (tmp_path / "data").as_uri())
    frozen = _ctx(path, "r", "train", "frozen")
    frozen.write_json("models/frozen/train_report.json", {"val_metric": 0.5})
    _ctx(path, "r", "train", "lora")  # a sibling strategy is not downstream of frozen: frozen may retry
    frozen = _ctx(path, "r", "train", "frozen")
    frozen.write_json("models/frozen/train_report.json", {"val_metric": 0.6})
    etag = frozen.store.etag(frozen.key("models/frozen/train_report.json"))

    _ctx(path, "r", "select")
    frozen = _ctx(path, "r", "train", "frozen")
    frozen.write_json("models/frozen/train_report.json", {"val_metric": 0.6})  # identical: a no-op
    assert frozen.store.etag(frozen.key("models/frozen/train_report.json")) == etag
    frozen.write_json("models/frozen/new_file.json", {"extra": 1})  # a key nothing consumed yet: written
    with pytest.raises(RunConflict, match=r"step 'train' would rewrite models/frozen/train_report\.json with "
                                          r"different content, but step 'select' has already used"):
        frozen.write_json("models/frozen/train_report.json", {"val_metric": 0.9})
    assert json.loads(frozen.store.get_bytes(frozen.key("models/frozen/train_report.json"))) == {"val_metric": 0.6}
    # after register, a gate re-run cannot change the decision it registered either
    _ctx(path, "r", "gate").write_json("gate/decision.json", {"passed": False})
    _ctx(path, "r", "register")
    with pytest.raises(RunConflict, match=r"step 'gate' would rewrite gate/decision\.json .* step 'register'"):
        _ctx(path, "r", "gate").write_json("gate/decision.json", {"passed": True})
    with pytest.raises(ValueError, match=r"unknown step 'trian': expected one of \('snapshot', "):
        _ctx(path, "r", "trian")
