"""Issues 29.3 and 29.4 in the approval body: Airflow shows the gate's summary_markdown as Markdown, so slice
values, reason texts and version strings from the data go in as literal text (no live link, no bold, no extra
table cell)."""

from __future__ import annotations

import html
import re
from typing import Any

import numpy as np
from markdown_it import MarkdownIt

from tl_core.config import GateSpec
from tl_core.evaluate.run import report_from_probs
from tl_core.gate import decide, summary_markdown

LINK = "region=[Approve now](https://evil.example/approve)"
BOLD = "region=**bold**"
PIPED = "region=EU|US"
CANDIDATE = "full`**x**"
HEADER = ["candidate minus", "metric", "slice", "95% interval", "threshold", "outcome", "detects drops >=",
          "status"]
POLICY = GateSpec(margins={"macro_f1": 0.02}, slice_metrics=["macro_f1"], min_slice_size=30, absolute_minimums={},
                  must_beat_majority=False, must_match_frozen=False,
                  calibration={"ece_max": 1.0, "ece_tolerance": 1.0})


def _report() -> dict[str, Any]:
    """A champion and a candidate that is wrong everywhere on the ``EU|US`` slice, three slices of 300 rows."""
    rng = np.random.default_rng(4)
    n, c = 900, 3
    y = rng.integers(0, c, n)
    pred = np.where(rng.random(n) < 0.8, y, rng.integers(0, c, n))
    champ = np.full((n, c), 0.1 / (c - 1))
    champ[np.arange(n), pred] = 0.9
    masks = {name: (np.arange(n) // 300) == i for i, name in enumerate((PIPED, BOLD, LINK))}
    cand = champ.copy()
    cand[masks[PIPED]] = np.roll(cand[masks[PIPED]], 1, axis=1)
    probs = {CANDIDATE: cand, "champion": champ,
             "majority": np.tile(np.bincount(y, minlength=c) / n, (n, 1))}
    report = report_from_probs(y, probs, masks, CANDIDATE, "full", 200, 0)
    return {**report, "champion": {**report["champion"], "version": "v0001 [x](y)"}}


def _rendered() -> tuple[str, str]:
    report = _report()
    md = summary_markdown(decide(report, POLICY), report)
    # close to what Airflow's UI does with the body: GitHub-flavoured Markdown, bare URLs linked
    gfm = MarkdownIt("commonmark", {"html": False, "linkify": True}).enable(["table", "linkify", "strikethrough"])
    return md, gfm.render(md)


def _table(page: str) -> list[list[str]]:
    """The page's table as rows of cell texts, the header row first."""
    return [[html.unescape(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", page, re.S)]


def test_markdown_in_slice_values_and_versions_is_text_in_the_approval_body() -> None:
    md, page = _rendered()
    assert "<a " not in page and "<em>" not in page
    assert page.count("<strong>") == 1 and "<strong>Decision: FAIL</strong>" in page  # only the decision line
    text = html.unescape(page)
    assert "<code>full`**x**</code>" in text and "<code>v0001 [x](y)</code>" in text
    assert f"macro_f1 on {PIPED}: candidate - champion in [" in text  # the failing check, as the gate wrote it
    for name in (LINK, BOLD):
        assert any(row[2] == name for row in _table(page)[1:]), name


def test_a_pipe_in_a_slice_value_keeps_its_interval_row_aligned() -> None:
    _, page = _rendered()
    header, *rows = _table(page)
    assert header == HEADER
    assert all(len(row) == len(HEADER) for row in rows), rows
    piped = next((row for row in rows if row[2] == PIPED), None)
    assert piped is not None, rows  # not split into "region=EU" and "US" with every figure one column off
    assert piped[0] == "champion" and piped[1] == "macro_f1" and piped[3].startswith("[-")
    assert piped[4] == "-0.020" and piped[5] == "harm" and piped[7] == "FAIL"
