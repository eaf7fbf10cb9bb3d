"""The DAGs of one model spec (dags/tl_dags.py wires every valid spec of the configs folder): four DAGs.

  retrain_<model>   nightly (spec.schedule): snapshot -> audit -> split -> label_issues -> plan_frozen / plan_tuned
                    (params.strategies, or all of the spec's models) -> train_frozen / train_tuned (mapped:
                    one task instance per model, labelled by it; frozen baselines first when candidate
                    backbones are listed; queue "gpu", pool "gpu", train.tasks_per_run at once) -> select
                    -> export + parity -> evaluate (champion re-scored)
                    -> gate -> PASS: register -> approval -> evidence re-check -> promote
                               FAIL: the rejection and its reasons go to the ledger
                    Backfilled runs are shadow runs: registered as shadow versions, never promoted unless
                    params.allow_promotion is true.
  promote_<model>   manual: promote a registered version (params: version, expect_champion, reason)
  rollback_<model>  manual: roll the champion back (params: optional target version, required reason)
  score_<model>     on every new champion (asset tl://<model>/champion) and daily: wait for the day's unlabeled
                    partition -> score (champion + challenger in shadow) -> drift -> alerts: drift asset
                    tl://<model>/drift + notification

Data arrival: retrain_<model> (and score_<model>) first wait, deferred, for the run day's completion marker
(<root>/<dataset>/dt=YYYY-MM-DD/_SUCCESS; tl_sensors) and fail naming the partition after data.arrival_timeout_minutes.
Promotion and rollback emit the champion asset. Notifications (tl_notify.TLWebhookNotifier, channels from the
spec's notify section): every task's final failure, gate FAIL, pending approval (with links), promotion/rollback,
drift.

Built from the validated spec (tl_core.config.ModelSpec), never from raw YAML. This module only orchestrates: each
task is a lazy import of tl_core.pipeline and one call; tasks pass URIs. Building reads nothing but the spec: no
torch, no store. It lives in plugins/ (on sys.path in every Airflow process) so that two DAG files can use it:
dags/tl_dags.py (the DAGs) and dags/tl_spec_errors.py (a broken spec as a DAG import error naming its file).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Asset, Param, get_current_context, task
from tl_notify import TLWebhookNotifier  # plugins/: on sys.path in Airflow
from tl_operators import RecordedApproval, approval_retry_args, run_outcome
from tl_sensors import marker_sensor

from tl_core.config import ModelSpec, dag_id  # light: pydantic + yaml, no torch, no store

log = logging.getLogger(__name__)

# The plugin's views (plugins/tl_plugin.py), served by the Airflow API server; TL_AIRFLOW_PUBLIC_URL makes the
# links absolute (e.g. in notifications), by default they are relative to the Airflow UI.
PUBLIC_URL = os.environ.get("TL_AIRFLOW_PUBLIC_URL", "").rstrip("/")
REPORT_VIEW = PUBLIC_URL + "/tl/report/{dag_id}/{run_id}"
REGISTRY_VIEW = PUBLIC_URL + "/tl/registry/{dag_id}?run_id={run_id}"
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True,
                "max_retry_delay": timedelta(minutes=10)}
# The run's day, as the snapshot computes it: the logical date, or for runs without one the day they ran.
RUN_DAY = "{{ (dag_run.logical_date or dag_run.run_after).strftime('%Y-%m-%d') }}"


def champion_asset(model: str) -> Asset:
    """Emitted by every promotion and rollback of ``model`` (extra: version, previous, action)."""
    return Asset(name=f"tl_champion_{model}", uri=f"tl://{model}/champion", group="tl-retrain")


def drift_asset(model: str) -> Asset:
    """Emitted by score_<model> when drift goes beyond the spec's thresholds (extra: alerts, report_uri, dt)."""
    return Asset(name=f"tl_drift_{model}", uri=f"tl://{model}/drift", group="tl-retrain")


def default_args(spec_path: str) -> dict[str, Any]:
    """DEFAULT_ARGS plus the failure notification (a task that fails for good tells the spec's channels)."""
    return {**DEFAULT_ARGS, "on_failure_callback": TLWebhookNotifier(spec_path, "failure")}


