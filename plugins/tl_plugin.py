"""Airflow plugin: the evidence report and the registry history where the approver is.

A FastAPI app mounted on the Airflow API server at ``/tl`` and two external views that put it in the UI:

  /tl/report/{dag_id}/{run_id}    the run's evidence report: ``gate/report.html`` (with the gate's decision), or
                                  before the gate ran ``evaluation/report.html`` (tab "Evidence report" on a run)
  /tl/registry/{dag_id}           champion, trends (the champion's metric on every run's test data and every
                                  candidate's gate outcome over time: plot + table) and registry ledger of the
                                  model (tab "Model registry" on a DAG), ``?run_id=`` highlights one run's records;
                                  registered versions link to their model card
  /tl/card/{dag_id}/{version}     the version's MODEL_CARD.md (Hugging Face model-card layout) as a page

Files come ONLY from the store configured in the model's spec (``$TL_CONFIGS_DIR/*.yaml``): the DAG id names
the model (``retrain_<model>``, ``promote_<model>``, ``rollback_<model>``), the run id is made key-safe by
``RunContext``, so no request can name a path or another store. Requests need an Airflow login (JWT cookie
of the UI or ``Authorization: Bearer``) that may read the DAG. No business logic here; tl_core is imported
lazily inside the handlers (the plugin loads in every Airflow process).
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

logger = logging.getLogger(__name__)
# The gate's page (the evidence with its decision) once the gate ran, before that evaluate's own page.
REPORT_RELS = ("gate/report.html", "evaluation/report.html")
# Every page shows data (labels, slice values, run ids) that nobody here wrote: no script runs, nothing loads from
# elsewhere, inline PNGs and styles only, framed only by the Airflow UI itself.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                "frame-ancestors 'self'", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def configs_dir() -> Path:
    from tl_core.config import configs_dir as tl_configs_dir

    return tl_configs_dir()


def model_of(dag_id: str) -> str:
    from tl_core.config import model_of_dag

    model = model_of_dag(dag_id)
    if model is None:
        raise HTTPException(404, f"DAG {dag_id!r} is not a tl-retrain DAG "
                                 "(expected retrain_/promote_/rollback_<model>)")
    return model


def spec_for(dag_id: str) -> Any:
    """The validated spec whose name the DAG id carries, judged on its own (another model's broken spec changes
    nothing here); 503 when the model's own spec does not validate, 404 when no spec gives the model."""
    from tl_core.config import load_spec_folder

    model = model_of(dag_id)
    folder = load_spec_folder(configs_dir())
    if model in folder.specs:
        return folder.specs[model][1]
    if model in folder.claimed:  # the reasons may name paths: they are in the DAG import errors, not here
        logger.warning("tl-retrain plugin: the spec of %s does not validate: %s", model,
                       folder.errors.get(folder.claimed[model]))
        raise HTTPException(503, f"the model spec of {model!r} does not validate, so its pages are off until it is "
                                 "fixed; Airflow's DAG import errors (tl_spec_errors.py) name the field")
    raise HTTPException(404, f"no model spec named {model!r} among the configured model specs (from DAG {dag_id!r})")


async def current_user(request: Request) -> Any:
    """The Airflow user of the request (401/403 from Airflow's own token check)."""
    from airflow.api_fastapi.core_api.security import bearer_scheme, get_user, oauth2_scheme

    return await get_user(request, await oauth2_scheme(request), await bearer_scheme(request))


