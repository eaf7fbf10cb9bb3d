"""`tl evaluate` / `tl gate`: measure every model of a run on the same test examples, then decide.

Report schema (``schema_version`` 1), evaluation/report.json:
  run_id, model, labels, primary_metric, test_size, candidate (strategy name), slices {name: n},
  champion {status: ok|none|unreadable, version, etag, reason},
  models {name: {role, strategy, temperature, overall {metrics after temperature},
          before_temperature {log_loss, brier, ece, mce}, per_class, confusion, slices {name: metrics},
          reliability {before, after}}}   (names: strategies, "champion", "majority")
  comparisons {other: {metric: {group: {diff, lo, hi, quantiles[201]}}}} - candidate minus other, oriented so
          that positive is better (lower-is-better metrics are negated); groups: "overall" and slice names
  bootstrap {n_boot, seed, confidence, method}
  curves {strategy: [...]}, audit {...} (when present)
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tl_core.config import LOWER_IS_BETTER
from tl_core.errors import NoSuchKey, TLError
from tl_core.evaluate.bootstrap import CONTINUOUS_METRICS, COUNT_METRICS, interval, paired_bootstrap
from tl_core.evaluate.calibration import fit_temperature
from tl_core.evaluate.metrics import all_metrics, ece_bins, softmax
from tl_core.gate import decide, evidence_hash, summary_markdown
from tl_core.runs import RunContext

logger = logging.getLogger(__name__)
SCHEMA_VERSION = 1
QUANTILES = np.linspace(0, 1, 201)


@dataclass
class ChampionScores:
    version: str
    pointer_etag: str
    logits_by_split: dict[str, np.ndarray]  # "calibration" and "test", rows in examples.parquet order


def load_examples(ctx: RunContext) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("split/examples.parquet"))))


def slice_masks(df: pd.DataFrame, columns: list[str], crosses: list[list[str]]) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    for col in columns:
        if col not in df:
            continue
        values = df[col].astype(str).to_numpy()
        for v in sorted(set(values)):
            masks[f"{col}={v}"] = values == v
    for a, b in crosses:
        if a in df and b in df:
            va, vb = df[a].astype(str).to_numpy(), df[b].astype(str).to_numpy()
            for x in sorted(set(va)):
                for y in sorted(set(vb)):
                    m = (va == x) & (vb == y)
                    if m.any():
                        masks[f"{a}={x}&{b}={y}"] = m
    return masks


def _aligned(ctx: RunContext, strategy: str, split: str, ids: list[str]) -> np.ndarray:
    z = ctx.read_npz(f"models/{strategy}/logits/{split}.npz")
    pos = {str(e): i for i, e in enumerate(z["example_id"])}
    missing = [e for e in ids if e not in pos]
    if missing:
        raise TLError(f"models/{strategy}/logits/{split}.npz lacks {len(missing)} {split} examples, e.g. {missing[:5]}")
    return z["logits"][[pos[e] for e in ids]]  # type: ignore[no-any-return]


def score_champion(ctx: RunContext, frames: dict[str, pd.DataFrame]) -> tuple[dict[str, Any], ChampionScores | None]:
    """Re-score the registered champion on this run's calibration and test rows through the serving path."""
    try:
        from tl_core.registry import Registry

        pointer = Registry.for_spec(ctx.spec).champion()
    except Exception as exc:  # noqa: BLE001 - any failure to read the pointer must fail the gate, not crash
        return {"status": "unreadable", "version": None, "etag": None, "reason": f"champion pointer: {exc}"}, None
    if pointer is None:
        return {"status": "none", "version": None, "etag": None, "reason": "no champion yet"}, None
    try:
        from tl_core.export.predict import score_registered

        logits = {split: score_registered(ctx.spec, pointer.version, df) for split, df in frames.items()}
    except Exception as exc:  # noqa: BLE001 - an unusable champion is evidence for the gate, not a crash
        return {"status": "unreadable", "version": pointer.version, "etag": pointer.etag,
                "reason": f"{type(exc).__name__}: {exc}"}, None
    return ({"status": "ok", "version": pointer.version, "etag": pointer.etag, "reason": ""},
            ChampionScores(pointer.version, pointer.etag, logits))


