"""MODEL_CARD.md of a registered version, in the Hugging Face model-card layout (YAML front matter, then intended
use, source checkpoint and licence, training data, strategies compared, metrics overall and per slice with their
intervals, calibration, known limits from the audit, the gate's decision), generated from the run's reports only.

Deterministic (no clock, no host): a registration resumed after a crash writes the same bytes, create-only.
Every value from the run's data (labels, slice values, audit findings, gate reasons, provenance strings) goes in as
literal text (tl_core.textsafe): Markdown in a label is no link on the approver's page, a ``|`` no extra cell.
"""

from __future__ import annotations

import json
from typing import Any

from tl_core.textsafe import code_span, escape_markdown

CARD = "MODEL_CARD.md"
CARD_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "log_loss", "ece")


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def _interval(intervals: dict[str, Any], metric: str, group: str) -> str:
    iv = (intervals.get(metric) or {}).get(group)
    return f"[{_num(iv[0])}, {_num(iv[1])}]" if isinstance(iv, list) and len(iv) == 2 else "n/a"


def _front_matter(model: str, version: str, source: dict[str, Any], evaluated: dict[str, Any]) -> list[str]:
    overall = evaluated.get("overall") or {}
    meta = {"license": source.get("licence") or "unknown", "library_name": "tl-retrain",
            "base_model": source.get("id"), "tags": ["transfer-learning", model, version],
            "metrics": [m for m in CARD_METRICS if m in overall]}
    return ["---", *(f"{k}: {json.dumps(v)}" for k, v in meta.items()), "---", ""]


def _metrics(evaluated: dict[str, Any], slices: dict[str, int]) -> list[str]:
    overall, per_slice = evaluated.get("overall") or {}, evaluated.get("slices") or {}
    intervals = evaluated.get("intervals") or {}
    lines = ["## Evaluation", "", "Test set of the run (the newest labeling days); 95% paired-bootstrap intervals.",
             "", "| group | n | " + " | ".join(CARD_METRICS) + " |", "|---" * (len(CARD_METRICS) + 2) + "|"]
    for group, n, values in [("overall", overall.get("n"), overall),
                             *((s, slices.get(s), per_slice.get(s) or {}) for s in sorted(per_slice))]:
        cells = [f"{_num(values.get(m))} {_interval(intervals, m, group)}" for m in CARD_METRICS]
        lines.append(f"| {escape_markdown(group)} | {n if n is not None else 'n/a'} | " + " | ".join(cells) + " |")
    before = evaluated.get("before_temperature") or {}
    return [*lines, "", "## Calibration", "",
            f"Temperature {_num(evaluated.get('temperature'))} (fitted on the calibration split): ECE "
            f"{_num(before.get('ece'))} before, {_num(overall.get('ece'))} after; log loss "
            f"{_num(before.get('log_loss'))} before, {_num(overall.get('log_loss'))} after.", ""]


def _text(value: Any) -> str:
    return escape_markdown(str(value))


