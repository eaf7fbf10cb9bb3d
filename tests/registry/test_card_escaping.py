"""Issues 29.3 and 29.4: data on the model card is text. Markdown in a label, slice value or audit message renders
as those characters (no link, no emphasis), and a ``|`` in a slice value stays inside its table cell."""

from __future__ import annotations

import html
from html.parser import HTMLParser
from typing import Any

import pytest
from markdown_it import MarkdownIt

from tl_core.registry.card import CARD_METRICS, card_html, render_card
from tl_core.textsafe import code_span, escape_markdown

LINK = "[Approve now](https://evil.example/approve)"
BOLD = "**bold**"
PIPED = "region=EU|US"


class _Tables(HTMLParser):
    """Every table of a page as rows of cell texts (header row first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def _run() -> dict[str, Any]:
    slices = {PIPED: 40, f"channel={BOLD}": 30, f"channel={LINK}": 20}
    per_slice = {PIPED: {"accuracy": 0.611, "macro_f1": 0.522, "balanced_accuracy": 0.533, "log_loss": 0.944,
                         "ece": 0.055},
                 f"channel={BOLD}": {"accuracy": 0.7}, f"channel={LINK}": {"accuracy": 0.8}}
    frozen = {"overall": {"n": 90, "accuracy": 0.75}, "slices": per_slice, "temperature": 1.2,
              "intervals": {"accuracy": {PIPED: [0.5, 0.72]}}, "before_temperature": {}}
    report = {"run_id": "run-1", "labels": [LINK, BOLD, "a|b"], "primary_metric": "macro_f1", "slices": slices,
              "models": {"frozen": frozen},
              "audit": {"findings": [{"check": "label_shift", "severity": "warning",
                                      "message": f"label {LINK} share 8% -> 30%, see <https://evil.example/x>"}]}}
    gate = {"decision": "FAIL", "reasons": [{"status": "FAIL", "text": f"macro_f1 on {PIPED}: harm: FAIL"},
                                            {"status": "WARN", "text": f"slice channel={BOLD} too small: WARN"}]}
    return {"report": report, "spec": {"labels": [LINK, BOLD, "a|b"], "data": {"dataset": "ds`x"}},
            "candidate": {"strategies": {"frozen": {"val_metric": 0.9}}}, "gate": gate,
            "snapshot": {"content_hash": "hash-1"}}


def _card_body() -> str:
    page = card_html("m1", "v0001", render_card("m1", "v0001", "frozen", _run()))
    return page.split("<div id='card'>", 1)[1]


def test_markdown_in_labels_slices_and_findings_is_text_on_the_card() -> None:
    body = _card_body()
    assert "<a " not in body and "<strong>" not in body and "<em>" not in body
    # the reader sees the values as they are in the data
    assert f"Labels: {LINK}, {BOLD}, a|b." in html.unescape(body)
    assert "label [Approve now](https://evil.example/approve) share 8% -&gt; 30%, see &lt;https://evil.example/x&gt;" \
        in body
    assert f"FAIL: macro_f1 on {PIPED}: harm: FAIL" in body and f"WARN: slice channel={BOLD} too small" in body
    assert "<code>ds`x</code>" in body  # a backtick inside a code span does not close it


def test_a_pipe_in_a_slice_value_keeps_its_metrics_row_aligned() -> None:
    evaluation = next(t for t in _tables(_card_body()) if t[0][:2] == ["group", "n"])
    header = evaluation[0]
    assert header == ["group", "n", *CARD_METRICS]
    assert all(len(row) == len(header) for row in evaluation), evaluation
    rows = {r[0]: r for r in evaluation[1:]}
    assert PIPED in rows, evaluation  # not split into "region=EU" and "US" with every number one column off
    row = rows[PIPED]
    assert row[1] == "40" and row[header.index("accuracy")] == "0.611 [0.500, 0.720]"
    assert row[header.index("macro_f1")] == "0.522 n/a" and row[header.index("ece")] == "0.055 n/a"
    assert set(rows) == {"overall", PIPED, f"channel={BOLD}", f"channel={LINK}"}


@pytest.mark.parametrize("text", [
    LINK, BOLD, "_em_", "`code`", "<https://x.example>", "<b>raw</b>", "https://bare.example/a", "www.x.example",
    "a@b.example", "# heading", "1. item", "- item", "+ item", "> quote", "a|b", "~~gone~~", "![img](x.png)",
    "&amp; &#42;", "back\\slash \\*", "EU$$", "{x} (y) !z", "***", "---", "=",
])
def test_escape_markdown_renders_back_to_the_text(text: str) -> None:
    md = MarkdownIt("commonmark", {"html": False, "linkify": True}).enable(["table", "linkify", "strikethrough"])
    assert md.render(escape_markdown(text)) == f"<p>{html.escape(text, quote=False)}</p>\n"
    assert md.render(f"| h |\n|---|\n| {escape_markdown(text)} |").count("<td>") == 1


def test_escape_markdown_keeps_a_value_on_one_line() -> None:
    assert escape_markdown("a\n# b\r\n| c |") == "a \\# b \\| c \\|"


@pytest.mark.parametrize("text", ["plain", "a`b", "``x", "x`", " pad ", "", "[l](u) **b**"])
def test_code_span_shows_the_text_verbatim(text: str) -> None:
    rendered = MarkdownIt("commonmark").render(code_span(text))
    assert rendered == f"<p><code>{html.escape(text, quote=False) or ' '}</code></p>\n"  # empty: one space


def test_dollar_signs_in_run_ids_and_model_names_draw_as_text_on_the_trends_plot() -> None:
    from tl_core.registry.trends import render_trends_png

    runs = [{"logical_date": None, "run_id": f"manual__EU$$_{i}", "champion_value": 0.8, "candidate_value": 0.81,
             "passed": i % 2 == 0} for i in range(3)]
    png = render_trends_png({"runs": runs, "metric": "accuracy"}, "shop-$x^2$: accuracy")
    assert png is not None and png.startswith(b"\x89PNG")