def build_report(ctx: RunContext, champion: ChampionScores | None, champion_info: dict[str, Any]) -> dict[str, Any]:
    spec = ctx.spec
    labels = list(spec.labels)
    index = {n: i for i, n in enumerate(labels)}
    df = load_examples(ctx)
    frames = {s: df[df["split"] == s].reset_index(drop=True) for s in ("train", "calibration", "test")}
    test, cal = frames["test"], frames["calibration"]
    y_test = test["label"].map(index).fillna(-1).astype(int).to_numpy()
    y_cal = cal["label"].map(index).fillna(-1).astype(int).to_numpy()
    keep_t, keep_c = y_test >= 0, y_cal >= 0
    candidate = ctx.read_json("candidate.json")
    logits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    roles: dict[str, str] = {}
    for strategy in candidate["strategies"]:
        logits[strategy] = (_aligned(ctx, strategy, "calibration", cal["example_id"].astype(str).tolist()),
                            _aligned(ctx, strategy, "test", test["example_id"].astype(str).tolist()))
        roles[strategy] = "candidate" if strategy == candidate["selected"] else "strategy"
    if champion is not None:
        logits["champion"] = (champion.logits_by_split["calibration"], champion.logits_by_split["test"])
        roles["champion"] = "champion"
    # Majority-class predictor from the training split's class frequencies.
    freq = np.bincount(frames["train"]["label"].map(index).dropna().astype(int), minlength=len(labels)) + 1.0
    prior = np.log(freq / freq.sum())
    logits["majority"] = (np.tile(prior, (len(cal), 1)), np.tile(prior, (len(test), 1)))
    roles["majority"] = "majority"

    masks = slice_masks(test[keep_t].reset_index(drop=True), spec.data.slice_columns, spec.data.slice_crosses)
    y = y_test[keep_t]
    models: dict[str, Any] = {}
    probs_after: dict[str, np.ndarray] = {}
    for name, (lc, lt) in logits.items():
        temperature = fit_temperature(lc[keep_c], y_cal[keep_c]) if name != "majority" else 1.0
        before, after = softmax(lt[keep_t]), softmax(lt[keep_t], temperature)
        probs_after[name] = after
        m_before = all_metrics(before, y, labels) if len(y) else {"n": 0}
        overall = all_metrics(after, y, labels) if len(y) else {"n": 0}
        models[name] = {
            "role": roles[name], "strategy": name if name in candidate["strategies"] else None,
            "temperature": temperature,
            "overall": {k: v for k, v in overall.items() if k not in ("per_class", "confusion")},
            "before_temperature": {k: m_before.get(k) for k in ("log_loss", "brier", "ece", "mce", "accuracy")},
            "per_class": overall.get("per_class", {}), "confusion": overall.get("confusion", []),
            "slices": {s: {k: v for k, v in all_metrics(after[m], y[m], labels).items()
                           if k not in ("per_class", "confusion")} for s, m in masks.items()},
            "reliability": {"before": _rel(before, y), "after": _rel(after, y)},
        }
    comparisons: dict[str, Any] = {}
    if len(y):
        groups = {"overall": np.ones(len(y), dtype=bool), **masks}
        continuous = tuple(m for m in spec.gate.margins if m in CONTINUOUS_METRICS)
        comparisons = compare_models(y, probs_after, groups, candidate["selected"], spec.gate.n_bootstrap,
                                     spec.gate.bootstrap_seed, spec.gate.confidence, continuous)
    curves = {}
    for strategy in candidate["strategies"]:
        try:
            curves[strategy] = ctx.read_json(f"models/{strategy}/train_report.json").get("curves", [])
        except NoSuchKey:
            curves[strategy] = []
    audit = None
    if ctx.store.exists(ctx.key("audit/report.json")):
        audit = ctx.read_json("audit/report.json")
    return {
        "schema_version": SCHEMA_VERSION, "run_id": ctx.run_id, "model": spec.name, "labels": labels,
        "primary_metric": spec.train.primary_metric, "test_size": int(len(y)),
        "unlabelled_test_rows": int((~keep_t).sum()), "candidate": candidate["selected"],
        "slices": {s: int(m.sum()) for s, m in masks.items()}, "champion": champion_info, "models": models,
        "comparisons": comparisons, "curves": curves, "audit": _audit_summary(audit),
        "bootstrap": {"n_boot": spec.gate.n_bootstrap, "seed": spec.gate.bootstrap_seed,
                      "confidence": spec.gate.confidence, "method": "paired multinomial resampling of test examples"},
    }


def compare_models(y: np.ndarray, probs: dict[str, np.ndarray], groups: dict[str, np.ndarray], selected: str,
                   n_boot: int, seed: int, confidence: float, continuous: tuple[str, ...] = ()) -> dict[str, Any]:
    """Paired bootstrap of (selected - other) for every other model, metric and group, oriented so that
    positive means the selected model is better."""
    boot = paired_bootstrap(y, probs, groups, n_boot, seed, continuous)
    comparisons: dict[str, Any] = {}
    for other in probs:
        if other == selected:
            continue
        comparisons[other] = {}
        for metric in (*COUNT_METRICS, *continuous):
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            diff = sign * (boot.samples[selected][metric] - boot.samples[other][metric])
            comparisons[other][metric] = {}
            for gi, g in enumerate(boot.groups):
                col = diff[:, gi]
                finite = col[np.isfinite(col)]
                if len(finite) == 0:
                    continue
                lo, hi = interval(col, confidence)
                comparisons[other][metric][g] = {
                    "diff": float(np.mean(finite)), "lo": lo, "hi": hi,
                    "quantiles": [round(float(q), 6) for q in np.quantile(finite, QUANTILES)]}
    return comparisons