def wait_for_marker(spec: ModelSpec, scoring: bool = False) -> Any:
    """The deferrable sensor for the run day's completion marker (of the labeled data, or with ``scoring`` of the
    unlabeled partition under monitor.scoring_root), or None when the spec uses no markers."""
    data = spec.data.model_copy(update={"root": spec.monitor.scoring_root}) if scoring else spec.data
    uri = data.marker_uri(RUN_DAY)
    if uri is None:
        return None
    return marker_sensor("wait_for_data", uri, spec.data.arrival_timeout_minutes * 60, spec.data.arrival_poke_seconds)


def record_champion_event(context: dict[str, Any], model: str, result: dict[str, Any]) -> None:
    """Attach the new champion to the asset event this task emits."""
    context["outlet_events"][champion_asset(model)].extra = {
        k: result.get(k) for k in ("version", "previous", "action", "actor")}


def is_shadow(run_type: str, allow_promotion: bool) -> bool:
    """Backfilled runs evaluate and record, but never promote unless the run's params allow it."""
    return "backfill" in str(run_type).lower() and not allow_promotion


def approval_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """Who may answer an approval of ``spec``'s model, for how long, and the retry settings of the approval task."""
    return {"assigned_users": [{"id": u, "name": u} for u in spec.approval.assigned_users],
            "response_timeout": timedelta(hours=spec.approval.response_timeout_hours),
            "params": {"comment": Param(None, type=["null", "string"], description="recorded in the registry ledger")},
            **approval_retry_args()}


