from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tl_core.config import ModelSpec, load_spec, load_specs, parse_spec
from tl_core.errors import SpecError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _base() -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / "support-tickets.yaml").read_text())


def test_example_specs_validate() -> None:
    specs = load_specs(CONFIGS)
    assert {s.modality for s in specs} == {"text", "image"}
    for s in specs:
        assert isinstance(s, ModelSpec)
        assert len(s.fingerprint()) == 64


def test_fingerprint_is_stable_and_sensitive() -> None:
    a = parse_spec(_base())
    b = parse_spec(_base())
    assert a.fingerprint() == b.fingerprint()
    raw = _base()
    raw["train"]["seed"] = 123
    assert parse_spec(raw).fingerprint() != a.fingerprint()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["gate"].setdefault("calibration", {}).update(ece_max=1.7),
         r"gate\.calibration\.ece_max: must be between 0 and 1, got 1\.7"),
        (lambda r: r.update(name="Bad/Name"), r"name: must be 1-63 characters .* got 'Bad/Name'"),
        (lambda r: r.update(modality="audio"), r"modality: input should be 'text' or 'image', got 'audio'"),
        (lambda r: r["data"].update(window_days=0), r"data\.window_days: must be greater than 0, got 0"),
        (lambda r: r["data"].update(root="/abs/path"), r"data\.root: must be a store URI"),
        (lambda r: r["train"].update(strategies=["frozen", "magic"]), r"train\.strategies\.1: input should be"),
        (lambda r: r.update(labels=["a"]), r"labels must list at least 2 classes, got 1"),
        (lambda r: r.update(labels=["a", "a", "b"]), r"labels must be unique, got duplicates \['a'\]"),
        (lambda r: r.update(colour="blue"), r"colour: unknown field"),
        (lambda r: r["backbone"].update(library="timm"), r"backbone\.library must be 'transformers'"),
        (lambda r: r.setdefault("export", {}).update(opset=13), r"opset must be 17 or newer, got 13"),
        (lambda r: r["gate"].update(margins={"macro_f1": -0.1}), r"gate\.margins\.macro_f1: must be 0 or greater"),
        (lambda r: r["data"].update(slice_crosses=[["region", "nope"]]), r"slice_crosses entries must be pairs"),
    ],
)
def test_bad_spec_names_field(mutate: Any, message: str) -> None:
    raw = _base()
    mutate(raw)
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_load_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a YAML mapping, got list"):
        load_spec(lst)


def test_duplicate_names_across_specs(tmp_path: Path) -> None:
    for n in ("a", "b"):
        (tmp_path / f"{n}.yaml").write_text((CONFIGS / "support-tickets.yaml").read_text())
    with pytest.raises(SpecError, match="must be unique across specs"):
        load_specs(tmp_path)
