"""Whole retrain DAG runs through dag.test() on tiny data (a real Airflow, SQLite, fresh process)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from datetime import date
from pathlib import Path

import pytest
import yaml

from airflow_fixtures import ROOT, WebhookRecorder, airflow_env
from model_fixtures import tiny_bert_dir
from tl_core.artifacts import GateDecision, Plan, Selection
from tl_core.config import parse_spec
from tl_core.demo.data import write_demo_data
from tl_core.pipeline import step_check_evidence
from tl_core.registry import Registry, RegistryError
from tl_core.runs import RunContext
from tl_core.store import key_safe

RUN = r"""
import json, sys
from datetime import datetime, timezone
from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags[sys.argv[2]].test(logical_date=datetime.fromisoformat(sys.argv[3]).replace(tzinfo=timezone.utc),
                                 run_conf=json.loads(sys.argv[4]) or None)
print("RUN", run.run_id)
print("STATE", run.state)
from sqlalchemy import select
from airflow.models.taskinstance import TaskInstance as TI
from airflow.utils.session import create_session
with create_session() as s:
    for ti in s.scalars(select(TI).where(TI.run_id == run.run_id, TI.task_id.like("train_%"))):
        print("TI", json.dumps([ti.task_id, ti.map_index, ti.rendered_map_index, str(ti.state)]))
"""

# What PATCH .../taskInstances/approval/-1/hitlDetails does on the API server, done against the DB of the
# dag.test() run from a second process: record the response, then resume the parked task (handle_event_submit).
RESPOND = r"""
import sys, time
from sqlalchemy import select
from airflow.models.hitl import HITLDetail
from airflow.models.taskinstance import TaskInstance as TI
from airflow.models.trigger import handle_event_submit
from airflow.triggers.base import TriggerEvent
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState
from airflow._shared.timezones import timezone

dag_id, option = sys.argv[1:3]
while True:
    with create_session() as s:
        ti = s.scalar(select(TI).where(TI.dag_id == dag_id, TI.task_id == "approval",
                                       TI.state == TaskInstanceState.AWAITING_INPUT))
        hitl = ti and s.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti.id))
        if hitl and option == "TIMEOUT":
            # the scheduler's awaiting_input timeout sweep for a request without defaults
            event = {"error": "The Human-in-the-loop response timeout has passed without a response.",
                     "error_type": "timeout"}
            handle_event_submit(TriggerEvent(event), task_instance=ti, session=s)
            print("ANSWERED", option, flush=True)
            break
        if hitl and option == "TAMPER_THEN_APPROVE":
            # someone changes the candidate's files between the gate and the answer
            import json as js
            from pathlib import Path
            from tl_core.store import key_safe
            run = Path(sys.argv[3]) / "runs" / "tiny-tickets" / key_safe(ti.run_id)
            selected = js.loads((run / "candidate.json").read_text())["selected"]
            config = run / "models" / selected / "model_config.json"
            config.write_text(config.read_text() + " ")
            option = "Approve"
        if hitl:
            print("SUBJECT", hitl.subject)
            print("BODY", hitl.body.replace("\n", " | "))
            print("ASSIGNED", hitl.assigned_users)
            hitl.responded_by = {"id": "reviewer", "name": "reviewer"}
            hitl.responded_at = timezone.utcnow()
            hitl.chosen_options = [option]
            hitl.params_input = {"comment": f"test says {option}"}
            handle_event_submit(TriggerEvent(hitl.as_resume_event_payload()), task_instance=ti, session=s)
            print("ANSWERED", option, flush=True)
            break
    time.sleep(1)