def build_retrain(spec_path: str, spec: ModelSpec, auto_register: bool = True) -> DAG:
    name = spec.name
    models = spec.model_ids()  # '<strategy>-<candidate>' for candidate backbones
    tasks_per_run = spec.train.tasks_per_run
    with DAG(
        dag_id=dag_id("retrain", name),
        description=f"Nightly retrain of {name}: {spec.description}",
        schedule=spec.schedule,
        auto_register=auto_register,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,
        default_args=default_args(spec_path),
        tags=["tl-retrain", name],
        params={
            "allow_promotion": Param(False, type="boolean",
                                     description="Backfill runs may promote only when this is true."),
            "window_days": Param(None, type=["null", "integer"], minimum=1,
                                 description="Override the spec's data.window_days for this run."),
            "strategies": Param(None, type=["null", "array"], items={"type": "string", "enum": models},
                                minItems=1, uniqueItems=True,
                                description="Train only these models in this run (default: all of the spec's)."),
        },
    ) as dag:

        @task(execution_timeout=timedelta(minutes=30))
        def snapshot(**context: Any) -> str:
            from tl_core.pipeline import step_snapshot

            run = context["dag_run"]
            day = (run.logical_date or run.run_after).date().isoformat()
            return step_snapshot(spec_path, context["run_id"], day, context["params"].get("window_days"))

        @task(execution_timeout=timedelta(minutes=30))
        def audit(_: str, **context: Any) -> str:
            from tl_core.pipeline import step_audit

            return step_audit(spec_path, context["run_id"])

        @task(execution_timeout=timedelta(minutes=30))
        def split(_: str, **context: Any) -> str:
            from tl_core.pipeline import step_split

            return step_split(spec_path, context["run_id"])

        @task(queue="gpu", pool="gpu")  # frozen-backbone embeddings (cached for the frozen baseline)
        def label_issues(_: str, **context: Any) -> str:
            from tl_core.pipeline import step_label_issues

            return step_label_issues(spec_path, context["run_id"])

        # Two plan tasks (frozen, tuned) because Airflow maps only over a task's return value; both write the
        # same plan.json (identical bytes: a rewrite is a no-op) and return their part of it.
        @task
        def plan(_: str, kind: str, **context: Any) -> list[str]:
            from tl_core.pipeline import step_plan

            return list(step_plan(spec_path, context["run_id"], context["params"].get("strategies"))[kind])

        # One mapped task instance per model, labelled by the model (map_index_template); at most
        # train.tasks_per_run of them at once in one run, and the 'gpu' pool's slots across runs.
        @task(queue="gpu", pool="gpu", execution_timeout=timedelta(hours=6), retries=3,
              map_index_template="{{ tl_model }}", max_active_tis_per_dagrun=tasks_per_run)
        def train(model: str, **context: Any) -> str:
            from tl_core.pipeline import step_train

            get_current_context()["tl_model"] = model  # type: ignore[index]  # the map index label
            return step_train(spec_path, context["run_id"], model)

        @task(trigger_rule="none_failed_min_one_success")  # a run may plan no fine-tuned model (skipped mapping)
        def select(**context: Any) -> str:
            from tl_core.pipeline import step_select

            return step_select(spec_path, context["run_id"])

        @task(queue="gpu", pool="gpu", execution_timeout=timedelta(hours=1))
        def export(_: str, **context: Any) -> str:
            from tl_core.pipeline import step_export

            return step_export(spec_path, context["run_id"])

        @task(queue="gpu", pool="gpu", execution_timeout=timedelta(hours=2))
        def evaluate(_: str, **context: Any) -> str:
            from tl_core.pipeline import step_evaluate

            return step_evaluate(spec_path, context["run_id"])

        @task
        def gate(_: str, **context: Any) -> dict[str, Any]:
            from tl_core.pipeline import step_gate

            return step_gate(spec_path, context["run_id"])

        @task.branch
        def route(decision: dict[str, Any]) -> str:
            return "register" if decision["passed"] else "reject_candidate"

        @task(on_success_callback=TLWebhookNotifier(spec_path, "gate_fail", source_task="gate"))
        def reject_candidate(decision: dict[str, Any], **context: Any) -> int:
            from tl_core.pipeline import step_reject_gate_fail

            return step_reject_gate_fail(spec_path, context["run_id"], decision)

        @task
        def register(**context: Any) -> str:
            from tl_core.pipeline import step_register

            shadow = is_shadow(context["dag_run"].run_type, bool(context["params"].get("allow_promotion")))
            return step_register(spec_path, context["run_id"], shadow)

        @task.branch
        def route_shadow(_: str, **context: Any) -> str:
            shadow = is_shadow(context["dag_run"].run_type, bool(context["params"].get("allow_promotion")))
            return "shadow_recorded" if shadow else "approval"

        @task
        def shadow_recorded(version: str) -> str:
            return version

        run_q = "{{ run_id | urlencode }}"
        approve = RecordedApproval(
            task_id="approval",
            subject=f"Promote {name}: candidate {{{{ ti.xcom_pull(task_ids='register') }}}} (strategy "
                    f"{{{{ ti.xcom_pull(task_ids='gate')['candidate'] }}}}) over champion "
                    f"{{{{ ti.xcom_pull(task_ids='gate')['champion_version'] or 'none' }}}}",
            body="{{ ti.xcom_pull(task_ids='gate')['summary_markdown'] }}\n\n"
                 f"[Evidence report]({REPORT_VIEW.format(dag_id=dag_id('retrain', name), run_id=run_q)}) | "
                 f"[Registry history]({REGISTRY_VIEW.format(dag_id=dag_id('retrain', name), run_id=run_q)}) | "
                 "store: {{ ti.xcom_pull(task_ids='gate')['report_uri'] }}",
            notifiers=[TLWebhookNotifier(spec_path, "pending_approval")],
            **approval_kwargs(spec),
        )

        @task(retries=0)  # changed evidence stays changed: fail closed at once (clear the task to re-check)
        def check_evidence(decision: dict[str, Any], **context: Any) -> str:
            from tl_core.pipeline import step_check_evidence

            return step_check_evidence(spec_path, context["run_id"], decision["evidence_hash"])

        @task(outlets=[champion_asset(name)], on_success_callback=TLWebhookNotifier(spec_path, "promotion"))
        def promote(version: str, decision: dict[str, Any], _: str, **context: Any) -> dict[str, Any]:
            from tl_core.pipeline import step_promote_approved

            result = step_promote_approved(spec_path, context["run_id"], version, decision,
                                           context["ti"].xcom_pull(task_ids="approval", key="answer"))
            record_champion_event(context, name, result)
            return result

        @task(trigger_rule="all_done")
        def record_no_promotion(**context: Any) -> dict[str, Any]:
            """Approval rejected, timed out, failed or the evidence changed: the ledger says which, from task states."""
            from tl_core.pipeline import step_record_no_promotion

            ti, run_id = context["ti"], context["run_id"]
            states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id]).get(run_id, {})
            return step_record_no_promotion(
                spec_path, run_id, run_outcome(states).model_dump(mode="json"),
                ti.xcom_pull(task_ids="approval", key="answer"),
                is_shadow(context["dag_run"].run_type, bool(context["params"].get("allow_promotion"))))

        snap = snapshot()
        arrival = wait_for_marker(spec)
        if arrival is not None:
            arrival >> snap
        issues = label_issues(split(audit(snap)))
        frozen = train.override(task_id="train_frozen").expand(
            model=plan.override(task_id="plan_frozen")(issues, "frozen"))
        tuned = train.override(task_id="train_tuned").expand(
            model=plan.override(task_id="plan_tuned")(issues, "tuned"))
        if spec.candidates:
            frozen >> tuned  # fine-tuning runs only for the shortlist that the frozen baselines rank
        selected = select()
        [frozen, tuned] >> selected
        decision = gate(evaluate(export(selected)))
        branch = route(decision)
        version = register()
        branch >> [version, reject_candidate(decision)]
        shadow_branch = route_shadow(version)
        shadow_branch >> [approve, shadow_recorded(version)]
        evidence_ok = check_evidence(decision)
        approve >> evidence_ok
        promoted = promote(version, decision, evidence_ok)
        promoted >> record_no_promotion()
    return dag


