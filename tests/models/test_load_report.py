"""transformers' load report at a text-backbone load (issue 29, item 21): the checkpoint's unused pooler weights are
expected (the backbone is built without its pooler), so they are one debug record of ours, not transformers' table
on stderr; weights the backbone itself lacks stay a warning."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from model_fixtures import MINILM_DIR, tiny_bert_dir
from tl_core.config import ModelSpec, parse_spec
from tl_core.models.backbones import load_backbone

LOGGER = "tl_core.models.backbones"


def _spec(path: Path, name: str) -> ModelSpec:
    return parse_spec({"name": "t", "modality": "text", "labels": ["a", "b"],
                       "backbone": {"library": "transformers", "name": name, "weights": "local", "path": str(path),
                                    "max_length": 16},
                       "data": {"root": "file:///nonexistent/data", "dataset": "d"},
                       "store": "file:///nonexistent/store"})


def _table_in(text: str) -> list[str]:
    return [word for word in ("LOAD REPORT", "UNEXPECTED", "MISSING", "pooler.dense") if word in text]


@pytest.mark.slow
def test_load_report_of_minilm_is_one_debug_record_naming_the_unused_keys(
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    backbone = load_backbone(_spec(MINILM_DIR, "all-MiniLM-L6-v2"))
    assert backbone.num_features == 384
    out, err = capfd.readouterr()
    assert _table_in(out + err) == [], f"transformers' load report reached stdout/stderr:\n{out}{err}"
    ours = [r for r in caplog.records if r.name == LOGGER and "pooler" in r.getMessage()]
    assert len(ours) == 1 and ours[0].levelno == logging.DEBUG, [r.getMessage() for r in ours]
    assert "pooler.dense.bias" in ours[0].getMessage() and "pooler.dense.weight" in ours[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_load_report_keeps_missing_backbone_weights_a_warning(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A checkpoint without one of the backbone's own tensors: the backbone is initialised there, and we say so."""
    from safetensors.torch import load_file, save_file

    model_dir = tiny_bert_dir(tmp_path)
    weights = model_dir / "model.safetensors"
    tensors = load_file(str(weights))
    dropped = next(k for k in tensors if k.endswith("layer.0.attention.self.query.weight"))
    del tensors[dropped]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    load_backbone(_spec(model_dir, "tiny-bert"))
    out, err = capfd.readouterr()
    assert _table_in(out + err) == [], f"transformers' load report reached stdout/stderr:\n{out}{err}"
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "encoder.layer.0.attention.self.query.weight" in warnings[0], caplog.text
    assert "missing from the checkpoint" in warnings[0] and str(model_dir) in warnings[0]
