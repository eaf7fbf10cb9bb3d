"""The drift report as a self-contained HTML section (inline PNG plots, as tl_core/evaluate/report.py draws them)."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from tl_core.evaluate.report import _figure, _png


def _class_shares(report: dict[str, Any]) -> str:
    pred = report["predictions"]
    names = list(pred["reference_counts"])
    ref = np.array([pred["reference_counts"][n] for n in names], float)
    cur = np.array([pred["current_counts"][n] for n in names], float)
    fig, ax = _figure(max(4.0, 0.6 * len(names) + 2), 3)
    x = np.arange(len(names))
    ax.bar(x - 0.2, ref / max(ref.sum(), 1), 0.4, label="champion, test split")
    ax.bar(x + 0.2, cur / max(cur.sum(), 1), 0.4, label=f"partition dt={report['dt']}")
    ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share of predictions")
    ax.set_title(f"PSI {pred['psi']:.3f}, chi-square p = {pred['chi2_p_value']:.2g}", fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig, f"predicted-class shares, reference vs partition: {', '.join(names)}")


def _accuracy_chart(report: dict[str, Any]) -> str:
    acc = report["accuracy"]
    groups = [("overall", acc["expected_accuracy"], acc["reference_accuracy"])]
    groups += [(f"{k} (n={v['rows']})", v["expected_accuracy"], v["reference_accuracy"])
               for k, v in acc["slices"].items()]
    fig, ax = _figure(7, 0.35 * len(groups) + 1.2)
    y = np.arange(len(groups))
    est = np.array([g[1] if g[1] is not None else np.nan for g in groups], float)
    ref = np.array([g[2] if g[2] is not None else np.nan for g in groups], float)
    ax.plot(ref, y, "s", color="tab:orange", label="champion test accuracy")
    ax.plot(est, y, "o", color="tab:blue", label="estimated (CBPE), no labels")
    ax.plot(ref - report["thresholds"]["accuracy_drop"], y, "|", color="red", ms=12, label="alert below")
    ax.set_yticks(y, [g[0] for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy")
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig, "label-free accuracy estimate per slice vs the champion's test accuracy: "
                + ", ".join(g[0] for g in groups))


def _embedding_chart(report: dict[str, Any]) -> str:
    emb = report["embedding"]
    if emb["status"] != "ok":
        return f"<p>Input drift not measured: {html.escape(emb['reason'])}</p>"
    fig, ax = _figure(6, 1.8)
    quantiles = emb["null_quantiles"]
    for q, v in quantiles.items():
        ax.axvline(v, color="grey", ls=":", lw=1)
        ax.text(v, 0.9, f"null q{float(q):g}", rotation=90, fontsize=7, va="top", transform=ax.get_xaxis_transform())
    ax.axvline(emb["statistic"], color="tab:red", lw=2, label=f"observed, p = {emb['p_value']:.3f}")
    ax.set_yticks([])
    ax.set_xlabel("MMD^2 of frozen-backbone embeddings (training snapshot vs partition)")
    ax.legend(fontsize=8)
    return _png(fig, "embedding MMD against its permutation null")


def drift_section(report: dict[str, Any]) -> str:
    """The ``<section>`` a page (the plugin's views, the run report) embeds."""
    alerts = report["alerts"]
    items = "".join(f"<li>{html.escape(a['text'])}</li>" for a in alerts) or "<li>none</li>"
    judged = f"<p>{html.escape(report['not_judged'])}</p>" if report.get("not_judged") else ""
    dis = report.get("disagreement")
    shadow = (f"<p>Shadow {html.escape(str(report['challenger_version']))}: disagrees with the champion on "
              f"{dis['rate']:.1%} of {dis['rows']} rows; per slice: "
              + ", ".join(f"{html.escape(k)} {v['rate']:.1%} (n={v['rows']})" for k, v in dis["slices"].items())
              + "</p>") if dis else "<p>No challenger scored in shadow.</p>"
    return (f'<section id="drift"><h2>Drift: {html.escape(report["model"])} dt={report["dt"]} '
            f"(champion {html.escape(report['champion_version'])}, {report['rows']} rows)</h2>"
            f"<h3>Alerts</h3><ul>{items}</ul>{judged}{shadow}"
            f"<h3>Input drift</h3>{_embedding_chart(report)}"
            f"<h3>Prediction shift</h3>{_class_shares(report)}"
            f"<h3>Label-free accuracy</h3>{_accuracy_chart(report)}</section>")


def drift_page(report: dict[str, Any]) -> str:
    """A whole page around drift_section."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>drift {html.escape(report['model'])} "
            f"{report['dt']}</title></head><body>{drift_section(report)}</body></html>")
