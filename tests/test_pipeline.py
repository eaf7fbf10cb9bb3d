"""The steps around approval: why a run did not promote (from task states), and manual-promotion checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from model_fixtures import tiny_bert_dir
from tl_core.artifacts import ApprovalAnswer
from tl_core.pipeline import no_promotion_reasons, step_check_promotable
from tl_core.registry import RegistryError

ROOT = Path(__file__).resolve().parents[1]

APPROVE = {"chosen": "Approve", "approver": "ana", "comment": "looks right"}


@pytest.fixture()
def operators(monkeypatch: pytest.MonkeyPatch) -> Any:
    """plugins/tl_operators (Airflow puts plugins/ on sys.path; so does this fixture, for this test only)."""
    monkeypatch.syspath_prepend(str(ROOT / "plugins"))
    import tl_operators

    return tl_operators


def _reasons(operators: Any, states: dict[str, str], answer: dict | None,
             shadow: bool = False) -> tuple[str, list[str], bool] | None:
    """no_promotion_reasons on a retrain run's task states, mapped by plugins/tl_operators.run_outcome."""
    return no_promotion_reasons(operators.run_outcome(states), None if answer is None else ApprovalAnswer(**answer),
                                shadow)


def test_promoted_gate_fail_and_shadow_runs_record_nothing_here(operators: Any) -> None:
    assert _reasons(operators, {"promote": "success"}, APPROVE) is None
    assert _reasons(operators, {"reject_candidate": "success"}, None) is None
    assert _reasons(operators, {"shadow_recorded": "success", "approval": "skipped"}, None, shadow=True) is None


@pytest.mark.parametrize(("states", "answer", "actor", "reason", "rejected"), [
    ({"approval": "success", "promote": "skipped"}, {**APPROVE, "chosen": "Reject", "comment": "too risky"}, "ana",
     "not promoted: rejected by ana; comment: too risky", True),
    ({"approval": "failed"}, {"timed_out": True, "error": "no response"}, "approval",
     "not promoted: no approval answer within the response timeout (no response)", False),
    ({"approval": "success", "check_evidence": "failed", "promote": "upstream_failed"}, APPROVE, "ana",
     "not promoted although approved by ana: the evidence changed since the gate decided (the evidence re-check "
     "failed; see its log); comment: looks right", False),
    ({"approval": "success", "check_evidence": "success", "promote": "failed"}, APPROVE, "ana",
     "not promoted although approved by ana: the promotion ended 'failed' (evidence re-check 'success'); see their "
     "logs; comment: looks right", False),
    ({"approval": "failed", "promote": "upstream_failed"}, None, "approval",
     "not promoted: the approval step failed without an answer (e.g. the scheduler failed it, or its retry was not "
     "answered); see its log", False),
    ({"check_promotable": "failed", "approval": "upstream_failed", "promote": "upstream_failed"}, None, "approval",
     "not promoted: the run stopped before an approval answer (approval 'upstream_failed'; failed steps: "
     "check_promotable)", False),
])
def test_no_promotion_reason_says_what_happened(operators: Any, states: dict[str, str], answer: dict | None,
                                                 actor: str, reason: str, rejected: bool) -> None:
    got = _reasons(operators, states, answer)
    assert got is not None
    assert got[0] == actor and "; ".join(got[1]) == reason and got[2] is rejected


def test_airflow_answers_become_approval_answers(operators: Any) -> None:
    """plugins/: Airflow's HITL event is read in one place; tl_core sees only an ApprovalAnswer."""
    approval_answer = operators.approval_answer
    event = {"chosen_options": ["Reject"], "params_input": {"comment": "no"},
             "responded_by_user": {"id": "7", "name": "ana"}}
    assert approval_answer(event) == ApprovalAnswer(chosen="Reject", approver="ana", comment="no")
    timeout = approval_answer({"error": "no response", "error_type": "timeout"})
    assert timeout.timed_out and timeout.chosen is None and timeout.error == "no response"
    assert approval_answer({"chosen_options": ["Approve", "Reject"]}).chosen is None  # not one answer: none


def _registered(tmp_path: Path, gate_passed: bool | None, shadow: bool = False) -> str:
    store = tmp_path / "store"
    raw = {"name": "tiny-tickets", "modality": "text", "labels": ["a", "b"],
           "backbone": {"library": "transformers", "name": "tiny-bert", "weights": "local",
                        "path": str(tiny_bert_dir(tmp_path)), "max_length": 16},
           "data": {"root": (tmp_path / "data").as_uri()}, "store": store.as_uri()}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    # a schema-1 manifest (before class names and the gate's decision): still read, its decision from gate.passed
    manifest = {"schema_version": 1, "model": "tiny-tickets", "version": "v0001",
                "run_id": "backfill-1" if shadow else "r1", "shadow": shadow, "created_at": "2026-11-01T00:00:00Z",
                "snapshot_hash": None, "backbone": {}, "strategy": "frozen", "strategy_config": {}, "seeds": {},
                "candidate_selection": {}, "library_versions": {}, "metrics": {"macro_f1": 0.81},
                "temperature": None, "gate": {} if gate_passed is None else {"passed": gate_passed}, "files": {}}
    version_dir = store / "registry" / "tiny-tickets" / "versions" / "v0001"
    version_dir.mkdir(parents=True)
    (version_dir / "manifest.json").write_text(json.dumps(manifest))
    return str(path)


