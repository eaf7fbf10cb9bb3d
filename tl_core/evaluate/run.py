"""`tl evaluate`: measure every model of a run on the same test examples (the gate step is tl_core.gate.step).

Report schema (``schema_version`` 2), evaluation/report.json (checked against
tl_core.artifacts.EvaluationReport before it is written and whenever it is read)::

  schema_version     2
  run_id, model      the run and the spec's model name
  labels             class names in logit order (spec.labels)
  primary_metric     spec.train.primary_metric
  test_size          labelled test examples scored (rows whose label is outside `labels` are counted in
                     unlabelled_test_rows and left out)
  candidate          the selected strategy (candidate.json "selected")
  slices             {slice name: test examples}; names "col=value" and "col1=v1&col2=v2" (spec.data.slice_crosses)
  champion           {status: ok | none | unreadable, version, etag, reason}
  models             {name: {role: candidate|strategy|champion|majority, strategy, temperature,
                             overall {n, accuracy, balanced_accuracy, macro_f1, auroc, log_loss, brier, ece, mce}
                                     (after temperature),
                             before_temperature {accuracy, log_loss, brier, ece, mce},
                             per_class {label: {precision, recall, f1, support}}, confusion [[int]],
                             slices {slice: metrics as in overall},
                             intervals {metric: {group: [lo, hi]}}   (bootstrap, groups "overall" + slices),
                             reliability {before, after: {count, confidence, accuracy} per ECE bin}}}
                     names: every trained strategy, "champion" (when re-scored) and "majority" (training prior)
  comparisons        {other model: {metric: {group: {diff, lo, hi, quantiles}}}}: candidate minus other, oriented so
                     that positive means the candidate is better (lower-is-better metrics are negated); quantiles
                     of the bootstrap difference at bootstrap.quantile_levels
  bootstrap          {n_boot, seed, confidence, method, quantile_levels, continuous_overall, continuous_slices}
  gate_policy        spec.gate as evaluated (margins drawn in the charts)
  curves             {strategy: [{epoch, train_loss, val_loss, val_metric}]} from models/<s>/train_report.json
  audit              summary of audit/report.json or null
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tl_core.artifacts import EvaluationReport, check_artifact
from tl_core.config import LOWER_IS_BETTER, GateSpec, ModelSpec
from tl_core.errors import NoSuchKey, TLError
from tl_core.evaluate.bootstrap import CONTINUOUS_METRICS, COUNT_METRICS, interval, paired_bootstrap
from tl_core.evaluate.calibration import fit_temperature
from tl_core.evaluate.metrics import ECE_BINS, all_metrics, ece_bins, rank_key, softmax
from tl_core.runs import RunContext

logger = logging.getLogger(__name__)
SCHEMA_VERSION = 2
# Bootstrap-difference quantiles kept in the report: 0.1% steps in the tails (where corrected one-sided
# p-values are read off), 1% steps in the middle.
QUANTILE_LEVELS = np.unique(np.round(np.concatenate(
    [np.linspace(0, 0.05, 51), np.linspace(0.05, 0.95, 91), np.linspace(0.95, 1, 51)]), 6))
CHEAP_CONTINUOUS = ("log_loss", "brier", "ece")
CHAMPION_SPLITS = ("calibration", "test")


@dataclass
class ChampionScores:
    """The registered champion's logits on this run's rows; rows in split/examples.parquet order per split."""

    version: str
    pointer_etag: str
    logits_by_split: dict[str, np.ndarray]  # "calibration" and "test", float (n_split, C)


class ChampionUnreadable(TLError):
    """The champion pointer exists but the champion could not be re-scored (the gate then FAILs)."""

    def __init__(self, message: str, version: str | None = None, etag: str | None = None) -> None:
        super().__init__(message)
        self.version = version
        self.etag = etag


def split_frames(df: pd.DataFrame, splits: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    return {s: df[df["split"] == s].reset_index(drop=True) for s in splits}


def slice_masks(df: pd.DataFrame, columns: list[str], crosses: list[list[str]]) -> dict[str, np.ndarray]:
    """Boolean masks for every value of every slice column ("col=value") and every present value pair of each
    cross ("col1=v1&col2=v2"). Columns absent from ``df`` give no slices (required_slices then fail the gate)."""
    masks: dict[str, np.ndarray] = {}
    for col in columns:
        if col not in df:
            logger.warning("slice column %r is not in the examples: no slices for it", col)
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


def _aligned(ctx: RunContext, strategy: str, split: str, ids: list[str], n_classes: int) -> np.ndarray:
    rel = f"models/{strategy}/logits/{split}.npz"
    try:
        z = ctx.read_npz(rel)
    except NoSuchKey:
        raise TLError(f"{ctx.uri(rel)} is missing: strategy {strategy!r} has no {split} logits") from None
    if "example_id" not in z or "logits" not in z:
        raise TLError(f"{ctx.uri(rel)}: expected arrays 'example_id' and 'logits', got {sorted(z)}")
    logits = z["logits"]
    if logits.ndim != 2 or logits.shape[1] != n_classes or len(logits) != len(z["example_id"]):
        raise TLError(f"{ctx.uri(rel)}: logits must be (n, {n_classes}) with one row per example_id, "
                      f"got shape {logits.shape} for {len(z['example_id'])} ids")
    pos = {str(e): i for i, e in enumerate(z["example_id"])}
    missing = [e for e in ids if e not in pos]
    if missing:
        raise TLError(f"{ctx.uri(rel)} lacks {len(missing)} of the {len(ids)} {split} examples, e.g. {missing[:5]}")
    return logits[[pos[e] for e in ids]].astype(np.float64)  # type: ignore[no-any-return]


def _check_champion(champion: ChampionScores, sizes: dict[str, int], n_classes: int) -> str | None:
    """Why the champion's logits cannot be compared, or None when they can."""
    for split in CHAMPION_SPLITS:
        z = champion.logits_by_split.get(split)
        if z is None:
            return f"no {split} logits (got splits {sorted(champion.logits_by_split)})"
        z = np.asarray(z)
        if z.shape != (sizes[split], n_classes):
            return f"{split} logits have shape {z.shape}, expected ({sizes[split]}, {n_classes})"
        if not np.isfinite(z).all():
            return f"{split} logits contain {int((~np.isfinite(z)).sum())} non-finite values"
    return None


