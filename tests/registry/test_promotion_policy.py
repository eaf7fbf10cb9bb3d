"""The registry owns the promotion policy: every path (Python API, `tl registry promote`, the DAGs, which call
the same Registry.promote) is refused a version whose gate did not pass, a shadow or rejected version, and
evidence other than the registered one, unless an override with who and why is given; the ledger keeps it.
(The promote_<model> DAG path: tests/dags_plugins/test_dag_runs.py::...the_promotion_policy.)"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from registry_fixtures import MODEL, evidence_of, fake_run, make_spec
from tl_core.cli import main as tl_main
from tl_core.registry import PromotionOverride, PromotionRefused, Registry

GATE_FAIL_REASON = "macro_f1 0.41 < minimum 0.60"


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    return Registry((tmp_path / "store").as_uri(), MODEL, cache_dir=tmp_path / "cache")


def _promotes(reg: Registry) -> list[dict[str, Any]]:
    return [r for r in reg.history() if r["action"] == "promote"]


def _refused_version(reg: Registry, case: str) -> tuple[str, str | None, str]:
    """(version, evidence hash to approve, the refusal expected) for one kind of refused version."""
    uri = reg.store.uri
    if case == "gate FAIL":
        return (reg.register(fake_run(uri, "r-fail", gate=False)), None,
                rf"its gate decision is FAIL \({GATE_FAIL_REASON}\)")
    if case == "no gate decision":
        return reg.register(fake_run(uri, "r-none", gate=None)), None, r"it has no gate decision"
    if case == "shadow":
        return (reg.register(fake_run(uri, "backfill-1"), shadow=True), None,
                r"it is a shadow version \(registered by backfill run backfill-1\)")
    if case == "rejected":  # an Airflow run id: the ledger keeps it as given, the version as a key
        run_id = "scheduled__2026-11-01T00:00:00+00:00"
        version = reg.register(fake_run(uri, run_id))
        reg.record_rejection(run_id, ["not promoted: rejected by ana; comment: wrong labels"], "ana")
        return version, None, (r"its run scheduled__2026-11-01T00_00_00_00_00 was rejected by ana at .*not "
                               "promoted: rejected by ana")
    version = reg.register(fake_run(uri, "r-changed"))
    return (version, "0" * 64, r"the evidence approved \(hash 000000000000\.\.\.\) is not the evidence registered "
                               rf"with it \(hash {evidence_of('r-changed')[:12]}\.\.\.\)")


@pytest.mark.parametrize("case", ["gate FAIL", "no gate decision", "shadow", "rejected", "changed evidence"])
def test_promotion_policy_refuses_a_version_naming_why(reg: Registry, case: str) -> None:
    version, evidence, why = _refused_version(reg, case)
    assert reg.promotion_problems(version, evidence)  # what promote_<model> shows before asking for approval
    with pytest.raises(PromotionRefused, match=rf"{MODEL} {version} cannot be promoted: {why}.*To promote it "
                                               r"anyway, give an override"):
        reg.promote(version, None, {"approver": "alice"}, "alice", "looks good", evidence)
    assert reg.champion() is None and _promotes(reg) == []


@pytest.mark.parametrize("case", ["gate FAIL", "no gate decision", "shadow", "rejected", "changed evidence"])
def test_promotion_policy_override_promotes_and_the_ledger_keeps_who_and_why(reg: Registry, case: str) -> None:
    version, evidence, why = _refused_version(reg, case)
    override = PromotionOverride(actor="carol", reason="  incident INC-42: the old model is worse  ")
    record = reg.promote(version, None, {"approver": "carol"}, "carol", "override", evidence, override)
    assert record["made_now"] is True and reg.champion().version == version  # type: ignore[union-attr]
    (promoted,) = _promotes(reg)
    assert promoted["override"]["by"] == "carol"
    assert promoted["override"]["reason"] == "incident INC-42: the old model is worse"
    assert len(promoted["override"]["overrides"]) == 1 and re.search(why, promoted["override"]["overrides"][0])


def test_promotion_policy_override_needs_a_reason_of_ten_characters() -> None:
    with pytest.raises(ValidationError, match="an override needs a reason of at least 10 characters, got 'hotfix'"):
        PromotionOverride(actor="carol", reason=" hotfix ")
    with pytest.raises(ValidationError, match="actor"):
        PromotionOverride(actor="", reason="a long enough reason")


def test_promotion_policy_a_passed_version_promotes_and_unanswered_is_not_rejected(reg: Registry) -> None:
    uri = reg.store.uri
    v1 = reg.register(fake_run(uri, "r1"))
    assert reg.promotion_problems(v1) == [] and reg.manifest(v1).gate.decision == "PASS"
    # without an evidence hash, the registered one is what the promotion rests on (and the ledger says so)
    assert reg.promote(v1, None, {}, "alice")["evidence_hash"] == evidence_of("r1")
    v2 = reg.register(fake_run(uri, "r2", seed=1))
    reg.record_rejection("r2", ["not promoted: no approval answer within the response timeout"], "approval",
                         rejected=False)
    assert reg.promote(v2, v1, {}, "alice", "approved later", evidence_of("r2"))["made_now"] is True
    assert "override" not in _promotes(reg)[-1]


def test_promotion_policy_a_failed_run_registers_as_not_promotable(reg: Registry) -> None:
    version = reg.register(fake_run(reg.store.uri, "r-fail", gate=False))
    manifest = reg.manifest(version)
    assert (manifest.gate.decision, manifest.gate.passed, manifest.gate.reasons) == ("FAIL", False,
                                                                                     [GATE_FAIL_REASON])
    assert manifest.classes == ["a", "b", "c"] and not manifest.promotable_by_gate
    register = next(r for r in reg.history() if r["action"] == "register")
    assert register["gate"] == "FAIL"


def test_promotion_policy_cli_refuses_then_overrides(reg: Registry, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(make_spec(reg.store.uri).model_dump(mode="json")))
    version = reg.register(fake_run(reg.store.uri, "r-fail", gate=False))
    approval = tmp_path / "approval.json"
    approval.write_text(json.dumps({"approver": "alice", "comment": "ship it"}))
    argv = ["registry", "promote", version, "--expect-champion", "none", "--approval", str(approval),
            "--actor", "alice", "--spec", str(spec_file)]
    assert tl_main(argv) == 1
    err = capsys.readouterr().err
    assert f"{version} cannot be promoted: its gate decision is FAIL ({GATE_FAIL_REASON})" in err
    assert "--override-reason TEXT" in err and "Traceback" not in err
    assert tl_main([*argv, "--override-reason", "too short"]) == 1
    assert "--override-reason must say why in at least 10 characters, got 'too short'" in capsys.readouterr().err
    assert reg.champion() is None
    assert tl_main([*argv, "--override-reason", "product owner accepts the lower F1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["override"] == {"by": "alice", "reason": "product owner accepts the lower F1",
                                  "overrides": [f"its gate decision is FAIL ({GATE_FAIL_REASON})"]}
    assert reg.champion().version == version  # type: ignore[union-attr]
