"""Typed artifacts between steps: the evaluation report and the gate decision are checked on write and read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval_fixtures import make_synthetic_run, spec_dict
from tl_core.artifacts import (
    ArtifactError,
    EvaluationReport,
    GateDecision,
    VersionManifest,
    check_artifact,
)
from tl_core.config import parse_spec
from tl_core.evaluate.run import run_evaluate
from tl_core.export.champion import champion_for
from tl_core.gate.step import run_gate


def test_the_steps_write_artifacts_that_match_their_schemas(tmp_path: Path) -> None:
    ctx = make_synthetic_run(parse_spec(spec_dict(tmp_path.as_uri())))
    run_evaluate(ctx, champion_for(ctx))
    assert ctx.read(EvaluationReport).champion.status == "none"
    run_gate(ctx)
    decision = ctx.read(GateDecision)
    assert decision.schema_version == 1 and decision.passed == (decision.decision == "PASS")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda r: r.update(schema_version=1), r"is a EvaluationReport of schema version 1; this tl_core reads version 2"),
    (lambda r: r.pop("champion"), r"champion: Field required"),
    (lambda r: r["champion"].update(status="maybe"),
     r"champion\.status: Input should be 'ok', 'none', 'unreadable' or 'incomparable'"),
    (lambda r: r.update(extra_field=1), r"extra_field: Extra inputs are not permitted"),
    (lambda r: r["models"]["frozen"].update(role="boss"), r"models\.frozen\.role: Input should be"),
])
def test_a_report_of_another_schema_stops_the_gate_naming_the_file_and_field(tmp_path: Path, edit: object,
                                                                            message: str) -> None:
    ctx = make_synthetic_run(parse_spec(spec_dict(tmp_path.as_uri())))
    run_evaluate(ctx, champion_for(ctx))
    report = json.loads(ctx.store.get_bytes(ctx.key("evaluation/report.json")))
    edit(report)  # type: ignore[operator]
    ctx.store.put_bytes(ctx.key("evaluation/report.json"), json.dumps(report).encode())
    with pytest.raises(ArtifactError, match=r"evaluation/report\.json (is not a valid EvaluationReport .*)?" + message):
        run_gate(ctx)
    assert not ctx.store.exists(ctx.key("gate/decision.json"))  # nothing decided on a report it could not read


def test_check_artifact_names_every_bad_field() -> None:
    with pytest.raises(ArtifactError, match=r"d\.json is not a valid GateDecision .*decision: Input should be "
                                            r"'PASS' or 'FAIL'.*passed: Field required"):
        check_artifact(GateDecision, {"decision": "MAYBE"}, "d.json")


def test_a_version_manifest_is_checked_before_it_is_written(tmp_path: Path) -> None:
    from registry_fixtures import fake_run
    from tl_core.registry import Registry

    registry = Registry((tmp_path / "reg").as_uri(), "reg-test", cache_dir=tmp_path / "cache")
    version = registry.register(fake_run((tmp_path / "runs").as_uri(), "r1"))
    manifest = registry.show(version)
    assert VersionManifest.model_validate(manifest).schema_version == 2
    with pytest.raises(ArtifactError, match=r"manifest\.json is not a valid VersionManifest .*shadow: Input should "
                                            r"be a valid boolean"):
        check_artifact(VersionManifest, {**manifest, "shadow": "maybe"}, "reg-test v0001 manifest.json")
