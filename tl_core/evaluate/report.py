"""The evidence report as one self-contained HTML page (plots are inline PNG data URIs; no external assets)."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from tl_core.textsafe import plain_text_png


def _png(fig: Any, alt: str) -> str:
    """``fig`` as an inline PNG ``<img>`` (closed afterwards), every text in it drawn as plain text."""
    png = plain_text_png(fig, dpi=80, bbox_inches="tight")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _figure(w: float, h: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _slice_chart(report: dict[str, Any], metric: str) -> str:
    """Per slice: the metric with its interval for candidate and champion, and the paired difference."""
    models = report["models"]
    cand = models[report["candidate"]]
    champ = models.get("champion")
    names = ["overall", *report.get("slices", {})]
    conf = report["bootstrap"]["confidence"]
    fig, axes = _figure(11, 0.32 * len(names) + 1.4)
    fig.clf()
    ax = fig.add_subplot(1, 2, 1)
    y = np.arange(len(names))
    series = (("candidate", cand, "tab:blue"), ("champion", champ, "tab:orange"))
    for offset, (label, model, color) in enumerate(series):
        if model is None:
            continue
        ivs = model.get("intervals", {}).get(metric, {})
        points = [model["overall"].get(metric) if n == "overall" else model["slices"].get(n, {}).get(metric)
                  for n in names]
        pts = np.array([p if isinstance(p, float) else np.nan for p in points])
        lo = np.array([ivs.get(n, [np.nan, np.nan])[0] for n in names])
        hi = np.array([ivs.get(n, [np.nan, np.nan])[1] for n in names])
        err = np.vstack([np.clip(pts - lo, 0, None), np.clip(hi - pts, 0, None)])
        ax.errorbar(pts, y + (0.15 if offset else -0.15), xerr=np.nan_to_num(err), fmt="o", capsize=3, color=color,
                    label=label, ms=4)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} ({conf:.0%} interval)")
    ax.legend(fontsize=8, loc="lower left")
    ax2 = fig.add_subplot(1, 2, 2)
    comp = report.get("comparisons", {}).get("champion", {}).get(metric, {})
    if comp:
        d = np.array([comp[n]["diff"] if n in comp else np.nan for n in names])
        lo = np.array([comp[n]["lo"] if n in comp else np.nan for n in names])
        hi = np.array([comp[n]["hi"] if n in comp else np.nan for n in names])
        bad = lo < -_margin(report, metric)
        colors = ["tab:red" if b else "tab:green" for b in bad]
        for i in range(len(names)):
            if np.isfinite(d[i]):
                ax2.errorbar(d[i], y[i], xerr=[[max(d[i] - lo[i], 0)], [max(hi[i] - d[i], 0)]], fmt="o", capsize=3,
                             color=colors[i], ms=4)
        ax2.axvline(0, color="grey", lw=1)
        ax2.axvline(-_margin(report, metric), color="red", lw=1, ls="--", label=f"margin -{_margin(report, metric)}")
        ax2.legend(fontsize=8, loc="lower left")
    else:
        ax2.text(0.5, 0.5, "no champion to compare with", ha="center", va="center", transform=ax2.transAxes)
    ax2.set_yticks(y, [""] * len(names))
    ax2.invert_yaxis()
    ax2.set_xlabel(f"{metric}: candidate - champion ({conf:.0%} paired interval)")
    return _png(fig, f"{metric} per slice with intervals, candidate vs champion: {', '.join(names)}")


def _margin(report: dict[str, Any], metric: str) -> float:
    return float((report.get("gate_policy") or {}).get("margins", {}).get(metric, 0.0))


def _reliability(model: dict[str, Any], title: str) -> str:
    fig, axes = _figure(7, 3.2)
    fig.clf()
    for i, key in enumerate(("before", "after")):
        ax = fig.add_subplot(1, 2, i + 1)
        rel = model["reliability"][key]
        centers = (np.arange(15) + 0.5) / 15
        acc = [a if a is not None else np.nan for a in rel["accuracy"]]
        ax.bar(centers, acc, width=1 / 15, edgecolor="black", alpha=0.7)
        ax.plot([0, 1], [0, 1], "r--", lw=1)
        label = "before" if key == "before" else f"after T={model['temperature']:.2f}"
        ece = (model.get("before_temperature") or {}).get("ece") if key == "before" else model["overall"].get("ece")
        ax.set_title(f"{title} {label}, ECE {ece:.3f}" if isinstance(ece, float) else f"{title} {label}", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    return _png(fig, f"reliability diagrams of the {title} before and after temperature scaling")


def _confusion(model: dict[str, Any], labels: list[str], title: str) -> str:
    cm = np.array(model.get("confusion") or np.zeros((len(labels), len(labels))))
    fig, ax = _figure(4, 3.5)
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, int(v), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _png(fig, f"confusion matrix of the {title} over {', '.join(labels)}")


def _curves(curves: dict[str, list[dict[str, float]]]) -> str:
    if not any(curves.values()):
        return "<p>No learning curves (the frozen baseline is fitted in one step).</p>"
    fig, axes = _figure(10, 3)
    fig.clf()
    ax_loss, ax_metric = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, rows in curves.items():
        if not rows:
            continue
        epochs = [r.get("epoch") for r in rows]
        line = ax_loss.plot(epochs, [r.get("train_loss", np.nan) for r in rows], ls=":", label=f"{name} train")[0]
        ax_loss.plot(epochs, [r.get("val_loss", np.nan) for r in rows], color=line.get_color(), label=f"{name} val")
        ax_metric.plot(epochs, [r.get("val_metric", np.nan) for r in rows], marker="o", label=name)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=7)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel("validation metric")
    ax_metric.legend(fontsize=7)
    return _png(fig, "learning curves: losses and validation metric per epoch")


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and np.isfinite(v) else html.escape(str(v))


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
         "font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}.decision{border:3px solid;padding:.5em 1em}"
         "li.FAIL{color:#cf222e}li.WARN{color:#9a6700}img{max-width:100%}")
SUMMARY_METRICS = ["accuracy", "balanced_accuracy", "macro_f1", "auroc", "log_loss", "brier", "ece", "mce"]


def _comparisons_table(reasons: list[dict[str, Any]]) -> str:
    """Every comparison against a margin: its interval, the outcome, and the smallest drop it can detect."""
    rows = [[html.escape(r["check"]), html.escape(str(r.get("metric"))), html.escape(str(r.get("slice"))),
             f"[{r['interval'][0]:+.3f}, {r['interval'][1]:+.3f}]", _num(r.get("threshold")),
             html.escape(r["outcome"]), _num(r.get("detectable")),
             "too small to judge" if "too small to judge" in r["text"] else "", html.escape(r["status"])]
            for r in reasons if r.get("outcome") and r.get("interval")]
    if not rows:
        return ""
    return ("<h3>Comparisons: outcome and power</h3>" + _table(
        ["check", "metric", "slice", "interval", "margin", "outcome", "detects drops ≥", "size", "status"], rows))


def _decision_section(decision: dict[str, Any] | None) -> str:
    if decision is None:
        return "<p>The gate has not run yet.</p>"
    color = "#1a7f37" if decision["passed"] else "#cf222e"
    reasons = decision.get("reasons", [])
    top = [r for r in reasons if r["status"] != "PASS"]
    rest = [r for r in reasons if r["status"] == "PASS"]

    def items(rs: list[dict[str, Any]]) -> str:
        return "".join(f'<li class="{html.escape(r["status"])}">{html.escape(r["text"])}</li>' for r in rs)

    return (f'<div class="decision" style="border-color:{color}"><h2 style="color:{color}">Gate: '
            f'{"PASS" if decision["passed"] else "FAIL"}'
            f'{" (bootstrap: first model, no champion)" if decision["bootstrap"] else ""}</h2>'
            + (f"<ul>{items(top)}</ul>" if top else "<p>Every check passed.</p>")
            + _comparisons_table(reasons)
            + f"<details><summary>{len(rest)} passing checks</summary><ul>{items(rest)}</ul></details>"
            + f"<p>Evidence hash <code>{html.escape(decision['evidence_hash'])}</code></p></div>")


def _models_section(report: dict[str, Any]) -> list[str]:
    """Every model's summary metrics, then the per-slice charts and table of the primary metric."""
    models, primary = report["models"], report["primary_metric"]
    champ = report["champion"]
    why = f": {html.escape(champ['reason'])}" if champ["reason"] else ""
    parts = [f"<p>Candidate <b>{html.escape(report['candidate'])}</b>; champion <b>"
             f"{html.escape(str(champ.get('version')))}</b> ({html.escape(champ['status'])}{why}); "
             f"{report['test_size']} test examples.</p>"]
    space = report.get("label_space") or {}
    if space.get("status") in ("added", "reordered"):
        parts.append(f"<p>Champion label space ({html.escape(space['status'])}): {html.escape(space['reason'])}"
                     + (f"; {space.get('shared_test_rows')} shared test rows." if space["status"] == "added" else ".")
                     + "</p>")
    rows = [[html.escape(n), m["role"], _num(m["temperature"])] + [_num(m["overall"].get(k)) for k in SUMMARY_METRICS]
            for n, m in models.items()]
    parts.append("<h2>All models, test split (after temperature)</h2>" +
                 _table(["model", "role", "T", *SUMMARY_METRICS], rows))
    slice_metrics = list(dict.fromkeys([primary, *(report.get("gate_policy") or {}).get("slice_metrics", [])]))
    for metric in slice_metrics:
        parts.append(f"<h2>Per slice: {html.escape(metric)}, candidate vs champion</h2>" + _slice_chart(report, metric))
    slice_rows = [[html.escape(s), n] + [_num(models[m]["slices"].get(s, {}).get(primary)) for m in models]
                  for s, n in report["slices"].items()]
    parts.append(f"<h3>{html.escape(primary)} per slice (after temperature)</h3>"
                 + _table(["slice", "n", *models], slice_rows))
    return parts