"""


def _spec(tmp: Path, strategies: tuple[str, ...] = ("frozen", "full"), hook: str | None = None,
          **gate: object) -> tuple[Path, object]:
    uri = tmp.as_uri()
    raw = {
        "name": "tiny-tickets", "modality": "text", "labels": ["billing", "login", "shipping", "bug", "cancel"],
        "backbone": {"library": "transformers", "name": "tiny-bert", "weights": "local",
                     "path": str(tiny_bert_dir(tmp)), "max_length": 32},
        "data": {"root": uri + "/data", "dataset": "tickets", "window_days": 5, "slice_columns": ["region"],
                 "test_days": 2, "min_examples_per_class": 3},
        "train": {"strategies": list(strategies), "epochs": 1, "warmup_epochs": 0, "frozen_c_grid": [1.0]},
        "gate": {"n_bootstrap": 200, "min_slice_size": 10, "absolute_minimums": {"macro_f1": 0.2},
                 "calibration": {"ece_max": 0.5}, **gate},
        "store": uri + "/store",
    }
    if hook:
        raw["notify"] = {"webhooks": [{"url": hook}]}
    configs = tmp / "configs"
    configs.mkdir(exist_ok=True)
    path = configs / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = parse_spec(raw)
    write_demo_data(spec, end_date=date(2026, 11, 1), days=6, rows_per_day=60)
    return path, spec


def _dag_test(tmp: Path, configs: Path, dag_id: str, day: str, answer: str = "",
              conf: dict[str, object] | None = None) -> str:
    """One dag.test() run in a fresh process; ``answer`` ("Approve"/"Reject") answers the approval task."""
    home = tmp / "airflow"
    home.mkdir(exist_ok=True)
    env = airflow_env(home)
    env["TL_CONFIGS_DIR"] = str(configs)
    if not (home / "airflow.db").exists():
        subprocess.run(["timeout", "-k", "10", "240", sys.executable, "-m", "airflow", "db", "migrate"], env=env,
                       check=True, capture_output=True)
    # dag.test() waits forever on an unanswered approval: always bounded; the responder too
    responder = None
    if answer:
        responder = subprocess.Popen(["timeout", "-k", "10", "420", sys.executable, "-c", RESPOND, dag_id, answer,
                                      str(tmp / "store")],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc = subprocess.run(["timeout", "-k", "10", "420", sys.executable, "-c", RUN, str(ROOT / "dags"), dag_id,
                               day, json.dumps(conf or {})], env=env, capture_output=True, text=True)
    finally:
        if responder is not None and responder.poll() is None:
            responder.kill()
    answered = responder.communicate(timeout=30)[0] if responder is not None else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return answered + proc.stdout
    return proc.stdout


def _line(out: str, tag: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(tag + " "))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_retrain_dag_reject_then_approve_and_the_promotion_policy(tmp_path: Path) -> None:
    """Reject: registered, not promoted, rejection in the ledger. Approve (next day): promoted, approver recorded."""
    path, spec = _spec(tmp_path)
    registry = Registry.for_spec(spec)  # type: ignore[arg-type]

    out = _dag_test(tmp_path, path.parent, "retrain_tiny-tickets", "2026-10-31T00:00:00", "Reject")
    assert "ANSWERED Reject" in out and "STATE success" in out, out[-2000:]
    subject = _line(out, "SUBJECT")
    assert "Promote tiny-tickets: candidate v0001 (strategy " in subject and "over champion none" in subject
    body = _line(out, "BODY")
    assert "| metric |" in body.lower() or "|---" in body, body
    run_q = re.escape(urllib.parse.quote(_line(out, "RUN").split(" ", 1)[1], safe="/"))
    assert re.search(rf"\[Evidence report\]\(/tl/report/retrain_tiny-tickets/{run_q}\)", body), body
    assert re.search(rf"\[Registry history\]\(/tl/registry/retrain_tiny-tickets\?run_id={run_q}\)", body), body
    assert "'id': 'admin'" in _line(out, "ASSIGNED")
    assert registry.champion() is None and registry.list_versions() == ["v0001"]
    history = registry.history()
    assert [r["action"] for r in history] == ["register", "reject"]
    assert history[0]["shadow"] is False
    assert history[1]["actor"] == "reviewer" and history[1]["run_id"] == _line(out, "RUN").split(" ", 1)[1]
    assert history[1]["reason"] == "not promoted: rejected by reviewer; comment: test says Reject"
    assert history[1]["rejected"] is True

    # the just-before-promote re-check: unchanged evidence passes, a changed candidate file is refused
    rejected_run = _line(out, "RUN").split(" ", 1)[1]
    ctx = RunContext.open(spec, rejected_run)  # type: ignore[arg-type]
    evidence = ctx.read(GateDecision).evidence_hash
    assert step_check_evidence(str(path), rejected_run, evidence) == evidence
    selected = ctx.read(Selection).selected
    config_key = ctx.model_key(selected, "model_config.json")
    ctx.store.put_bytes(config_key, ctx.store.get_bytes(config_key) + b" ")
    with pytest.raises(RegistryError, match=rf"run {re.escape(rejected_run)}: the evidence changed since the gate"):
        step_check_evidence(str(path), rejected_run, evidence)

    # no answer before the response timeout: no promotion, no second approval request, recorded in the ledger
    out = _dag_test(tmp_path, path.parent, "retrain_tiny-tickets", "2026-10-30T00:00:00", "TIMEOUT")
    assert "ANSWERED TIMEOUT" in out
    timed_out_run = _line(out, "RUN").split(" ", 1)[1]
    assert registry.list_versions() == ["v0001", "v0002"] and registry.champion() is None
    timeout_record = registry.history()[-1]
    assert (timeout_record["action"], timeout_record["run_id"], timeout_record["actor"]) == (
        "reject", timed_out_run, "approval")
    assert timeout_record["reason"].startswith("not promoted: no approval answer within the response timeout")
    assert timeout_record["rejected"] is False  # unanswered is not rejected: v0002 stays promotable

    out = _dag_test(tmp_path, path.parent, "retrain_tiny-tickets", "2026-11-01T00:00:00", "Approve")
    assert "ANSWERED Approve" in out and "STATE success" in out, out[-2000:]
    assert "candidate v0003" in _line(out, "SUBJECT")
    champion = registry.champion()
    assert champion is not None and champion.version == "v0003"
    history = registry.history()
    assert [r["action"] for r in history] == ["register", "reject", "register", "reject", "register", "promote"]
    promote = history[-1]
    assert promote["actor"] == "reviewer" and promote["reason"] == "test says Approve"
    assert promote["approval"]["chosen"] == "Approve" and promote["previous"] is None
    run_dir = tmp_path / "store" / "runs" / "tiny-tickets" / key_safe(_line(out, "RUN").split(" ", 1)[1])
    decision = json.loads((run_dir / "gate" / "decision.json").read_text())
    assert decision["bootstrap"] is True and decision["passed"] is True
    assert promote["evidence_hash"] == decision["evidence_hash"]
    assert (run_dir / "export" / "model.onnx").exists()

    # the manual DAGs: roll back to v0001 (never champion, but registered), then promote v0003 again: manual
    # promotion goes through the same approval task
    out = _dag_test(tmp_path, path.parent, "rollback_tiny-tickets", "2026-11-02T00:00:00",
                    conf={"target": "v0001", "reason": "test: roll back"})
    assert "STATE success" in out
    champion = registry.champion()
    assert champion is not None and champion.version == "v0001"
    out = _dag_test(tmp_path, path.parent, "promote_tiny-tickets", "2026-11-03T00:00:00", "Approve",
                    conf={"version": "v0003", "expect_champion": "v0001", "reason": "test: promote again"})
    assert "ANSWERED Approve" in out and "STATE success" in out, out[-2000:]
    assert "Promote tiny-tickets: v0003 over champion v0001 (manual)" in _line(out, "SUBJECT")
    assert "gate: PASS" in _line(out, "BODY")
    champion = registry.champion()
    assert champion is not None and champion.version == "v0003"
    rollback, promote_again = registry.history()[-2:]
    assert (rollback["action"], rollback["version"], rollback["previous"]) == ("rollback", "v0001", "v0003")
    assert rollback["reason"] == "test: roll back" and rollback["actor"] == "dag_test"
    assert (promote_again["action"], promote_again["previous"], promote_again["actor"]) == (
        "promote", "v0001", "reviewer")
    assert promote_again["approval"]["manual"] is True and "override" not in promote_again
    # the promotion policy: v0001 was rejected by its approver, so promote_<model> refuses it before asking for an
    # approval, naming the rejection; an override without a reason of 10+ characters is refused the same way
    for day, conf in (("2026-11-04", {}), ("2026-11-05", {"override_gate": True, "override_reason": "short"})):
        out = _dag_test(tmp_path, path.parent, "promote_tiny-tickets", f"{day}T00:00:00",
                        conf={"version": "v0001", "expect_champion": "v0003", "reason": "stale view", **conf})
        assert "STATE failed" in out and "SUBJECT" not in out
        assert registry.champion().version == "v0003"  # type: ignore[union-attr]
        refused = registry.history()[-1]
        assert refused["action"] == "reject" and "failed steps: check_promotable" in refused["reason"]
        assert refused["rejected"] is False  # a refused request does not reject the version
    assert "v0001 cannot be promoted: its run" in out or "at least 10 characters" in out
    # with an override and its reason, the approved promotion goes through and the ledger keeps who and why
    out = _dag_test(tmp_path, path.parent, "promote_tiny-tickets", "2026-11-06T00:00:00", "Approve",
                    conf={"version": "v0001", "expect_champion": "v0003", "reason": "known good",
                          "override_gate": True, "override_reason": "reviewer asked for the older model back"})
    assert "ANSWERED Approve" in out and "STATE success" in out, out[-2000:]
    assert "**override** by dag\\_test" in _line(out, "BODY")  # Markdown-escaped: the actor is text
    overridden = registry.history()[-1]
    assert (overridden["action"], overridden["version"], overridden["previous"]) == ("promote", "v0001", "v0003")
    assert overridden["override"]["by"] == "dag_test"
    assert overridden["override"]["reason"] == "reviewer asked for the older model back"
    assert any("rejected by reviewer" in p for p in overridden["override"]["overrides"])
    # a promotion that expects the wrong champion fails after the approval, and changes nothing (v0002: its
    # approval timed out, which leaves it promotable)
    out = _dag_test(tmp_path, path.parent, "promote_tiny-tickets", "2026-11-07T00:00:00", "Approve",
                    conf={"version": "v0002", "expect_champion": "none", "reason": "stale view"})
    assert "STATE failed" in out
    assert registry.champion().version == "v0001"  # type: ignore[union-attr]
    last = registry.history()[-1]
    assert last["action"] == "reject" and "not promoted although approved by reviewer: the promotion ended " \
        "'failed'" in last["reason"]


@pytest.mark.slow
def test_retrain_dag_gate_fail_records_rejection(tmp_path: Path) -> None:
    hook = WebhookRecorder()
    try:
        path, spec = _spec(tmp_path, ("frozen", "full"), hook.url, absolute_minimums={"macro_f1": 0.999})
        # the run's `strategies` param narrows this run to the frozen baseline: train_tuned maps over nothing
        out = _dag_test(tmp_path, path.parent, "retrain_tiny-tickets", "2026-11-01T00:00:00",
                        conf={"strategies": ["frozen"]})
    finally:
        hook.close()
    assert "STATE success" in out and "ANSWERED" not in out
    tis = sorted(json.loads(line[3:]) for line in out.splitlines() if line.startswith("TI "))
    assert tis == [["train_frozen", 0, "frozen", "success"], ["train_tuned", -1, None, "skipped"]], tis
    run = RunContext.open(spec, _line(out, "RUN").split(" ", 1)[1])  # type: ignore[arg-type]
    assert run.read(Plan).model_ids == ["frozen"]
    assert not run.store.exists(run.key("models/full/train_report.json"))
    # the gate FAIL reached the spec's webhook, with its reasons and the link to the evidence report
    run_q = urllib.parse.quote(_line(out, "RUN").split(" ", 1)[1], safe="/")
    assert [m["event"] for m in hook.received] == ["gate_fail"]
    (fail,) = hook.received
    assert fail["title"].startswith("tiny-tickets: gate FAIL for candidate frozen against champion none (run ")
    assert any("macro_f1 overall" in line and "minimum 0.999" in line for line in fail["lines"]), fail
    assert fail["links"] == {"report": f"/tl/report/retrain_tiny-tickets/{run_q}"}
    assert fail["text"].startswith("[tl-retrain] tiny-tickets: gate FAIL") and "report: /tl/report/" in fail["text"]
    registry = Registry.for_spec(spec)  # type: ignore[arg-type]
    assert registry.champion() is None and registry.list_versions() == []
    history = registry.history()
    assert [r["action"] for r in history] == ["reject"]
    assert history[0]["actor"] == "gate"
    assert "macro_f1 overall" in history[0]["reason"] and "minimum 0.999" in history[0]["reason"]


@pytest.mark.slow
def test_retrain_dag_refuses_promotion_when_the_evidence_changed(tmp_path: Path) -> None:
    hook = WebhookRecorder()
    try:
        path, spec = _spec(tmp_path, ("frozen",), hook.url)
        out = _dag_test(tmp_path, path.parent, "retrain_tiny-tickets", "2026-11-01T00:00:00", "TAMPER_THEN_APPROVE")
    finally:
        hook.close()
    assert "ANSWERED Approve" in out
    # the approval request was announced with the links to answer it and to the evidence; the refused promotion
    # (check_evidence fails for good) went out as a failure; nothing was promoted, so no promotion message
    run_id = _line(out, "RUN").split(" ", 1)[1]
    run_q = urllib.parse.quote(run_id, safe="/")
    (pending,) = hook.events("pending_approval")
    assert pending["title"] == f"tiny-tickets: approval needed (run {run_id})"
    assert pending["lines"][0].startswith("Promote tiny-tickets: candidate v0001 (strategy frozen) over champion none")
    assert pending["links"]["report"] == f"/tl/report/retrain_tiny-tickets/{run_q}"
    assert re.search(r"/dags/retrain_tiny-tickets/runs/.+/tasks/approval/required_actions\?map_index=-1$",
                     pending["links"]["approval"]), pending["links"]
    assert f"approval: {pending['links']['approval']}" in pending["text"]
    assert [m["title"] for m in hook.events("failure")] == [
        "tiny-tickets: task check_evidence of retrain_tiny-tickets failed"]
    assert hook.events("promotion") == [] and hook.events("gate_fail") == []
    registry = Registry.for_spec(spec)  # type: ignore[arg-type]
    assert registry.champion() is None and registry.list_versions() == ["v0001"]
    history = registry.history()
    assert [r["action"] for r in history] == ["register", "reject"]
    assert history[1]["actor"] == "reviewer"
    assert history[1]["reason"].startswith("not promoted although approved by reviewer: the evidence changed since "
                                           "the gate decided (the evidence re-check failed")
