"""Data values (labels, slice values, audit messages, version strings) put into Markdown as literal text.

The model card (tl_core.registry.card, rendered by markdown-it) and the gate's approval body (tl_core.gate.summary,
rendered as GitHub-flavoured Markdown by Airflow's UI) quote data. A value such as
``[Approve now](https://evil.example/approve)``, ``**bold**`` or ``EU|US`` must read as those characters, not as a
link, emphasis or an extra table cell.
"""

from __future__ import annotations

import io
import re
from typing import Any

# CommonMark's backslash-escapable punctuation that can start syntax: code, emphasis, links and images, raw HTML
# and autolinks, headings, lists and block quotes at a line start, table cells and strikethrough (GFM); ":" so that
# a bare URL is no GFM autolink literal ("https\://..."), "&" so that no entity ("&lt;", "&#42;") is decoded.
_SPECIAL = frozenset("\\`*_{}[]<>()#+-.!|~:&")
_BACKTICKS = re.compile(r"`+")


def _one_line(text: str) -> str:
    """``text`` on one line: a line break in a value would start a new block (a heading, a table row)."""
    return " ".join(text.splitlines())


def escape_markdown(text: str) -> str:
    """``text`` as Markdown that renders back to exactly ``text`` (line breaks become spaces).

    For table cells too: ``|`` becomes ``\\|``, which a GFM table reads as a character of the cell.
    """
    return "".join(f"\\{c}" if c in _SPECIAL else c for c in _one_line(text))


def code_span(value: object) -> str:
    """``str(value)`` as an inline code span (backslashes are literal there): fenced by more backticks than it
    holds.

    Not for table cells (a ``|`` inside a code span still splits a GFM table row); use escape_markdown there.
    """
    flat = _one_line(str(value))
    if not flat.strip():
        return "` `"  # empty or blank: one space (a span of spaces only is never stripped)
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(flat)), default=0) + 1)
    # CommonMark strips one space from each end of a span's content when both ends have one: pad so that the
    # value's own edges (a backtick, a space) survive.
    pad = " " if flat[:1] in ("`", " ") or flat[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def plain_text_png(fig: Any, **savefig: Any) -> bytes:
    """``fig`` saved as PNG bytes (and closed), every text in it drawn as typed: never mathtext or TeX.

    Text in plots is data (slice values, class names, run ids): the "$" of "EU$$" or "$5 off $10" is a dollar
    sign, not math markup (matplotlib raised on "EU$$"). Set on this figure only, never process-wide.
    """
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    buf = io.BytesIO()
    try:
        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):  # ticks made while drawing
            for text in fig.findobj(Text):  # titles, axis and tick labels, legends, annotations made so far
                text.set_parse_math(False)
                text.set_usetex(False)
            fig.savefig(buf, format="png", **savefig)
    finally:
        plt.close(fig)
    return buf.getvalue()