def _calibration_section(report: dict[str, Any]) -> list[str]:
    """Reliability diagrams, the before/after temperature table and the confusion matrices."""
    models, cand_name, labels = report["models"], report["candidate"], report["labels"]
    parts = ["<h2>Calibration: reliability before and after temperature</h2>"
             + _reliability(models[cand_name], "candidate")]
    if "champion" in models:
        parts.append(_reliability(models["champion"], "champion"))
    cal_rows = [[html.escape(n), _num(m["temperature"])] + [
        f"{_num(m['before_temperature'].get(k))} &rarr; {_num(m['overall'].get(k))}" for k in ("log_loss", "brier",
                                                                                               "ece", "mce")]
        for n, m in models.items()]
    parts.append(_table(["model", "T", "log_loss", "brier", "ece", "mce"], cal_rows))
    parts.append("<h2>Confusion matrices</h2>" + _confusion(models[cand_name], labels, f"candidate ({cand_name})"))
    if "champion" in models:  # classes added since the champion: its matrix is over the shared classes
        space = report.get("label_space") or {}
        shared = space.get("shared") if space.get("status") == "added" else None
        parts.append(_confusion(models["champion"], shared or labels, "champion"))
    return parts


def _audit_section(audit: dict[str, Any] | None) -> str:
    if not audit:
        return "<h2>Data audit</h2><p>No audit report in this run.</p>"
    facts = [[html.escape(k), html.escape(str(v))] for k, v in audit.items()
             if k not in ("findings", "label_issue_examples")]
    findings = [[html.escape(str(f.get("check"))), html.escape(str(f.get("severity"))), f.get("count"),
                 html.escape(str(f.get("message")))] for f in audit.get("findings", [])]
    examples = [[html.escape(str(t.get(k))) for k in ("example_id", "given", "suspected")]
                for t in audit.get("label_issue_examples", [])]
    return ("<h2>Data audit</h2>" + _table(["fact", "value"], facts)
            + _table(["check", "severity", "count", "message"], findings)
            + ("<h3>Suspected label issues (top examples)</h3>"
               + _table(["example id", "given label", "suspected label"], examples) if examples else ""))


