"""`tl run` again on a finished run id (issue 29, item 7): every finished step is skipped, nothing is trained,
exported or rewritten, and `--register` then only registers. No step writes another step's artifact: the gate's
report with the decision is its own file (gate/report.html), evaluate's evaluation/report.html stays as written."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_fixtures import tiny_bert_dir
from tl_core.cli import main
from tl_core.config import parse_spec

RUN = "rerun-1"


def _spec(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    from tl_core.demo.data import write_demo_data

    raw = {"name": "rerun-tickets", "modality": "text", "labels": ["billing", "login", "shipping", "bug", "cancel"],
           "backbone": {"library": "transformers", "name": "tiny-bert", "weights": "local",
                        "path": str(tiny_bert_dir(tmp_path)), "max_length": 32},
           "data": {"root": (tmp_path / "data").as_uri(), "dataset": "tickets", "window_days": 5,
                    "slice_columns": ["region"], "test_days": 2, "min_examples_per_class": 3},
           "train": {"strategies": ["frozen"], "frozen_c_grid": [1.0]},
           "gate": {"n_bootstrap": 200, "min_slice_size": 10, "absolute_minimums": {"macro_f1": 0.2},
                    "calibration": {"ece_max": 0.5}},
           "store": (tmp_path / "store").as_uri(), "registry": (tmp_path / "registry").as_uri()}
    path = tmp_path / "rerun.yaml"
    path.write_text(yaml.safe_dump(raw))
    write_demo_data(parse_spec(raw), end_date=date(2026, 11, 1), days=6, rows_per_day=60)
    return path, raw


def _run_files(tmp_path: Path, raw: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
    """Every file of the run but the step records: its bytes and mtime (ns)."""
    root = tmp_path / "store" / "runs" / raw["name"] / RUN
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "steps"}


@pytest.mark.slow
def test_rerun_of_a_finished_run_skips_every_step_and_only_registers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    from tl_core.registry import Registry

    for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("tl_core.registry.CACHE_DIR", tmp_path / "cache")
    path, raw = _spec(tmp_path)
    argv = ["run", "--spec", str(path), "--run", RUN, "--date", "2026-11-01"]
    assert main(argv) == 0
    capsys.readouterr()
    before = _run_files(tmp_path, raw)
    assert "export/model.onnx" in before and "gate/decision.json" in before and "gate/report.html" in before
    # evaluate's report is evaluate's: the gate wrote its decision into its own page
    assert b"The gate has not run yet." in before["evaluation/report.html"][0]
    assert b"Gate: PASS" in before["gate/report.html"][0]

    caplog.set_level(logging.INFO, logger="tl_core")
    assert main([*argv, "--register"]) == 0
    out = capsys.readouterr().out
    assert f"run {RUN}: gate PASS" in out and "registered v0001" in out
    after = _run_files(tmp_path, raw)
    assert after.keys() - before.keys() == {"MODEL_CARD.md"}  # the registration's own file, nothing else new
    changed = [rel for rel in before if after[rel] != before[rel]]
    assert changed == [], f"a re-run of a finished run rewrote {changed}"
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().endswith(", skipped")]
    assert skipped == [f"step {step} already done for run {RUN}, skipped" for step in
                       ("snapshot", "audit", "split", "label-issues", "plan", "train_frozen", "select", "export",
                        "evaluate", "gate")]
    assert not any("already trained" in r.getMessage() or r.getMessage().startswith("exported ")
                   for r in caplog.records)
    registry = Registry.for_spec(parse_spec(raw))
    assert registry.list_versions() == ["v0001"] and registry.version_of_run(RUN) == "v0001"
    assert registry.champion() is None

    # once more with --register: the registration is done too, nothing new
    caplog.clear()
    assert main([*argv, "--register"]) == 0
    assert "registered v0001" in capsys.readouterr().out
    assert registry.list_versions() == ["v0001"]
    assert [r["action"] for r in registry.history()] == ["register"]
    assert _run_files(tmp_path, raw) == after

    # skipping never hides a conflict: another logical date or a changed spec is refused as before (exit 1)
    assert main(["run", "--spec", str(path), "--run", RUN, "--date", "2026-10-31", "--register"]) == 1
    assert "already has a snapshot" in capsys.readouterr().err
    raw["gate"]["absolute_minimums"] = {"macro_f1": 0.3}
    path.write_text(yaml.safe_dump(raw))
    assert main([*argv, "--register"]) == 1
    assert f"run {RUN} was started with spec fingerprint" in capsys.readouterr().err
    assert _run_files(tmp_path, raw) == after