def build_promote(spec_path: str, spec: ModelSpec, auto_register: bool = True) -> DAG:
    """Manual promotion, approval-gated like the nightly one: a version whose gate failed, or a shadow version,
    is refused unless the run sets override_gate with an override_reason (the ledger records who and why)."""
    name = spec.name
    with DAG(dag_id=dag_id("promote", name), schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
             auto_register=auto_register,
             tags=["tl-retrain", name], default_args={"on_failure_callback": TLWebhookNotifier(spec_path, "failure")},
             description=f"Manually promote a registered version of {name} (approval-gated)",
             params={"version": Param(type="string", pattern=r"^v[0-9]{4,9}$", description="version to promote"),
                     "expect_champion": Param("none", type="string", description="current champion or 'none'"),
                     "reason": Param(type="string", minLength=3, description="why"),
                     "override_gate": Param(False, type="boolean",
                                            description="promote a version whose gate failed or a shadow version"),
                     "override_reason": Param(None, type=["null", "string"],
                                              description="required with override_gate; recorded in the ledger"),
                     }) as dag:

        run_q = "{{ run_id | urlencode }}"

        @task
        def check_promotable(**context: Any) -> dict[str, Any]:
            from tl_core.pipeline import step_check_promotable

            p = context["params"]
            actor = getattr(context["dag_run"], "triggering_user_name", None) or "airflow"
            return step_check_promotable(spec_path, p["version"], bool(p.get("override_gate")),
                                         p.get("override_reason"), actor)

        approve = RecordedApproval(
            task_id="approval",
            subject=f"Promote {name}: {{{{ params.version }}}} over champion {{{{ params.expect_champion }}}} "
                    "(manual)",
            body="{{ ti.xcom_pull(task_ids='check_promotable')['summary_markdown'] }}\n\n"
                 f"[Registry history]({REGISTRY_VIEW.format(dag_id=dag_id('promote', name), run_id=run_q)})",
            notifiers=[TLWebhookNotifier(spec_path, "pending_approval")],
            **approval_kwargs(spec),
        )

        @task(outlets=[champion_asset(name)], on_success_callback=TLWebhookNotifier(spec_path, "promotion"))
        def promote(checked: dict[str, Any], **context: Any) -> dict[str, Any]:
            from tl_core.pipeline import step_promote_manual

            p = context["params"]
            answer = context["ti"].xcom_pull(task_ids="approval", key="answer")
            result = step_promote_manual(spec_path, context["run_id"], p["version"], p["expect_champion"],
                                         p["reason"], checked, answer)
            record_champion_event(context, name, result)
            return result

        @task(trigger_rule="all_done")
        def record_no_promotion(**context: Any) -> dict[str, Any]:
            from tl_core.pipeline import step_record_no_promotion

            ti, run_id = context["ti"], context["run_id"]
            states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id]).get(run_id, {})
            outcome = step_record_no_promotion(spec_path, run_id, run_outcome(states).model_dump(mode="json"),
                                               ti.xcom_pull(task_ids="approval", key="answer"), False)
            if not outcome["promoted"]:  # a manual promotion that did not happen is a failed run, not a quiet one
                from airflow.sdk.exceptions import AirflowFailException

                raise AirflowFailException("; ".join(outcome["reasons"]) or "not promoted")
            return outcome

        checked = check_promotable()
        checked >> approve
        promoted = promote(checked)
        approve >> promoted
        promoted >> record_no_promotion()
    return dag


