"""The evidence report as one self-contained HTML page (plots are inline PNG data URIs; no external assets)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(w: float, h: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def _slice_chart(report: dict[str, Any], metric: str) -> str:
    comp = report.get("comparisons", {}).get("champion", {}).get(metric, {})
    if not comp:
        return "<p>No champion comparison (first model or champion unreadable).</p>"
    names = list(comp)
    fig, ax = _figure(7, 0.35 * len(names) + 1)
    y = np.arange(len(names))
    diffs = [comp[n]["diff"] for n in names]
    lo = [comp[n]["diff"] - comp[n]["lo"] for n in names]
    hi = [comp[n]["hi"] - comp[n]["diff"] for n in names]
    ax.errorbar(diffs, y, xerr=[lo, hi], fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=1)
    margin = report.get("_margin")
    if margin is not None:
        ax.axvline(-margin, color="red", lw=1, ls="--", label=f"margin -{margin}")
        ax.legend(loc="lower right")
    ax.set_yticks(y, names)
    ax.set_xlabel(f"{metric}: candidate - champion ({report['bootstrap']['confidence']:.0%} interval)")
    return _png(fig)


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
        ece = model["before_temperature"]["ece"] if key == "before" else model["overall"].get("ece")
        ax.set_title(f"{title} {label}, ECE {ece:.3f}" if ece is not None else label, fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
    return _png(fig)


def _confusion(model: dict[str, Any], labels: list[str]) -> str:
    cm = np.array(model.get("confusion") or np.zeros((len(labels), len(labels))))
    fig, ax = _figure(4, 3.5)
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, int(v), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _png(fig)


def _curves(curves: dict[str, list[dict[str, float]]]) -> str:
    if not any(curves.values()):
        return "<p>No learning curves (frozen baseline is fitted in one step).</p>"
    fig, ax = _figure(7, 3)
    for name, rows in curves.items():
        if rows:
            ax.plot([r["epoch"] for r in rows], [r["val_metric"] for r in rows], marker="o", label=f"{name} val")
            ax.plot([r["epoch"] for r in rows], [r["train_loss"] for r in rows], ls=":", label=f"{name} train loss")
    ax.set_xlabel("epoch")
    ax.legend(fontsize=7)
    return _png(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and np.isfinite(v) else html.escape(str(v))


def render_html(report: dict[str, Any], decision: dict[str, Any] | None) -> str:
    labels = report["labels"]
    cand_name = report["candidate"]
    models = report["models"]
    parts = [f"<h1>Evaluation: {html.escape(report['model'])} run {html.escape(report['run_id'])}</h1>"]
    if decision is not None:
        color = "#1a7f37" if decision["passed"] else "#cf222e"
        parts.append(f'<div class="decision" style="border-color:{color}"><h2 style="color:{color}">Gate: '
                     f'{"PASS" if decision["passed"] else "FAIL"}{" (first model)" if decision["bootstrap"] else ""}'
                     "</h2><ul>" + "".join(
                         f'<li class="{html.escape(r["status"])}">{html.escape(r["text"])}</li>'
                         for r in sorted(decision["reasons"], key=lambda r: {"FAIL": 0, "WARN": 1}.get(r["status"], 2)))
                     + f"</ul><p>Evidence hash <code>{html.escape(decision['evidence_hash'])}</code></p></div>")
    else:
        parts.append("<p>The gate has not run yet.</p>")
    champ = report["champion"]
    why = f": {html.escape(champ['reason'])}" if champ["reason"] else ""
    parts.append(f"<p>Candidate <b>{html.escape(cand_name)}</b>; champion <b>{html.escape(str(champ.get('version')))}"
                 f"</b> ({html.escape(champ['status'])}{why}); {report['test_size']} test examples.</p>")
    metrics = ["accuracy", "balanced_accuracy", "macro_f1", "auroc", "log_loss", "brier", "ece", "mce"]
    rows = [[html.escape(n), m["role"], _num(m["temperature"])] + [_num(m["overall"].get(k)) for k in metrics]
            for n, m in models.items()]
    parts.append("<h2>All models, test split (after temperature)</h2>" +
                 _table(["model", "role", "T", *metrics], rows))
    parts.append("<h2>Per-slice: candidate vs champion</h2>" + _slice_chart(report, report["primary_metric"]))
    slice_rows = [[html.escape(s), n] + [_num(models[m]["slices"].get(s, {}).get(report["primary_metric"]))
                                         for m in models] for s, n in report["slices"].items()]
    parts.append(_table(["slice", "n", *models], slice_rows))
    parts.append("<h2>Calibration</h2>" + _reliability(models[cand_name], "candidate"))
    if "champion" in models:
        parts.append(_reliability(models["champion"], "champion"))
    parts.append("<h2>Confusion matrix (candidate)</h2>" + _confusion(models[cand_name], labels))
    parts.append("<h2>Learning curves</h2>" + _curves(report.get("curves", {})))
    audit = report.get("audit")
    if audit:
        findings = [[html.escape(str(f.get("check"))), html.escape(str(f.get("severity"))), f.get("count"),
                     html.escape(str(f.get("message")))] for f in audit.get("findings", [])]
        parts.append("<h2>Data audit</h2>" + _table(["check", "severity", "count", "message"], findings))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}.decision{border:3px solid;padding:.5em 1em}"
             "li.FAIL{color:#cf222e}li.WARN{color:#9a6700}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report['model'])} evaluation"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>")