def _rel(probs: np.ndarray, y: np.ndarray) -> dict[str, list[float | None]]:
    b = ece_bins(probs, y) if len(y) else {"count": np.zeros(15), "confidence": np.full(15, np.nan),
                                           "accuracy": np.full(15, np.nan)}
    return {k: [None if not np.isfinite(v) else float(v) for v in b[k]] for k in ("count", "confidence", "accuracy")}


def _audit_summary(audit: dict[str, Any] | None) -> dict[str, Any] | None:
    if not audit:
        return None
    keep = ("total_rows", "usable_rows", "quarantined_rows", "blocking", "class_counts", "imbalance_ratio")
    summary = {k: audit[k] for k in keep if k in audit}
    summary["findings"] = [{k: f.get(k) for k in ("check", "severity", "count", "message")}
                           for f in audit.get("findings", [])][:20]
    return summary


def run_evaluate(ctx: RunContext, champion: ChampionScores | None = None) -> str:
    """Write evaluation/report.json and report.html; returns the JSON's URI."""
    from tl_core.evaluate.report import render_html

    info: dict[str, Any]
    if champion is None:
        df = load_examples(ctx)
        frames = {s: df[df["split"] == s].reset_index(drop=True) for s in ("calibration", "test")}
        info, champion = score_champion(ctx, frames)
    else:
        info = {"status": "ok", "version": champion.version, "etag": champion.pointer_etag, "reason": ""}
    report = build_report(ctx, champion, info)
    ctx.write_json("evaluation/report.json", report)
    ctx.store.put_bytes(ctx.key("evaluation/report.html"), render_html(report, None).encode())
    return ctx.uri("evaluation/report.json")


def current_evidence(ctx: RunContext) -> dict[str, Any]:
    """What a decision rests on, read afresh from the store (used again just before promotion)."""
    from tl_core.registry import Registry

    selected = ctx.read_json("candidate.json")["selected"]
    files = sorted(ctx.store.list(ctx.model_key(selected) + "/"))
    files = [k for k in files if "/resume/" not in k]
    if ctx.store.exists(ctx.key("export/model.onnx")):
        files.append(ctx.key("export/model.onnx"))
    pointer = Registry.for_spec(ctx.spec).champion()
    snapshot = ctx.read_json("snapshot/manifest.json") if ctx.store.exists(ctx.key("snapshot/manifest.json")) else {}
    return {
        "candidate_files": {k: ctx.store.etag(k) for k in files},
        "champion_version": pointer.version if pointer else None,
        "champion_etag": pointer.etag if pointer else None,
        "snapshot_hash": snapshot.get("content_hash"),
        "report_etag": ctx.store.etag(ctx.key("evaluation/report.json")),
    }


def current_evidence_hash(ctx: RunContext) -> str:
    return evidence_hash(current_evidence(ctx))


def run_gate(ctx: RunContext) -> dict[str, Any]:
    """Decide on the run's evaluation report; write gate/decision.json and re-render the HTML with it."""
    from tl_core.evaluate.report import render_html

    report = ctx.read_json("evaluation/report.json")
    evidence = current_evidence(ctx)
    decision = decide(report, ctx.spec.gate, evidence_hash(evidence))
    champion = report.get("champion", {})
    if champion.get("status") == "ok" and evidence["champion_etag"] != champion.get("etag"):
        decision.passed = False
        from tl_core.gate import Reason

        text = (f"the champion pointer changed after evaluation (evaluated {champion.get('version')}, "
                f"now {evidence['champion_version']}): FAIL")
        decision.reasons.append(Reason("evidence", "FAIL", text))
    payload = decision.to_json()
    payload.update(champion_version=champion.get("version"), champion_etag=champion.get("etag"),
                   candidate=report.get("candidate"), evidence=evidence,
                   summary_markdown=summary_markdown(decision, report))
    ctx.write_json("gate/decision.json", payload)
    ctx.store.put_bytes(ctx.key("evaluation/report.html"), render_html(report, payload).encode())
    return {"passed": decision.passed, "reasons": [r.text for r in decision.reasons if r.status != "PASS"] or
            [r.text for r in decision.reasons][:5], "evidence_hash": decision.evidence_hash,
            "bootstrap": decision.bootstrap, "champion_version": champion.get("version"),
            "champion_etag": champion.get("etag"), "candidate": report.get("candidate"),
            "summary_markdown": payload["summary_markdown"], "report_uri": ctx.uri("evaluation/report.html")}