def _labels(df: pd.DataFrame, index: dict[str, int]) -> np.ndarray:
    return df["label"].astype(str).map(index).fillna(-1).astype(int).to_numpy()  # type: ignore[no-any-return]


def _selected(ctx: RunContext) -> tuple[str, list[str]]:
    """The selected strategy and every trained one, from candidate.json."""
    candidate = ctx.read_json("candidate.json")
    selected = candidate.get("selected")
    strategies = list(candidate.get("strategies", {}))
    if selected not in strategies:
        raise TLError(f"{ctx.uri('candidate.json')}: selected strategy {selected!r} is not among the trained "
                      f"strategies {strategies}")
    return selected, strategies


def _model_logits(ctx: RunContext, frames: dict[str, pd.DataFrame], index: dict[str, int], selected: str,
                  strategies: list[str], champion: ChampionScores | None, champion_info: dict[str, Any],
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str], dict[str, Any]]:
    """(calibration, test) logits and the role of every model: the strategies, the champion when its logits fit
    (champion_info turns "unreadable" otherwise) and the majority-class predictor; and the champion_info."""
    cal, test = frames["calibration"], frames["test"]
    n_classes = len(index)
    logits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    roles: dict[str, str] = {}
    for strategy in strategies:
        logits[strategy] = (_aligned(ctx, strategy, "calibration", cal["example_id"].astype(str).tolist(), n_classes),
                            _aligned(ctx, strategy, "test", test["example_id"].astype(str).tolist(), n_classes))
        roles[strategy] = "candidate" if strategy == selected else "strategy"
    if champion is not None:
        problem = _check_champion(champion, {"calibration": len(cal), "test": len(test)}, n_classes)
        if problem:
            champion_info = {**champion_info, "status": "unreadable", "reason": f"champion logits: {problem}"}
        else:
            logits["champion"] = (np.asarray(champion.logits_by_split["calibration"], dtype=np.float64),
                                  np.asarray(champion.logits_by_split["test"], dtype=np.float64))
            roles["champion"] = "champion"
    # Majority-class predictor: the training split's class frequencies (add-one smoothed) for every row.
    y_train = _labels(frames["train"], index)
    freq = np.bincount(y_train[y_train >= 0], minlength=n_classes) + 1.0
    prior = np.log(freq / freq.sum())
    logits["majority"] = (np.tile(prior, (len(cal), 1)), np.tile(prior, (len(test), 1)))
    roles["majority"] = "majority"
    return logits, roles, champion_info