def test_manual_promotion_needs_a_passed_gate_or_an_override_with_a_reason(tmp_path: Path) -> None:
    spec = _registered(tmp_path, gate_passed=False)
    with pytest.raises(RegistryError, match=r"v0001 cannot be promoted: its gate decision is FAIL .*override_gate"):
        step_check_promotable(spec, "v0001", False, None, "ana")
    with pytest.raises(RegistryError, match=r"override_gate needs an override_reason of at least 10 characters"):
        step_check_promotable(spec, "v0001", True, "why", "ana")
    checked = step_check_promotable(spec, "v0001", True, "hotfix for the outage INC-42", "ana")
    assert checked["override"] == {"by": "ana", "reason": "hotfix for the outage INC-42",
                                   "overrides": ["its gate decision is FAIL (no reasons recorded)"]}
    assert "**override** by ana" in checked["summary_markdown"] and "macro_f1: 0.8100" in checked["summary_markdown"]
    # the reason and the actor are typed by people: text in the approval body, never a link (issue 29 #3)
    from markdown_it import MarkdownIt

    linked = step_check_promotable(spec, "v0001", True, "see [Approve now](https://evil.example/a)", "ana_b")
    rendered = MarkdownIt("gfm-like").render(linked["summary_markdown"])
    assert "<a " not in rendered and "[Approve now](https://evil.example/a)" in rendered and "ana_b" in rendered


def test_manual_promotion_refuses_shadow_versions_and_missing_gate_results(tmp_path: Path) -> None:
    spec = _registered(tmp_path, gate_passed=True, shadow=True)
    with pytest.raises(RegistryError, match=r"it is a shadow version \(registered by backfill run backfill-1\)"):
        step_check_promotable(spec, "v0001", False, None, "ana")
    other = tmp_path / "other"
    other.mkdir()
    spec = _registered(other, gate_passed=None)
    with pytest.raises(RegistryError, match=r"it has no gate decision \(its run was registered before or without"):
        step_check_promotable(spec, "v0001", False, None, "ana")
    passed = tmp_path / "passed"
    passed.mkdir()
    checked = step_check_promotable(_registered(passed, gate_passed=True), "v0001", False, None, "ana")
    assert checked["override"] is None and "gate: PASS" in checked["summary_markdown"]


@pytest.mark.parametrize("answer", [None, {}, {"chosen": "Reject"}, {"timed_out": True},
                                    {"chosen_options": ["Approve"]}])
def test_promotion_needs_the_approve_answer(tmp_path: Path, answer: dict | None) -> None:
    from tl_core.pipeline import step_promote_approved, step_promote_manual

    spec = _registered(tmp_path, gate_passed=True)
    with pytest.raises(ValueError, match=r"run r9: promote needs the approval answer Approve, got"):
        step_promote_approved(spec, "r9", "v0001", {"champion_version": None, "evidence_hash": "e"},
                              answer)
    with pytest.raises(ValueError, match=r"run r9: promote needs the approval answer Approve, got"):
        step_promote_manual(spec, "r9", "v0001", "none", "why", {"requested_by": "ana"}, answer)


@pytest.mark.slow
def test_tl_run_runs_every_step_and_registers_a_passed_candidate(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`tl run` (pipeline.run_local): the DAG's steps in order, without Airflow, on tiny data; then registration.
    A candidate the gate refuses exits 3 and is recorded in the ledger, never registered."""
    from datetime import date

    from tl_core.cli import main
    from tl_core.config import parse_spec
    from tl_core.demo.data import write_demo_data
    from tl_core.registry import Registry

    raw = {"name": "tiny-tickets", "modality": "text", "labels": ["billing", "login", "shipping", "bug", "cancel"],
           "backbone": {"library": "transformers", "name": "tiny-bert", "weights": "local",
                        "path": str(tiny_bert_dir(tmp_path)), "max_length": 32},
           "data": {"root": (tmp_path / "data").as_uri(), "dataset": "tickets", "window_days": 5,
                    "slice_columns": ["region"], "test_days": 2, "min_examples_per_class": 3},
           "train": {"strategies": ["frozen"], "frozen_c_grid": [1.0]},
           "gate": {"n_bootstrap": 200, "min_slice_size": 10, "absolute_minimums": {"macro_f1": 0.2},
                    "calibration": {"ece_max": 0.5}},
           "store": (tmp_path / "store").as_uri()}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    write_demo_data(parse_spec(raw), end_date=date(2026, 11, 1), days=6, rows_per_day=60)
    assert main(["run", "--spec", str(path), "--run", "local-1", "--date", "2026-11-01", "--register", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    order = [line.split(": ", 1)[1].split(" -> ")[0] for line in captured.err.splitlines()
             if line.startswith("tl run local-1: ")]
    assert order == ["snapshot", "audit", "split", "label-issues", "plan", "train_frozen", "select", "export",
                     "evaluate", "gate", "register"]
    assert out["steps"]["gate"]["passed"] is True and out["steps"]["register"] == "v0001"
    registry = Registry.for_spec(parse_spec(raw))
    assert registry.list_versions() == ["v0001"] and registry.champion() is None  # promotion stays gated

    raw["gate"]["absolute_minimums"] = {"macro_f1": 0.999}
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump(raw))
    assert main(["run", "--spec", str(strict), "--run", "local-2", "--date", "2026-11-01", "--register"]) == 3
    assert "run local-2: gate FAIL" in capsys.readouterr().out
    assert registry.list_versions() == ["v0001"]
    assert [r["action"] for r in registry.history()] == ["register", "reject"]
