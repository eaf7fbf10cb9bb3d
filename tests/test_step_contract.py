"""The step contract (DESIGN.md "Step contract"): every artifact one step writes and another reads is a typed,
versioned model whose key is known in one place (tl_core.runs.RUN_ARTIFACTS); no step reads another step's JSON by
hand; every artifact of a real seeded run validates against its model; a file of another schema version is refused
naming the file and both versions."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import yaml

from model_fixtures import tiny_bert_dir
from tl_core.artifacts import (
    Artifact,
    ArtifactError,
    ImageList,
    ModelConfig,
    Plan,
    Selection,
    SplitReport,
    TrainReport,
    dump_artifact,
    parse_artifact,
)
from tl_core.runs import RUN_ARTIFACTS, RunContext, artifact_rel

TL_CORE = Path(__file__).resolve().parents[1] / "tl_core"

# JSON that tl_core may parse by hand: none of it is a step artifact (those go through tl_core.artifacts.parse_artifact
# via RunContext.read). One entry per file, with the reason; an entry that no longer matches anything fails the test.
NOT_STEP_ARTIFACTS: dict[str, str] = {
    "artifacts.py": "parse_artifact: the one parser of artifact files",
    "airflow_api.py": "Airflow's REST API responses and the simple auth manager's password file",
    "demo/local_airflow.py": "the demo Airflow's generated admin password file",
    "cli/registry.py": "`tl registry promote --approval FILE`: a person's approval JSON given on the command line",
    "models/backbones.py": "a Hugging Face / timm checkpoint's own config.json (not written by a step)",
    "store.py": "the store's own lock claim records",
    "train/lease.py": "the train lease record (who trains a model now), a lock, not a step artifact",
    "runs.py": "spec.json: the run's binding to its spec (a ModelSpec dump with its fingerprint, not a step's output)",
    "registry/layout.py": "registry records (ledger, champion pointer, claims) read through the registry's layout",
    "monitor/drift.py": "a registered version's spec.json (the spec its run was bound to, validated by parse_spec)",
}


def _hand_reads(path: Path) -> list[tuple[int, str]]:
    """(line, what) of every json.loads / json.load call, `from json import load(s)` and .read_json( call."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "json":
            found += [(node.lineno, f"from json import {a.name}") for a in node.names if a.name in ("load", "loads")]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        attr, owner = node.func.attr, node.func.value
        if attr in ("load", "loads") and isinstance(owner, ast.Name) and owner.id == "json":
            found.append((node.lineno, f"json.{attr}"))
        elif attr == "read_json":
            found.append((node.lineno, ".read_json("))
    return found


def test_step_contract_no_step_reads_json_by_hand() -> None:
    assert not hasattr(RunContext, "read_json")  # removed: a step reads an artifact with RunContext.read(Model)
    hits = {str(p.relative_to(TL_CORE)): _hand_reads(p) for p in sorted(TL_CORE.rglob("*.py"))}
    hits = {k: v for k, v in hits.items() if v}
    unexpected = {k: v for k, v in hits.items() if k not in NOT_STEP_ARTIFACTS}
    assert not unexpected, (
        f"JSON read by hand in {unexpected}: a step reads another step's artifact with RunContext.read(Model) "
        "(tl_core/artifacts.py); JSON that is not a step artifact goes in NOT_STEP_ARTIFACTS with the reason")
    stale = sorted(set(NOT_STEP_ARTIFACTS) - set(hits))
    assert not stale, f"{stale} no longer read JSON by hand: remove them from NOT_STEP_ARTIFACTS"
    assert len(NOT_STEP_ARTIFACTS) <= 10  # small on purpose: a new entry needs a reason that is not a step artifact


def test_step_contract_keys_are_known_once() -> None:
    rels = [rel for rel, _ in RUN_ARTIFACTS.values()]
    assert len(rels) == len(set(rels))
    for model, (rel, step) in RUN_ARTIFACTS.items():
        assert rel.endswith(".json") and step, model
        assert artifact_rel(model, "frozen") == rel.format(strategy="frozen")
    with pytest.raises(TypeError, match=r"TrainReport is kept per strategy \(models/\{strategy\}/train_report\.json\)"):
        artifact_rel(TrainReport)
    with pytest.raises(TypeError, match="ImageList is not a run artifact"):
        artifact_rel(ImageList)


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunContext]:
    """One whole small retrain through tl_core.pipeline.run_local (the DAG's steps in order, no Airflow): two backbones
    (frozen baselines, a LoRA model of the shortlisted one, the other skipped with its reason), ONNX export with the
    int8 artifact, evaluation and gate."""
    from tl_core.config import parse_spec
    from tl_core.demo.data import write_demo_data
    from tl_core.pipeline import run_local

    root = tmp_path_factory.mktemp("contract")
    tiny, other = tiny_bert_dir(root / "models"), tiny_bert_dir(root / "models", "other-bert", seed=1)
    raw = {"name": "contract", "modality": "text", "labels": ["billing", "login", "shipping", "bug", "cancel"],
           "backbone": {"library": "transformers", "name": "tiny-bert", "weights": "local", "path": str(tiny),
                        "max_length": 16},
           "candidates": [{"name": "other", "strategies": ["frozen", "lora"],
                           "backbone": {"library": "transformers", "name": "other-bert", "weights": "local",
                                        "path": str(other), "max_length": 16}}],
           "selection": {"finetune_top_k": 1, "serving_batch": 4, "latency_runs": 2},
           "data": {"root": (root / "data").as_uri(), "dataset": "tickets", "window_days": 5,
                    "slice_columns": ["region"], "test_days": 2, "min_examples_per_class": 3},
           "train": {"strategies": ["frozen", "lora"], "frozen_c_grid": [1.0], "epochs": 1, "warmup_epochs": 0,
                     "batch_size": 32},
           "export": {"quantize_int8": True},
           "gate": {"n_bootstrap": 50, "min_slice_size": 10}, "store": (root / "store").as_uri()}
    path = root / "contract.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = parse_spec(raw)
    write_demo_data(spec, end_date=date(2026, 11, 1), days=6, rows_per_day=40)
    with pytest.MonkeyPatch.context() as mp:
        for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
            mp.delenv(var, raising=False)
        mp.setattr("tl_core.registry.CACHE_DIR", root / "cache")
        run_local(str(path), "seeded", "2026-11-01")
        yield RunContext.open(spec, "seeded")


