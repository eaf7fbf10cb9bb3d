"""Headless Chromium (Debian `chromium`, `make system-deps`) driven over the DevTools protocol.

The end-to-end test (tests/deploy/test_celery_topology.py) uses ``Chromium`` to open the pending approval page and the
plugin's report view on the real api-server, logged in with the admin's JWT cookie; screenshots are
kept under test-artifacts/. The test here checks the driver itself on the plugin's registry page.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from browser import ARTIFACTS, ROOT, Chromium, png_size


@pytest.mark.slow
def test_chromium_renders_the_registry_page(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "plugins"))
    try:
        from tl_plugin import render_history
    finally:
        sys.path.pop(0)
    from tl_core.registry import Champion

    records = [{"seq": 1, "action": "register", "version": "v0001", "run_id": "r1", "actor": "tl", "reason": "x"},
               {"seq": 2, "action": "promote", "version": "v0001", "run_id": "r1", "actor": "ann",
                "reason": "<script>alert(1)</script>"}]
    page = tmp_path / "registry.html"
    champion = Champion.from_record({"version": "v0001", "actor": "ann", "at": "2026-11-01"}, "e")
    page.write_text(render_history("demo", champion, records, "r1"))
    with Chromium(width=900, height=500) as browser:
        text = browser.open(page.as_uri(), ("Model registry: demo", "champion v0001"))
        shot = browser.screenshot(ARTIFACTS / "registry-page.png")
        marked = browser.send("Runtime.evaluate", expression="document.querySelectorAll('tr.run').length",
                              returnByValue=True)["result"]["value"]
    assert "<script>alert(1)</script>" in text  # escaped: shown as text, not run
    assert marked == 2
    assert png_size(shot) == (900, 500)


@pytest.mark.slow
def test_chromium_renders_a_model_card(tmp_path: Path) -> None:
    """The card page of a registered version (tables, sections; no broken image, nothing fetched)."""
    from registry_fixtures import fake_run
    from tl_core.registry import Registry
    from tl_core.registry.card import card_html

    registry = Registry((tmp_path / "reg").as_uri(), "m1", cache_dir=tmp_path / "cache")
    run = fake_run((tmp_path / "runs").as_uri(), "run-1")
    version = registry.register(run)
    page = tmp_path / "card.html"
    page.write_text(card_html("m1", version, registry.model_card(version)))
    with Chromium(width=1000, height=900) as browser:
        browser.open(page.as_uri(), ("Source checkpoint", "Evaluation"))
        browser.screenshot(ARTIFACTS / "model-card.png")
        found = browser.send("Runtime.evaluate", returnByValue=True, expression=(
            "JSON.stringify({h2: [...document.querySelectorAll('h2')].map(h => h.textContent),"
            " tables: document.querySelectorAll('#card table').length,"
            " rows: document.querySelectorAll('#card table tbody tr').length,"
            " broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length,"
            " fetched: performance.getEntriesByType('resource').length})"))["result"]["value"]
    import json

    shown = json.loads(found)
    assert shown["h2"][:3] == ["Intended use", "Source checkpoint", "Training data"], shown
    assert {"Evaluation", "Calibration", "Known limits", "Gate"} <= set(shown["h2"]), shown
    assert shown["tables"] >= 2 and shown["rows"] >= 2, shown
    assert shown["broken"] == 0 and shown["fetched"] == 0, shown