def _model_entry(name: str, role: str, is_strategy: bool, cal: tuple[np.ndarray, np.ndarray], logits_test: np.ndarray,
                 y: np.ndarray, labels: list[str], masks: dict[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
    """One model's report entry (intervals still empty) and its test probabilities after temperature.
    ``cal`` is (calibration logits, labels) of the labelled calibration rows."""
    temperature = fit_temperature(*cal) if name != "majority" else 1.0
    before, after = softmax(logits_test), softmax(logits_test, temperature)
    m_before = all_metrics(before, y, labels)
    overall = all_metrics(after, y, labels)
    entry = {
        "role": role, "strategy": name if is_strategy else None,
        "temperature": temperature,
        "overall": {k: v for k, v in overall.items() if k not in ("per_class", "confusion")},
        "before_temperature": {k: m_before.get(k) for k in ("accuracy", "log_loss", "brier", "ece", "mce")},
        "per_class": overall.get("per_class", {}), "confusion": overall.get("confusion", []),
        "slices": {s: {k: v for k, v in all_metrics(after[m], y[m], labels).items()
                       if k not in ("per_class", "confusion")} for s, m in masks.items()},
        "intervals": {},
        "reliability": {"before": _rel(before, y), "after": _rel(after, y)},
    }
    return entry, after


def _bootstrap(policy: GateSpec, y: np.ndarray, masks: dict[str, np.ndarray], probs: dict[str, np.ndarray],
               selected: str, models: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The comparisons (stored in ``models`` too: each model's intervals) and the report's bootstrap section."""
    requested = set(policy.margins) | set(policy.slice_metrics)
    continuous = tuple(m for m in CONTINUOUS_METRICS if m in CHEAP_CONTINUOUS or m in requested)
    slice_continuous = tuple(m for m in CONTINUOUS_METRICS if m in policy.slice_metrics)
    comparisons: dict[str, Any] = {}
    if len(y):
        groups = {"overall": np.ones(len(y), dtype=bool), **masks}
        comparisons, intervals = compare_models(y, probs, groups, selected, policy.n_bootstrap,
                                                policy.bootstrap_seed, policy.confidence, continuous,
                                                slice_continuous)
        for name, iv in intervals.items():
            models[name]["intervals"] = iv
    section = {"n_boot": policy.n_bootstrap, "seed": policy.bootstrap_seed, "confidence": policy.confidence,
               "method": "paired: one resample of the test examples per replicate, shared by all models",
               "quantile_levels": [float(q) for q in QUANTILE_LEVELS],
               "continuous_overall": list(continuous), "continuous_slices": list(slice_continuous)}
    return comparisons, section


def _curves(ctx: RunContext, strategies: list[str]) -> dict[str, list[dict[str, Any]]]:
    curves: dict[str, list[dict[str, Any]]] = {}
    for strategy in strategies:
        try:
            curves[strategy] = list(ctx.read_json(f"models/{strategy}/train_report.json").get("curves") or [])
        except NoSuchKey:
            curves[strategy] = []
    return curves


def build_report(ctx: RunContext, champion: ChampionScores | None, champion_info: dict[str, Any]) -> dict[str, Any]:
    """Every model of the run (and the champion) on the same labelled test rows; see the module docstring."""
    spec = ctx.spec
    labels = list(spec.labels)
    index = {n: i for i, n in enumerate(labels)}
    frames = split_frames(ctx.read_examples(), ("train", "calibration", "test"))
    test, cal = frames["test"], frames["calibration"]
    y_test, y_cal = _labels(test, index), _labels(cal, index)
    keep_t, keep_c = y_test >= 0, y_cal >= 0
    selected, strategies = _selected(ctx)
    logits, roles, champion_info = _model_logits(ctx, frames, index, selected, strategies, champion, champion_info)
    masks = slice_masks(test[keep_t].reset_index(drop=True), spec.data.slice_columns, spec.data.slice_crosses)
    y = y_test[keep_t]
    models: dict[str, Any] = {}
    probs_after: dict[str, np.ndarray] = {}
    for name, (lc, lt) in logits.items():
        models[name], probs_after[name] = _model_entry(name, roles[name], name in strategies,
                                                       (lc[keep_c], y_cal[keep_c]), lt[keep_t], y, labels, masks)
    comparisons, bootstrap = _bootstrap(spec.gate, y, masks, probs_after, selected, models)
    audit = ctx.read_json("audit/report.json") if ctx.store.exists(ctx.key("audit/report.json")) else None
    return {
        "schema_version": SCHEMA_VERSION, "run_id": ctx.run_id, "model": spec.name, "labels": labels,
        "primary_metric": spec.train.primary_metric, "test_size": int(len(y)),
        "unlabelled_test_rows": int((~keep_t).sum()), "candidate": selected,
        "slices": {s: int(m.sum()) for s, m in masks.items()}, "champion": champion_info, "models": models,
        "comparisons": comparisons, "curves": _curves(ctx, strategies),
        "audit": _audit_summary(audit, _label_issues(ctx)),
        "gate_policy": spec.gate.model_dump(mode="json"), "bootstrap": bootstrap,
        "provenance": provenance(spec.for_model(selected)[0]),
        "baseline": _baseline(ctx.read_json("candidate.json"), spec.train.primary_metric),
        "backbones": _backbones(ctx, models) if spec.candidates else None,
    }


def _baseline(candidate: dict[str, Any], metric: str) -> str | None:
    """The ladder's frozen baseline: the best frozen model of any backbone by validation (ties: listed first)."""
    frozen = [m for m, v in (candidate.get("strategies") or {}).items() if m.partition("-")[0] == "frozen"]
    if not frozen:
        return None
    values = candidate["strategies"]

    def rank(m: str) -> float:  # a model without a validation score ranks last
        value = (values[m] or {}).get("val_metric") if isinstance(values[m], dict) else None
        return round(rank_key(metric, float(value)), 6) if isinstance(value, int | float) else float("inf")

    return min(frozen, key=lambda m: (rank(m), frozen.index(m)))


def _backbones(ctx: RunContext, models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per backbone: measured cost and budget verdict (candidate.json), licence, and its best trained model by
    validation with that model's test metric and interval."""
    candidate = ctx.read_json("candidate.json")
    spec, metric = ctx.spec, ctx.spec.train.primary_metric
    scores = candidate.get("strategies") or {}
    out = {}
    for name, info in (candidate.get("backbones") or {}).items():
        own = [m for m, v in scores.items() if v.get("backbone") == name]
        best = min(own, key=lambda m: rank_key(metric, float(scores[m]["val_metric"]))) if own else None
        entry = models.get(best or "") or {}
        source = spec.backbone if name == "default" else next(c.backbone for c in spec.candidates if c.name == name)
        out[name] = {**info, "licence": provenance(spec.model_copy(update={"backbone": source}))["licence"],
                     "models": own, "best": best, "val_metric": scores[best]["val_metric"] if best else None,
                     "test_metric": (entry.get("overall") or {}).get(metric),
                     "test_interval": ((entry.get("intervals") or {}).get(metric) or {}).get("overall"),
                     "selected": candidate.get("selected") in own}
    return out


def provenance(spec: ModelSpec) -> dict[str, Any]:
    """The source checkpoint the candidate was trained from (id, revision, where its weights came from, licence
    and where it was read, weights fingerprint) and the spec's licence override, for the gate and the registry."""
    from tl_core.models.weights import source_provenance

    return {**source_provenance(spec.backbone), "licence_override": spec.gate.licence_override}


def compare_models(y: np.ndarray, probs: dict[str, np.ndarray], groups: dict[str, np.ndarray], selected: str,
                   n_boot: int, seed: int, confidence: float, continuous: tuple[str, ...] = (),
                   slice_continuous: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """Paired bootstrap of (selected - other) for every other model, metric and group, oriented so that positive
    means the selected model is better; plus every model's own interval per metric and group.

    ``continuous`` metrics are bootstrapped overall, ``slice_continuous`` ones for every group as well.
    Returns (comparisons, intervals) as stored in the report.
    """
    if selected not in probs:
        raise ValueError(f"selected model {selected!r} is not among the compared models {list(probs)}")
    both = tuple(dict.fromkeys((*continuous, *slice_continuous)))
    cont_groups = tuple(groups) if slice_continuous else ("overall",)
    boot = paired_bootstrap(y, probs, groups, n_boot, seed, both, cont_groups if both else ("overall",))
    metrics = (*COUNT_METRICS, *both)
    gi_all = list(enumerate(boot.groups))
    comparisons: dict[str, Any] = {}
    intervals: dict[str, Any] = {m: {} for m in probs}
    for name in probs:
        for metric in metrics:
            per_group = {}
            for gi, g in gi_all:
                if metric in continuous and metric not in slice_continuous and g != "overall":
                    continue
                col = boot.samples[name][metric][:, gi]
                if np.isfinite(col).any():
                    per_group[g] = list(interval(col, confidence))
            intervals[name][metric] = per_group
    for other in probs:
        if other == selected:
            continue
        comparisons[other] = {}
        for metric in metrics:
            sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
            diff = sign * (boot.samples[selected][metric] - boot.samples[other][metric])
            comparisons[other][metric] = {}
            for gi, g in gi_all:
                col = diff[:, gi]
                finite = col[np.isfinite(col)]
                if len(finite) == 0:
                    continue
                lo, hi = interval(col, confidence)
                comparisons[other][metric][g] = {
                    "diff": float(np.mean(finite)), "lo": lo, "hi": hi,
                    "quantiles": [round(float(q), 6) for q in np.quantile(finite, QUANTILE_LEVELS)]}
    return comparisons, intervals


def report_from_probs(y: np.ndarray, probs: dict[str, np.ndarray], slices: dict[str, np.ndarray], candidate: str,
                      strategy: str, n_boot: int, seed: int, confidence: float = 0.95) -> dict[str, Any]:
    """The parts of an evaluation report that the gate reads, from test-set probabilities of named models
    (``champion``, ``frozen`` and ``majority`` are the reference names): for simulations and bench/gate_quality.py,
    where models are scored outside a run."""
    groups = {"overall": np.ones(len(y), bool), **slices}
    comparisons, intervals = compare_models(y, probs, groups, candidate, n_boot, seed, confidence, ("ece",))
    labels = [str(i) for i in range(next(iter(probs.values())).shape[1])]
    models = {name: {"strategy": strategy if name == candidate else name, "overall": all_metrics(p, y, labels),
                     "intervals": intervals[name]} for name, p in probs.items()}
    champion = ({"status": "ok", "version": "champion", "etag": None} if "champion" in probs else
                {"status": "none", "version": None, "etag": None})
    return {"schema_version": SCHEMA_VERSION, "test_size": len(y), "candidate": candidate, "primary_metric": "macro_f1",
            "champion": champion, "slices": {k: int(v.sum()) for k, v in slices.items()}, "models": models,
            "comparisons": comparisons,
            "bootstrap": {"confidence": confidence, "quantile_levels": [float(q) for q in QUANTILE_LEVELS]}}


def _rel(probs: np.ndarray, y: np.ndarray) -> dict[str, list[float | None]]:
    if len(y):
        b = ece_bins(probs, y)
    else:
        b = {"count": np.zeros(ECE_BINS), "confidence": np.full(ECE_BINS, np.nan),
             "accuracy": np.full(ECE_BINS, np.nan)}
    return {k: [None if not np.isfinite(v) else float(v) for v in b[k]] for k in ("count", "confidence", "accuracy")}


def _label_issues(ctx: RunContext) -> dict[str, Any] | None:
    """The run's label-issue finding (written by the first train task), when there is one."""
    key = ctx.key("audit/label_issues.json")
    return ctx.read_json("audit/label_issues.json") if ctx.store.exists(key) else None


def _audit_summary(audit: dict[str, Any] | None, label_issues: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The audit's facts and findings for the evidence report, with the label-issue finding and its top examples
    (given and suspected labels) when the run has one."""
    if not audit:
        return None
    keep = ("total_rows", "usable_rows", "quarantined_rows", "blocking", "class_counts", "imbalance_ratio")
    summary = {k: audit[k] for k in keep if k in audit}
    findings = list(audit.get("findings", []))
    finding = label_issues
    if finding and finding.get("check") == "label_issues":
        findings.insert(0, finding)
        summary["label_issue_examples"] = [{k: t.get(k) for k in ("example_id", "given", "suspected")}
                                           for t in finding.get("top_examples", [])][:10]
    summary["findings"] = [{k: f.get(k) for k in ("check", "severity", "count", "message")} for f in findings][:20]
    return summary


def run_evaluate(ctx: RunContext, champion: ChampionScores | ChampionUnreadable | None) -> str:
    """Write evaluation/report.json and report.html; returns the JSON's URI.

    ``champion`` is what the champion lookup found (tl_core.export.champion.champion_for: the serving path
    re-scores the registered champion; evaluation itself never imports the registry or serving): its scores,
    None when there is no champion yet, or ChampionUnreadable, which is recorded as "unreadable" with the
    reason, and the gate FAILs on it.
    """
    from tl_core.evaluate.report import render_html

    info: dict[str, Any]
    if isinstance(champion, ChampionUnreadable):
        logger.warning("%s", champion)
        info = {"status": "unreadable", "version": champion.version, "etag": champion.etag, "reason": str(champion)}
        champion = None
    elif champion is None:
        info = {"status": "none", "version": None, "etag": None, "reason": "no champion yet"}
    else:
        info = {"status": "ok", "version": champion.version, "etag": champion.pointer_etag, "reason": ""}
    report = build_report(ctx, champion, info)
    check_artifact(EvaluationReport, report, ctx.uri("evaluation/report.json"))  # the schema, before writing
    ctx.write_json("evaluation/report.json", report)
    ctx.store.put_bytes(ctx.key("evaluation/report.html"), render_html(report, None).encode())
    return ctx.uri("evaluation/report.json")
