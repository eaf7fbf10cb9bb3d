"""Trends for the registry view: per run, the champion's metric on that run's fresh test data and the candidate's
gate outcome, so a reviewer sees slow decay (the plugin's /tl/registry page shows the plot and the table).

Read-only, from what each run already wrote: ``gate/decision.json`` (outcome, candidate, champion version),
``evaluation/report.json`` (every model's overall metrics on the same test rows; the champion is re-scored in every
run) and ``snapshot/manifest.json`` (the logical date). A run whose files cannot be read is skipped and counted.
"""

from __future__ import annotations

import logging
from typing import Any

from tl_core.artifacts import A, ArtifactError, EvaluationReport, GateDecision, SnapshotManifest, parse_artifact
from tl_core.config import ModelSpec
from tl_core.errors import StoreError
from tl_core.runs import artifact_rel
from tl_core.store import ObjectStore, join_key, open_store
from tl_core.textsafe import plain_text_png

logger = logging.getLogger(__name__)
DECISION = artifact_rel(GateDecision)
MAX_RUNS = 120


def _read(store: ObjectStore, run_key: str, model: type[A]) -> A | None:
    """A run's artifact, or None when it is missing or unreadable (that run is then skipped or shown without it)."""
    key = join_key(run_key, artifact_rel(model))
    try:
        return parse_artifact(model, store.get_bytes(key), store.url(key))
    except (StoreError, ArtifactError) as exc:
        logger.debug("trends: %s", exc)
        return None


def _metric(report: EvaluationReport | None, model: str | None, metric: str) -> float | None:
    evaluated = report.models.get(model or "") if report is not None else None
    value = evaluated.overall.get(metric) if evaluated is not None else None
    return float(value) if isinstance(value, int | float) else None


def collect_trends(spec: ModelSpec, limit: int = MAX_RUNS) -> dict[str, Any]:
    """{"metric", "runs": [{run_id, logical_date, passed, candidate, champion_version, candidate_value,
    champion_value}] oldest first (the newest ``limit`` gated runs), "skipped": runs whose decision is unreadable}."""
    store = open_store(spec.store)
    prefix = join_key("runs", spec.name) + "/"
    metric = spec.train.primary_metric
    rows, skipped = [], 0
    for key in store.list(prefix):
        if not key.endswith("/" + DECISION):
            continue
        run_key = key[: -len(DECISION) - 1]
        decision = _read(store, run_key, GateDecision)
        if decision is None:
            skipped += 1
            continue
        report = _read(store, run_key, EvaluationReport)
        manifest = _read(store, run_key, SnapshotManifest)
        rows.append({"run_id": report.run_id if report is not None else run_key[len(prefix):],
                     "logical_date": manifest.logical_date if manifest is not None else "",
                     "passed": decision.passed, "candidate": decision.candidate,
                     "champion_version": decision.champion_version,
                     "candidate_value": _metric(report, decision.candidate, metric),
                     "champion_value": _metric(report, "champion", metric)})
    if skipped:
        logger.warning("trends of %s: %d run(s) with an unreadable %s skipped", spec.name, skipped, DECISION)
    rows.sort(key=lambda r: (r["logical_date"], r["run_id"]))
    return {"metric": metric, "runs": rows[-limit:], "skipped": skipped}


def render_trends_png(trends: dict[str, Any], title: str) -> bytes | None:
    """A PNG: the champion's and each candidate's metric per run (by logical date), candidates marked by gate
    outcome (PASS filled green, FAIL red cross). None when no run has been gated yet."""
    runs = trends["runs"]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):  # data drawn as typed
        x = list(range(len(runs)))
        fig, ax = plt.subplots(figsize=(9, 3.2), dpi=100)
        champ = [(i, r["champion_value"]) for i, r in enumerate(runs) if r["champion_value"] is not None]
        if champ:
            ax.plot([i for i, _ in champ], [v for _, v in champ], "-o", color="#1f4e9c", label="champion (re-scored)")
        for passed, marker, colour, label in ((True, "o", "#2e8b57", "candidate, gate PASS"),
                                              (False, "x", "#c0392b", "candidate, gate FAIL")):
            pts = [(i, r["candidate_value"]) for i, r in enumerate(runs) if r["passed"] is passed
                   and r["candidate_value"] is not None]
            if pts:
                ax.scatter([i for i, _ in pts], [v for _, v in pts], s=40, label=label, marker=marker, color=colour)
        ax.set_xticks(x, [r["logical_date"] or r["run_id"][:16] for r in runs], rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(trends["metric"])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
    return plain_text_png(fig)  # run ids and model names are drawn as typed ("$" is no math markup)