def _backbones_section(report: dict[str, Any]) -> list[str]:
    """Runs with candidate backbones: the candidates table and the metric-vs-latency plot."""
    backbones = report.get("backbones")
    if not backbones:
        return []
    metric = report["primary_metric"]
    rows = []
    for name, b in backbones.items():
        latency = b.get("latency_ms") or {}
        iv = b.get("test_interval")
        test = f"{_num(b.get('test_metric'))} [{_num(iv[0])}, {_num(iv[1])}]" if iv else _num(b.get("test_metric"))
        verdict = ("<b>selected</b>" if b.get("selected") else
                   f"over budget: {html.escape(b['over_budget'])}" if b.get("over_budget") else "")
        rows.append([html.escape(name), html.escape(str(b.get("name"))), html.escape(str(b.get("best"))),
                     _num(b.get("val_metric")),
                     test,
                     *(f"{latency[k]:.2f}" if k in latency else "n/a" for k in sorted(latency, key=int)),
                     _num(b.get("onnx_mb")), f"{(b.get('parameters') or 0) / 1e6:.2f}M",
                     html.escape(str(b.get("licence"))), verdict])
    sizes = sorted({k for b in backbones.values() for k in (b.get("latency_ms") or {})}, key=int)
    headers = ["backbone", "checkpoint", "best model", f"val {metric}", f"test {metric} [interval]",
               *(f"latency ms @ batch {k}" for k in sizes), "ONNX MB", "parameters", "licence", ""]
    return ["<h2>Backbone candidates</h2><p>Cost measured with onnxruntime on the worker that trained each backbone; "
            "budgets from the spec's <code>selection</code>.</p>" + _table(headers, rows), _metric_vs_latency(report)]


def _metric_vs_latency(report: dict[str, Any]) -> str:
    fig, ax = _figure(6, 3.5)
    for name, b in report["backbones"].items():
        latency, iv = (b.get("latency_ms") or {}).get("1"), b.get("test_interval")
        if latency is None or b.get("test_metric") is None:
            continue
        err = [[b["test_metric"] - iv[0]], [iv[1] - b["test_metric"]]] if iv else None
        ax.errorbar([latency], [b["test_metric"]], yerr=err, fmt="o" if not b.get("selected") else "*", ms=9,
                    capsize=3, label=f"{name}{' (selected)' if b.get('selected') else ''}")
    ax.set_xlabel("onnxruntime latency at batch 1 (ms)")
    ax.set_ylabel(f"test {report['primary_metric']}")
    ax.legend(fontsize=7)
    return _png(fig, f"test {report['primary_metric']} against latency per backbone")


def render_html(report: dict[str, Any], decision: dict[str, Any] | None) -> str:
    """The self-contained evidence report: decision, models, slices, calibration, curves, audit."""
    parts = [f"<h1>Evaluation: {html.escape(report['model'])} run {html.escape(report['run_id'])}</h1>",
             _decision_section(decision), *_models_section(report), *_backbones_section(report),
             *_calibration_section(report),
             "<h2>Learning curves</h2>" + _curves(report.get("curves", {})), _audit_section(report.get("audit"))]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report['model'])} evaluation"
            f"</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