def build_rollback(spec_path: str, spec: ModelSpec, auto_register: bool = True) -> DAG:
    name = spec.name
    with DAG(dag_id=dag_id("rollback", name), schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
             auto_register=auto_register,
             tags=["tl-retrain", name], default_args={"on_failure_callback": TLWebhookNotifier(spec_path, "failure")},
             description=f"Roll the champion of {name} back",
             params={"target": Param(None, type=["null", "string"], description="version; default: previous"),
                     "reason": Param(type="string", minLength=3, description="why (recorded in the ledger)")}) as dag:

        @task(outlets=[champion_asset(name)], on_success_callback=TLWebhookNotifier(spec_path, "promotion"))
        def rollback(**context: Any) -> dict[str, Any]:
            from tl_core.pipeline import step_rollback

            p = context["params"]
            actor = getattr(context["dag_run"], "triggering_user_name", None) or "airflow"
            result = step_rollback(spec_path, p["target"] or None, p["reason"], actor)
            record_champion_event(context, name, result)
            return result

        rollback()
    return dag


def build_score(spec_path: str, spec: ModelSpec, auto_register: bool = True) -> DAG:
    """Batch scoring and drift: on every new champion (the champion asset) and daily (the spec's schedule) for the
    day's unlabeled partition (waits for its completion marker like the retrain does)."""
    from airflow.timetables.assets import AssetOrTimeSchedule
    from airflow.timetables.trigger import CronTriggerTimetable

    name = spec.name
    cron = {"@daily": "0 0 * * *", "@hourly": "0 * * * *", "@weekly": "0 0 * * 0"}.get(
        spec.schedule or "@daily", spec.schedule or "0 0 * * *")
    with DAG(dag_id=dag_id("score", name), description=f"Score {name}'s unlabeled partitions, watch drift",
             schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(cron, timezone="UTC"),
                                          assets=champion_asset(name)),
             start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1, default_args=default_args(spec_path),
             tags=["tl-retrain", name], auto_register=auto_register,
             params={"dt": Param(None, type=["null", "string"], format="date",
                                 description="The partition to score (default: the run's day)")}) as dag:

        def day(context: dict[str, Any]) -> str:
            run = context["dag_run"]
            return str(context["params"].get("dt") or (run.logical_date or run.run_after).date().isoformat())

        @task(queue="gpu", pool="gpu", execution_timeout=timedelta(hours=6))
        def score(**context: Any) -> str:
            from tl_core.pipeline import step_score

            return step_score(spec_path, context["run_id"], day(context))

        @task(execution_timeout=timedelta(hours=2))
        def drift(_: str, **context: Any) -> dict[str, Any]:
            from tl_core.pipeline import step_drift

            return step_drift(spec_path, context["run_id"], day(context))

        @task.short_circuit
        def drifted(result: dict[str, Any]) -> bool:
            return bool(result.get("alerts"))

        @task(outlets=[drift_asset(name)],
              on_success_callback=TLWebhookNotifier(spec_path, "drift", source_task="drift"))
        def drift_alert(result: dict[str, Any], **context: Any) -> list[str]:
            context["outlet_events"][drift_asset(name)].extra = {
                "dt": day(context), "alerts": list(result["alerts"]), "report_uri": result.get("report_uri"),
                "champion_version": result.get("champion_version")}
            return list(result["alerts"])

        scored = score()
        arrival = wait_for_marker(spec, scoring=True)
        if arrival is not None:
            arrival >> scored
        result = drift(scored)
        drifted(result) >> drift_alert(result)
    return dag



BUILDERS = (build_retrain, build_promote, build_rollback, build_score)


def build_model_dags(spec_path: str, spec: ModelSpec, auto_register: bool = True) -> list[DAG]:
    """The four DAGs of one validated spec (``auto_register=False``: built only to see that they build)."""
    return [build(spec_path, spec, auto_register) for build in BUILDERS]