def _source(source: dict[str, Any], snapshot: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    data = spec.get("data") or {}
    get = source.get
    weights = (f"- weights: {_text(get('weights'))}"
               + (f", package {code_span(get('package'))} {_text(get('package_version'))}" if get("package") else "")
               + (f", path {code_span(get('path'))}" if get("path") else ""))
    return ["## Source checkpoint", "",
            f"- id: {code_span(get('id'))}, revision {code_span(get('revision'))} ({_text(get('library'))})",
            weights,
            f"- licence: {_text(get('licence') or 'unknown')} (from {_text(get('licence_source') or 'nowhere')})"
            + (f"; override recorded: {_text(source['licence_override'])}" if get("licence_override") else ""),
            f"- weights fingerprint: {code_span(get('fingerprint') or 'n/a')}", "",
            "## Training data", "",
            f"- dataset {code_span(data.get('dataset'))}, window {_text(data.get('window_days'))} days up to the "
            f"run's logical date, test = newest {_text(data.get('test_days'))} labeling days",
            f"- snapshot content hash {code_span(snapshot.get('content_hash'))}, "
            f"{len(snapshot.get('partitions') or [])} partitions", ""]


def _limits(audit: dict[str, Any] | None, gate: dict[str, Any]) -> list[str]:
    findings = (audit or {}).get("findings") or []
    lines = ["## Known limits", ""]
    lines += [f"- audit {_text(f.get('severity'))}: {_text(f.get('check'))}: {_text(f.get('message'))}"
              for f in findings] or [
        "- the audit recorded no findings" if audit else "- no audit summary in the evaluation report"]
    reasons = [r for r in gate.get("reasons") or [] if r.get("status") in ("FAIL", "WARN")]
    lines += ["", "## Gate", "", f"Decision: {_text(gate.get('decision', 'n/a'))}"]
    lines += [f"- {_text(r.get('status'))}: {_text(r.get('text'))}" for r in reasons]
    return [*lines, ""]


def render_card(model: str, version: str, strategy: str, run: dict[str, Any]) -> str:
    """The card of ``version``; ``run`` holds the run's parsed files: report, candidate, snapshot, spec, gate."""
    report, spec = run.get("report") or {}, run.get("spec") or {}
    source = report.get("provenance") or {"id": (spec.get("backbone") or {}).get("name")}
    evaluated = (report.get("models") or {}).get(strategy) or {}
    strategies = (run.get("candidate") or {}).get("strategies") or {}
    labels = ", ".join(_text(label) for label in spec.get("labels") or report.get("labels") or [])
    lines = [*_front_matter(model, version, source, evaluated), f"# {_text(model)} {_text(version)}", "",
             "## Intended use", "", spec.get("description") or "(the spec has no description)", "",
             f"Labels: {labels}. Trained by run {code_span(report.get('run_id'))}; transfer strategy "
             f"{code_span(strategy)}.", "",
             *_source(source, run.get("snapshot") or {}, spec),
             "## Strategies compared", "", "| strategy | validation metric | test " +
             _text(report.get("primary_metric")) + " |", "|---|---|---|"]
    for name in sorted(strategies):
        test = ((report.get("models") or {}).get(name) or {}).get("overall") or {}
        lines.append(f"| {_text(name)}{' (selected)' if name == strategy else ''} | "
                     f"{_num((strategies[name] or {}).get('val_metric'))} | "
                     f"{_num(test.get(report.get('primary_metric') or 'macro_f1'))} |")
    lines += ["", *_metrics(evaluated, report.get("slices") or {}),
              *_limits(report.get("audit"), run.get("gate") or {})]
    return "\n".join(lines)


def card_html(model: str, version: str, card: str) -> str:
    """A model card as a standalone HTML page: the YAML front matter as a table, the body as Markdown.

    Raw HTML in the card is escaped, never rendered (the card quotes data: label names, audit findings).
    """
    import html

    from markdown_it import MarkdownIt

    meta, body = split_front_matter(card)
    esc = html.escape
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in meta)
    rendered = MarkdownIt("commonmark", {"html": False}).enable("table").render(body)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(model)} {esc(version)} model card"
            "</title><style>body{font-family:sans-serif;margin:1.5em;max-width:70em}table{border-collapse:collapse;"
            "margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
            "code{background:#f4f4f4}</style></head><body>"
            f"<p><a href='../../registry/retrain_{esc(model)}'>registry of {esc(model)}</a></p>"
            f"<table id='card-meta'>{rows}</table><div id='card'>{rendered}</div></body></html>")


def split_front_matter(card: str) -> tuple[list[tuple[str, str]], str]:
    """(the ``key: value`` lines of a leading ``---`` block, the rest); no front matter gives ([], card)."""
    lines = card.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in (line.strip() for line in lines[1:]):
        return [], card
    end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    meta = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:end]) if k.strip()]
    return meta, "\n".join(lines[end + 1:])