async def readable_dag(dag_id: str, request: Request) -> str:
    """The DAG id of the path, once Airflow's auth manager says the request's user may read that DAG."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    user = await current_user(request)
    if not get_auth_manager().is_authorized_dag(method="GET", details=DagDetails(id=dag_id), user=user):
        raise HTTPException(403, f"user {user.get_name()!r} may not read DAG {dag_id!r}")
    return dag_id


app = FastAPI(title="tl-retrain evidence", description="Evidence reports and registry history for approvers")


@app.get("/report/{dag_id}/{run_id}", response_class=HTMLResponse)
def report(run_id: str, dag_id: str = Depends(readable_dag)) -> HTMLResponse:
    from tl_core.errors import NoSuchKey, StoreError
    from tl_core.runs import RunContext

    spec = spec_for(dag_id)
    try:
        ctx = RunContext.open(spec, run_id)
    except ValueError as exc:
        raise HTTPException(400, f"invalid run id: {exc}") from None
    body = None
    for rel in REPORT_RELS:
        try:
            body = ctx.store.get_bytes(ctx.key(rel))
            break
        except NoSuchKey:
            continue
        except StoreError as exc:
            raise store_failure(spec.name, exc) from None
    if body is None:  # the text names the run and the file, never where the store keeps it
        raise HTTPException(404, f"run {shown(run_id)} of {spec.name} has no {REPORT_RELS[-1]} yet (the evaluate "
                                 "task writes it)")
    return HTMLResponse(body.decode("utf-8"), headers=PAGE_HEADERS)


def store_failure(model: str, exc: Exception) -> HTTPException:
    """502 for a store that could not be read: the kind of failure in the response, the details (paths) in the log."""
    logger.warning("tl-retrain plugin: reading the store of %s failed: %s", model, exc)
    return HTTPException(502, f"the store of {model} could not be read ({type(exc).__name__}); see the API server log")


def shown(run_id: str) -> str:
    """A run id as it appears in a response: quoted, and cut short when it is long."""
    return repr(run_id if len(run_id) <= 80 else run_id[:80] + "...")


def render_trends(model: str, trends: dict[str, Any]) -> str:
    """The trends section: the plot (inline PNG) and one row per gated run, newest first."""
    import base64

    from tl_core.registry.trends import render_trends_png

    esc = html.escape
    metric = esc(str(trends["metric"]))
    png = render_trends_png(trends, f"{model}: {trends['metric']} per run (champion re-scored on each run's test data)")
    if png is None:
        return "<h2>Trends</h2><p id='trends'>no gated runs yet</p>"

    def num(v: Any) -> str:
        return "" if v is None else f"{v:.4f}"

    rows = "".join(
        f"<tr class='{'pass' if r['passed'] else 'fail'}'><td>{esc(r['logical_date'])}</td><td>{esc(r['run_id'])}</td>"
        f"<td>{esc(str(r['candidate'] or ''))}</td><td>{num(r['candidate_value'])}</td>"
        f"<td>{'PASS' if r['passed'] else 'FAIL'}</td><td>{esc(str(r['champion_version'] or 'none'))}</td>"
        f"<td>{num(r['champion_value'])}</td></tr>" for r in reversed(trends["runs"]))
    skipped = f"<p>{trends['skipped']} run(s) with an unreadable gate decision not shown</p>" if trends["skipped"] \
        else ""
    return (f"<h2>Trends</h2><img id='trends-plot' alt='{metric} per run' src='data:image/png;base64,"
            f"{base64.b64encode(png).decode()}'>{skipped}<table id='trends'><thead><tr><th>logical date</th><th>run"
            f"</th><th>candidate</th><th>candidate {metric}</th><th>gate</th><th>champion</th><th>champion {metric}"
            f"</th></tr></thead><tbody>{rows}</tbody></table>")


def render_history(model: str, champion: Any, records: list[dict[str, Any]], run_id: str | None,
                   champion_error: str | None = None, trends_html: str = "", dag_id: str | None = None) -> str:
    """The registry page: champion and every ledger record, newest first (records of ``run_id`` marked)."""
    esc = html.escape
    dag_id = dag_id or f"retrain_{model}"
    rows = []
    for r in reversed(records):
        mark = ' class="run"' if run_id and r.get("run_id") == run_id else ""
        cells = [esc(str(c if c is not None else "")) for c in (
            r.get("seq"), r.get("at"), r.get("action"), r.get("version"), r.get("previous"), r.get("run_id"),
            r.get("actor"), r.get("reason"))]
        if r.get("action") == "register" and r.get("version"):  # the version's model card
            cells[3] = f"<a class='card' href='../card/{esc(dag_id)}/{cells[3]}'>{cells[3]}</a>"
        rows.append(f"<tr{mark}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("seq", "at", "action", "version", "previous", "run", "actor", "reason"))
    champ = (f"champion <b>{esc(champion.version)}</b> (since {esc(str(champion.record.get('at', '?')))}, "
             f"by {esc(str(champion.record.get('actor', '?')))})" if champion else "no champion yet")
    if champion_error:
        champ = f"champion refused: {esc(champion_error)}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(model)} registry</title><style>"
            "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:.25em .5em;text-align:left;vertical-align:top}tr.run{background:#fff3c4}tr.fail td:nth-child(5)"
            "{color:#c0392b}</style></head><body>"
            f"<h1>Model registry: {esc(model)}</h1><p id='champion'>{champ}</p>{trends_html}<h2>Ledger</h2>"
            f"<table id='ledger'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>")


@app.get("/registry/{dag_id}", response_class=HTMLResponse)
def registry(run_id: str | None = None, dag_id: str = Depends(readable_dag)) -> HTMLResponse:
    from tl_core.errors import StoreError
    from tl_core.registry import Registry, RegistryError
    from tl_core.runs import check_run_id
    from tl_core.store import key_safe

    spec = spec_for(dag_id)
    reg = Registry.for_spec(spec)
    try:
        safe_run = key_safe(check_run_id(run_id)) if run_id else None
    except ValueError as exc:
        raise HTTPException(400, f"invalid run_id: {exc}") from None
    try:
        records = reg.ledger()
    except RegistryError as exc:
        raise HTTPException(500, f"the registry ledger of {spec.name} cannot be read: {exc}") from None
    except StoreError as exc:
        raise store_failure(spec.name, exc) from None
    champion, problem = None, None
    try:  # read-only: the page never writes to the registry (a hand-edited pointer is shown refused, not logged)
        champion = reg.champion(repair=False)
    except RegistryError as exc:
        problem = str(exc)
    except StoreError as exc:
        raise store_failure(spec.name, exc) from None
    marked = [r for r in records if safe_run and r.get("run_id") in (run_id, safe_run)]
    try:
        from tl_core.registry.trends import collect_trends

        trends_html = render_trends(spec.name, collect_trends(spec))
    except StoreError as exc:
        raise store_failure(spec.name, exc) from None
    return HTMLResponse(render_history(spec.name, champion, records, marked[0]["run_id"] if marked else None,
                                       problem, trends_html, dag_id), headers=PAGE_HEADERS)


@app.get("/card/{dag_id}/{version}", response_class=HTMLResponse)
def model_card(version: str, dag_id: str = Depends(readable_dag)) -> HTMLResponse:
    from tl_core.errors import StoreError
    from tl_core.registry import Registry, RegistryError
    from tl_core.registry.card import card_html
    from tl_core.registry.names import check_version

    spec = spec_for(dag_id)
    try:
        check_version(version)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    try:
        card = Registry.for_spec(spec).model_card(version)
    except RegistryError as exc:
        raise HTTPException(404, str(exc)) from None
    except StoreError as exc:
        raise store_failure(spec.name, exc) from None
    return HTMLResponse(card_html(spec.name, version, card), headers=PAGE_HEADERS)


class TLRetrainPlugin(AirflowPlugin):
    name = "tl_retrain"
    fastapi_apps = [{"app": app, "url_prefix": "/tl", "name": "tl-retrain evidence"}]
    external_views = [
        {"name": "Evidence report", "href": "tl/report/{DAG_ID}/{RUN_ID}", "destination": "dag_run",
         "url_route": "tl-evidence-report", "category": "tl-retrain"},
        {"name": "Model registry", "href": "tl/registry/{DAG_ID}", "destination": "dag",
         "url_route": "tl-model-registry", "category": "tl-retrain"},
    ]
