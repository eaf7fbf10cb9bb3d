"""The plugin's FastAPI app (plugins/tl_plugin.py) on both store backends, through its HTTP interface.

Airflow's own login check is replaced by an allow-all dependency here; the real one (401 without a token,
200 with the admin's JWT) is exercised against the real api-server in tests/deploy/test_celery_topology.py.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from eval_fixtures import snapshot_manifest
from registry_fixtures import evaluation_report, gate_decision
from tl_core.artifacts import EvaluationReport
from tl_core.config import load_spec
from tl_core.registry import Registry
from tl_core.runs import RunContext

ROOT = Path(__file__).resolve().parents[2]
RUN = "manual__2026-11-01T00:00:00+00:00"


@pytest.fixture()
def plugin(tmp_path: Path, store_uri: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Path]]:
    configs = tmp_path / "configs"
    configs.mkdir()
    spec_path = configs / "m1.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "m1", "labels": ["a", "b"], "store": store_uri,
                                               "backbone": {"library": "transformers", "name": "bert"}}))
    monkeypatch.setenv("TL_CONFIGS_DIR", str(configs))
    sys.path.insert(0, str(ROOT / "plugins"))
    try:
        import tl_plugin
    finally:
        sys.path.pop(0)

    def allow(dag_id: str) -> str:
        return dag_id

    tl_plugin.app.dependency_overrides[tl_plugin.readable_dag] = allow
    try:
        yield tl_plugin, spec_path
    finally:
        tl_plugin.app.dependency_overrides.clear()


def test_plugin_registration() -> None:
    sys.path.insert(0, str(ROOT / "plugins"))
    try:
        import tl_plugin
    finally:
        sys.path.pop(0)
    apps = tl_plugin.TLRetrainPlugin.fastapi_apps
    assert apps == [{"app": tl_plugin.app, "url_prefix": "/tl", "name": "tl-retrain evidence"}]
    views = {v["url_route"]: v for v in tl_plugin.TLRetrainPlugin.external_views}
    assert views["tl-evidence-report"]["href"] == "tl/report/{DAG_ID}/{RUN_ID}"
    assert views["tl-evidence-report"]["destination"] == "dag_run"
    assert views["tl-model-registry"]["destination"] == "dag"


def test_report_is_served_from_the_configured_store(plugin: tuple[Any, Path]) -> None:
    tl_plugin, spec_path = plugin
    ctx = RunContext.open(load_spec(spec_path), RUN)
    html = "<!doctype html><title>evidence</title><h1>Decision: PASS</h1>"
    ctx.store.put_bytes(ctx.key("evaluation/report.html"), html.encode())
    client = TestClient(tl_plugin.app)
    for dag_id in ("retrain_m1", "promote_m1", "rollback_m1"):
        resp = client.get(f"/report/{dag_id}/{RUN}")
        assert resp.status_code == 200 and resp.text == html
        assert "default-src 'none'" in resp.headers["content-security-policy"]
    # once the gate ran, its own page (the evidence with the decision) is the one served
    gated = "<!doctype html><title>evidence</title><h1>Gate: PASS</h1>"
    ctx.store.put_bytes(ctx.key("gate/report.html"), gated.encode())
    assert client.get(f"/report/retrain_m1/{RUN}").text == gated


def test_report_errors_name_what_is_missing(plugin: tuple[Any, Path]) -> None:
    tl_plugin, spec_path = plugin
    client = TestClient(tl_plugin.app)
    resp = client.get(f"/report/retrain_m1/{RUN}")
    assert resp.status_code == 404
    assert "has no evaluation/report.html yet" in resp.json()["detail"] and "m1" in resp.json()["detail"]
    resp = client.get(f"/report/retrain_nope/{RUN}")
    assert resp.status_code == 404 and "no model spec named 'nope'" in resp.json()["detail"]
    resp = client.get(f"/report/some_other_dag/{RUN}")
    assert resp.status_code == 404 and "not a tl-retrain DAG" in resp.json()["detail"]
    resp = client.get("/registry/retrain_")
    assert resp.status_code == 404 and "not a tl-retrain DAG" in resp.json()["detail"]


def test_report_cannot_escape_the_run_folder(plugin: tuple[Any, Path]) -> None:
    tl_plugin, spec_path = plugin
    spec = load_spec(spec_path)
    ctx = RunContext.open(spec, RUN)
    # a readable object outside the run folder, at the key a traversal would reach
    ctx.store.put_bytes("runs/m1/evaluation/report.html", b"secret")
    ctx.store.put_bytes("evaluation/report.html", b"secret")
    client = TestClient(tl_plugin.app)
    for run in ("..%2F..%2F", "..%2F", "x%2F..%2F..%2F..", "%2E%2E"):
        resp = client.get(f"/report/retrain_m1/{run}")
        assert resp.status_code in (400, 404), (run, resp.status_code)
        assert "secret" not in resp.text


def test_registry_history_page(plugin: tuple[Any, Path]) -> None:
    tl_plugin, spec_path = plugin
    registry = Registry.for_spec(load_spec(spec_path))
    registry.record_rejection("other-run", ["gate FAIL"], "gate")
    registry.record_rejection(RUN, ["not promoted: approval answered ['Reject'] <b>"], "approval")
    client = TestClient(tl_plugin.app)
    resp = client.get("/registry/retrain_m1", params={"run_id": RUN})
    assert resp.status_code == 200
    text = resp.text
    assert "Model registry: m1" in text and "no champion yet" in text
    assert text.count("<tr class=\"run\">") == 1 and "approval answered [&#x27;Reject&#x27;] &lt;b&gt;" in text
    # newest first
    assert text.index("approval answered") < text.index("gate FAIL")
    resp = client.get("/registry/retrain_m1")
    assert resp.status_code == 200 and "<tr class=\"run\">" not in resp.text


def test_bad_run_ids_are_400_and_404s_show_no_store_paths(plugin: tuple[Any, Path], store_uri: str,
                                                          tmp_path: Path) -> None:
    tl_plugin, spec_path = plugin
    client = TestClient(tl_plugin.app)
    long_id = "r" * 5000
    for resp in (client.get(f"/report/retrain_m1/{long_id}"),
                 client.get("/registry/retrain_m1", params={"run_id": long_id})):
        detail = resp.json()["detail"]
        assert resp.status_code == 400, resp.text
        assert re.fullmatch(r"invalid run[ _]id: run id is 5000 bytes long \(UTF-8\), at most 200 are allowed: "
                            r"'r{40}'\.\.\.", detail), detail  # names the problem, does not echo 5,000 characters
    store_path = store_uri.split("://", 1)[1]
    for path in (f"/report/retrain_m1/{RUN}", f"/report/retrain_nope/{RUN}"):
        resp = client.get(path)
        detail = resp.json()["detail"]
        assert resp.status_code == 404 and store_path not in detail and str(tmp_path) not in detail, detail
    assert client.get(f"/report/retrain_m1/{RUN}").json()["detail"] == (
        f"run {RUN!r} of m1 has no evaluation/report.html yet (the evaluate task writes it)")


def test_registry_page_shows_a_hand_edited_pointer_refused_and_writes_nothing(plugin: tuple[Any, Path]) -> None:
    tl_plugin, spec_path = plugin
    registry = Registry.for_spec(load_spec(spec_path))
    pointer = {"action": "promote", "version": "v0001", "previous": None, "generation": 1, "actor": "mallory",
               "record_id": uuid.uuid4().hex, "at": "2026-11-01T00:00:00+00:00"}
    registry.store.put_bytes("registry/m1/champion.json", json.dumps(pointer).encode())
    registry.record_rejection("r1", ["gate FAIL"], "gate")
    resp = TestClient(tl_plugin.app).get("/registry/retrain_m1")
    assert resp.status_code == 200
    assert ("champion refused: m1: registry/m1/champion.json (champion v0001, record "
            f"{pointer['record_id']}) is not in the ledger") in resp.text
    assert "gate FAIL" in resp.text and "mallory" not in resp.text.split("</p>", 1)[1]
    assert [r["action"] for r in registry.ledger()] == ["reject"]  # no promotion "repaired" in by the page


def _register_with_card(spec_path: Path, tmp_path: Path) -> tuple[Registry, str]:
    """A registered version of m1 whose card quotes raw HTML from the audit (it must be shown, not run)."""
    from registry_fixtures import fake_run

    registry = Registry.for_spec(load_spec(spec_path))
    run = fake_run((tmp_path / "runs").as_uri(), "run-1")
    report = run.read(EvaluationReport).model_dump(mode="json")
    run.write_json("evaluation/report.json", {
        **report, "run_id": "run-1", "primary_metric": "macro_f1",
        "audit": {"findings": [{"check": "label_shift", "severity": "warning",
                                "message": "label <img src=x onerror=alert(1)> share 8% -> 30%"}]}})
    return registry, registry.register(run)


def test_registry_versions_link_to_their_model_card(plugin: tuple[Any, Path], tmp_path: Path) -> None:
    tl_plugin, spec_path = plugin
    registry, version = _register_with_card(spec_path, tmp_path)
    client = TestClient(tl_plugin.app)
    page = client.get("/registry/retrain_m1").text
    assert f"<a class='card' href='../card/retrain_m1/{version}'>{version}</a>" in page
    resp = client.get(f"/card/retrain_m1/{version}")
    assert resp.status_code == 200
    assert "img-src data:" in resp.headers["content-security-policy"]
    text = resp.text
    assert "<h2>Source checkpoint</h2>" in text and "<h2>Evaluation</h2>" in text
    assert "<th>license</th>" in text  # the front matter as a table
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "<img" not in text


def test_model_card_errors_name_the_version(plugin: tuple[Any, Path], tmp_path: Path) -> None:
    tl_plugin, spec_path = plugin
    registry, version = _register_with_card(spec_path, tmp_path)
    client = TestClient(tl_plugin.app)
    resp = client.get("/card/retrain_m1/v9999")
    assert resp.status_code == 404
    assert resp.json()["detail"] == "m1: version v9999 does not exist or is incomplete (no manifest.json)"
    resp = client.get("/card/retrain_m1/latest")
    assert resp.status_code == 400 and "expected 'v' followed by 4-9 digits" in resp.json()["detail"]
    key = f"registry/m1/versions/{version}/MODEL_CARD.md"
    registry.store.put_bytes(key, registry.store.get_bytes(key) + b"\nedited by hand\n")
    resp = client.get(f"/card/retrain_m1/{version}")
    assert resp.status_code == 404
    assert resp.json()["detail"] == f"m1 {version}: MODEL_CARD.md does not match its manifest checksum"


def _gated_run(spec: Any, run_id: str, day: str, passed: bool, candidate: str, cand: float,
               champion: float | None) -> None:
    """What a gated run leaves behind, as far as the trends read it (typed artifacts, as the steps write them)."""
    ctx = RunContext.open(spec, run_id)
    report = evaluation_report(run_id, 0.0)
    entry = report.models["frozen"]
    models = {candidate: entry.model_copy(update={"overall": {"macro_f1": cand}})}
    if champion is not None:
        models["champion"] = entry.model_copy(update={"role": "champion", "overall": {"macro_f1": champion}})
    ctx.write(report.model_copy(update={"run_id": run_id, "candidate": candidate, "models": models}))
    ctx.write(snapshot_manifest(ctx, f"hash-{run_id}", day))
    ctx.write(gate_decision(run_id, passed).model_copy(update={
        "candidate": candidate, "champion_version": "v0001" if champion is not None else None}))


def test_registry_page_shows_trends_rendered_in_a_browser(plugin: tuple[Any, Path], tmp_path: Path) -> None:
    """Per model: the champion's metric on every run's test data and each candidate's gate outcome over time
    (plot + table, newest first); the plot is a real PNG that a headless Chromium renders."""
    import base64
    import io

    from PIL import Image

    from browser import Chromium

    tl_plugin, spec_path = plugin
    spec = load_spec(spec_path)
    client = TestClient(tl_plugin.app)
    assert "no gated runs yet" in client.get("/registry/retrain_m1").text
    _gated_run(spec, "scheduled__2026-11-01", "2026-11-01", True, "lora", 0.81, None)
    _gated_run(spec, "scheduled__2026-11-03", "2026-11-03", False, "frozen", 0.70, 0.80)
    _gated_run(spec, "scheduled__2026-11-02", "2026-11-02", True, "full", 0.84, 0.79)
    RunContext.open(spec, "broken").store.put_bytes(RunContext.open(spec, "broken").key("gate/decision.json"), b"{x")
    resp = client.get("/registry/retrain_m1")
    assert resp.status_code == 200
    table = resp.text.split("<table id='trends'>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr class='(pass|fail)'><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>"
                      r"<td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", table)
    assert rows == [  # newest first
        ("fail", "2026-11-03", "scheduled__2026-11-03", "frozen", "0.7000", "FAIL", "v0001", "0.8000"),
        ("pass", "2026-11-02", "scheduled__2026-11-02", "full", "0.8400", "PASS", "v0001", "0.7900"),
        ("pass", "2026-11-01", "scheduled__2026-11-01", "lora", "0.8100", "PASS", "none", ""),
    ]
    assert "1 run(s) with an unreadable gate decision not shown" in resp.text
    png = base64.b64decode(re.search(r"src='data:image/png;base64,([^']+)'", resp.text).group(1))  # type: ignore[union-attr]
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size == (900, 320)
    page = tmp_path / "registry.html"
    page.write_text(resp.text)
    with Chromium() as browser:
        text = browser.open(page.as_uri(), ("Trends", "scheduled__2026-11-03"))
        assert "champion v0001" not in text  # no champion pointer in this registry: the page says so
        width = browser.send("Runtime.evaluate", returnByValue=True,
                             expression="document.getElementById('trends-plot').naturalWidth")["result"]["value"]
        assert width == 900  # the browser decoded the inline PNG
        browser.screenshot(ROOT / "test-artifacts" / "registry-trends.png")