def _present(ctx: RunContext) -> list[tuple[type[Artifact], str | None]]:
    """(model, strategy) of every RUN_ARTIFACTS key the run holds (per-strategy keys for every model folder)."""
    folders = sorted({k.split("/")[len(ctx.prefix.split("/")) + 1] for k in ctx.store.list(ctx.key("models") + "/")})
    out: list[tuple[type[Artifact], str | None]] = []
    for model, (rel, _) in RUN_ARTIFACTS.items():
        for strategy in (folders if "{strategy}" in rel else [None]):
            if ctx.has(model, strategy):
                out.append((model, strategy))
    return out


@pytest.mark.slow
def test_step_contract_every_artifact_of_a_seeded_run_validates(seeded_run: RunContext) -> None:
    ctx = seeded_run
    present = _present(ctx)
    kinds = {model for model, _ in present}
    for model, strategy in present:
        assert isinstance(ctx.read(model, strategy), model)
    # 14 kinds of run artifact, one per RUN_ARTIFACTS entry: all of them in this run
    assert kinds == set(RUN_ARTIFACTS), sorted(m.__name__ for m in set(RUN_ARTIFACTS) - kinds)
    assert len(present) >= 20, [(m.__name__, s) for m, s in present]  # per-strategy files of 4 model folders
    # every JSON file under the run that is not spec.json or a step record is one of them
    listed = {k[len(ctx.prefix) + 1:] for k in ctx.store.list(ctx.prefix + "/") if k.endswith(".json")}
    typed = {artifact_rel(m, s) for m, s in present}
    # not step artifacts: the run's spec binding, the step records, a model folder's tokenizer and HF config files
    # and its train lease (resume/: a lock)
    untyped = {k for k in listed - typed if k != "spec.json" and not k.startswith("steps/")
               and "/preprocessing/" not in k and "/resume/" not in k}
    assert untyped == set(), untyped
    skipped = [s for m, s in present if m is TrainReport and ctx.read(TrainReport, s).skipped]
    assert len(skipped) == 1  # the fine-tuned model of the backbone outside the shortlist, with its reason
    selection = ctx.read(Selection)
    assert selection.selected in selection.strategies and selection.backbones is not None


def _other_schema(data: bytes, version: object) -> bytes:
    payload = json.loads(data)
    if version is None:
        payload.pop("schema_version")
    else:
        payload["schema_version"] = version
    return json.dumps(payload).encode()


@pytest.mark.slow
@pytest.mark.parametrize(("model", "strategy", "version"), [
    (SplitReport, None, 2), (Plan, None, 0), (Selection, None, None), (TrainReport, "frozen", 2),
    (ModelConfig, "frozen", 2),
])
def test_step_contract_another_schema_version_is_refused_naming_file_and_versions(
        seeded_run: RunContext, model: type[Artifact], strategy: str | None, version: object) -> None:
    other = RunContext.open(seeded_run.spec, f"schema-{model.__name__}")
    rel = artifact_rel(model, strategy)
    other.store.put_bytes(other.key(rel), _other_schema(seeded_run.store.get_bytes(seeded_run.key(rel)), version))
    expected = "1 or None" if model is ModelConfig else "1"
    with pytest.raises(ArtifactError, match=rf"runs/contract/schema-{model.__name__}/{rel} is a {model.__name__} of "
                                            rf"schema version {version!r}; this tl_core reads version {expected}"):
        other.read(model, strategy)


@pytest.mark.slow
def test_step_contract_a_step_refuses_an_input_of_another_schema(seeded_run: RunContext) -> None:
    """The refusal reaches the step reading it: selection stops on a plan of another schema, naming the file."""
    from tl_core.train.select import run_select

    other = RunContext.open(seeded_run.spec, "schema-step")
    plan = seeded_run.read(Plan)
    other.store.put_bytes(other.key("plan.json"), _other_schema(dump_artifact(plan), 3))
    with pytest.raises(ArtifactError, match=r"schema-step/plan\.json is a Plan of schema version 3; this tl_core "
                                            r"reads version 1: re-run the step that writes it"):
        run_select(other)


def test_step_contract_a_model_config_from_before_schema_versions_is_read(tmp_path: Path) -> None:
    """Registered versions are write-once: a model_config.json written before it had a schema version still loads
    (ModelConfig.READS), one of a newer version does not."""
    legacy = {"format": "tl-classifier/1", "model": "m", "strategy": "frozen", "labels": ["a", "b"],
              "kind": "timm", "num_features": 4, "backbone": {}, "preprocessing": {}, "input_column": "image",
              "seed": 0, "train": {}, "spec_fingerprint": "f"}
    config = parse_artifact(ModelConfig, json.dumps(legacy), "v0001/models/frozen/model_config.json")
    assert config.storage == "merged" and config.schema_version == 1
    with pytest.raises(ArtifactError, match=r"v0009/models/frozen/model_config\.json is a ModelConfig of schema "
                                            r"version 2; this tl_core reads version 1 or None"):
        parse_artifact(ModelConfig, json.dumps({**legacy, "schema_version": 2}),
                       "v0009/models/frozen/model_config.json")


@pytest.mark.parametrize("room", ["monitor", "export", "evaluate", "registry", "data"])
def test_step_contract_serving_and_monitoring_never_import_the_training_recipe(room: str) -> None:
    """Shared code (the embedding cache, the device choice) lives in tl_core.models; these rooms import nothing
    from tl_core.train, at module level or inside a function."""
    found = []
    for path in sorted((TL_CORE / room).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            found += [f"{path.relative_to(TL_CORE)}:{node.lineno} {n}" for n in names
                      if n == "tl_core.train" or n.startswith("tl_core.train.")]
    assert found == []
