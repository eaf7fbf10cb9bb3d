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
  champion           {status: ok | none | unreadable | incomparable, version, etag, reason}
  label_space        the champion's class names vs `labels`, aligned BY NAME (null without a re-scored champion):
                     {status: same | reordered | added | incomparable, champion_labels, candidate_labels, shared,
                      added, removed, reason, shared_test_rows, shared_calibration_rows, shared_slices,
                      candidate_on_shared, added_classes {label: {test_rows, calibration_rows, precision, recall,
                      f1, support}}}; see "The champion's label space" below
  models             {name: {role: candidate|strategy|champion|majority, strategy, temperature,
                             overall {n, accuracy, balanced_accuracy, macro_f1, auroc, log_loss, brier, ece, mce}
                                     (after temperature),
                             before_temperature {accuracy, log_loss, brier, ece, mce},
                             per_class {label: {precision, recall, f1, support}}, confusion [[int]],
                             slices {slice: metrics as in overall},
                             intervals {metric: {group: [lo, hi]}}   (bootstrap, groups "overall" + slices),
                             reliability {before, after: {count, confidence, accuracy} per ECE bin}}}
                     names: every trained strategy, "champion" (when re-scored) and "majority" (training prior)
                     temperature: a trained model's own, fitted once by training on the calibration split and
                     stored in its model_config.json (export folds the same number); the champion's is fitted on
                     this run's calibration rows (it is compared as calibrated on today's data); majority 1.0
  comparisons        {other model: {metric: {group: {diff, lo, hi, quantiles}}}}: candidate minus other, oriented so
                     that positive means the candidate is better (lower-is-better metrics are negated); quantiles
                     of the bootstrap difference at bootstrap.quantile_levels
  bootstrap          {n_boot, seed, confidence, method, quantile_levels, continuous_overall, continuous_slices}
  gate_policy        spec.gate as evaluated (margins drawn in the charts)
  curves             {strategy: [{epoch, train_loss, val_loss, val_metric}]} from models/<s>/train_report.json
  audit              summary of audit/report.json or null

The champion's label space. The champion's logit columns are its own ``labels`` (its model_config.json, carried by
ChampionScores), never this spec's order; tl_core.evaluate.label_space lines them up by name:

* same / reordered: the champion's columns are permuted into this spec's order and it joins the one paired bootstrap
  of every model on every row, exactly as with an unchanged order (same seed: identical numbers);
* added (this spec has every champion class and more): every other model (strategies, majority) is still evaluated
  on all rows in the one paired bootstrap; the champion comparison is a separate paired bootstrap (same seed) of the
  pair (candidate, champion) on the rows whose label is a shared class, both models' logits restricted to the shared
  columns and their temperatures refitted on the shared calibration rows. models.champion (metrics, intervals) and
  comparisons.champion come from it; label_space gives its rows (shared_test_rows, shared_calibration_rows,
  shared_slices, which the gate uses for power and min_slice_size), the candidate's metrics there
  (candidate_on_shared, which the gate's champion calibration check uses) and the added classes on their own
  (their rows, the candidate's precision, recall, f1 and support on all rows);
* incomparable (a champion class is missing here: removed or renamed): the champion is not scored; champion.status
  is "incomparable" and the gate FAILs, naming the classes and how to replace the champion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tl_core.artifacts import (
    AuditFinding,
    AuditReport,
    EvaluationReport,
    LabelIssues,
    ModelConfig,
    Selection,
    TrainReport,
    check_artifact,
)
from tl_core.config import LOWER_IS_BETTER, GateSpec, ModelSpec
from tl_core.errors import NoSuchKey, TLError
from tl_core.evaluate.bootstrap import CONTINUOUS_METRICS, COUNT_METRICS, interval, paired_bootstrap
from tl_core.evaluate.calibration import fit_temperature
from tl_core.evaluate.label_space import LabelSpace
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
    """The registered champion's logits on this run's rows; rows in split/examples.parquet order per split, columns
    in the champion's own class order ``labels`` (aligned to this spec's by name in build_report)."""

    version: str
    pointer_etag: str
    logits_by_split: dict[str, np.ndarray]  # "calibration" and "test", float (n_split, len(labels))
    labels: list[str]  # the champion's class names in its logit order (its model_config.json)


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


def _check_champion(champion: ChampionScores, sizes: dict[str, int]) -> str | None:
    """Why the champion's logits cannot be read (against its own class names), or None when they can."""
    n_classes = len(champion.labels)
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
    candidate = ctx.read(Selection)
    selected = candidate.selected
    strategies = list(candidate.strategies)
    if selected not in strategies:
        raise TLError(f"{ctx.uri('candidate.json')}: selected strategy {selected!r} is not among the trained "
                      f"strategies {strategies}")
    return selected, strategies


def _align_champion(champion: ChampionScores | None, info: dict[str, Any], labels: list[str], sizes: dict[str, int],
                    ) -> tuple[dict[str, Any], LabelSpace | None, tuple[np.ndarray, np.ndarray] | None]:
    """(champion info, label space, champion (calibration, test) logits with the shared columns in this spec's
    order). Unreadable logits turn the info "unreadable", a missing champion class "incomparable" (no logits)."""
    if champion is None:
        return info, None, None
    problem = _check_champion(champion, sizes)
    try:
        space = None if problem else LabelSpace.of(list(champion.labels), labels)
    except ValueError as exc:
        problem = str(exc)
    if problem or space is None:
        return {**info, "status": "unreadable", "reason": f"champion logits: {problem}"}, None, None
    if space.status == "incomparable":
        return {**info, "status": "incomparable", "reason": space.reason(champion.version)}, space, None
    cols = space.champion_columns()  # by name: champion column of each shared class, in this spec's order
    cal, test = (np.asarray(champion.logits_by_split[s], dtype=np.float64)[:, cols] for s in CHAMPION_SPLITS)
    return info, space, (cal, test)


def _model_logits(ctx: RunContext, frames: dict[str, pd.DataFrame], index: dict[str, int], selected: str,
                  strategies: list[str], champion: tuple[np.ndarray, np.ndarray] | None,
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, str]]:
    """(calibration, test) logits and the role of every model on all rows: the strategies, the champion when given
    (its columns already aligned to this spec's labels) and the majority-class predictor."""
    cal, test = frames["calibration"], frames["test"]
    n_classes = len(index)
    logits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    roles: dict[str, str] = {}
    for strategy in strategies:
        logits[strategy] = (_aligned(ctx, strategy, "calibration", cal["example_id"].astype(str).tolist(), n_classes),
                            _aligned(ctx, strategy, "test", test["example_id"].astype(str).tolist(), n_classes))
        roles[strategy] = "candidate" if strategy == selected else "strategy"
    if champion is not None:
        logits["champion"], roles["champion"] = champion, "champion"
    # Majority-class predictor: the training split's class frequencies (add-one smoothed) for every row.
    y_train = _labels(frames["train"], index)
    freq = np.bincount(y_train[y_train >= 0], minlength=n_classes) + 1.0
    prior = np.log(freq / freq.sum())
    logits["majority"] = (np.tile(prior, (len(cal), 1)), np.tile(prior, (len(test), 1)))
    roles["majority"] = "majority"
    return logits, roles


def _model_entry(name: str, role: str, is_strategy: bool, cal: tuple[np.ndarray, np.ndarray], logits_test: np.ndarray,
                 y: np.ndarray, labels: list[str], masks: dict[str, np.ndarray],
                 temperature: float | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """One model's report entry (intervals still empty) and its test probabilities after temperature.
    ``temperature``: the model's own (fitted once by training, stored in its config); None fits one on ``cal``,
    (calibration logits, labels) of the labelled calibration rows: the champion, re-calibrated on this run's rows,
    and models trained before the temperature was stored."""
    if temperature is None:
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
    continuous, slice_continuous = _continuous(policy)
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


def _continuous(policy: GateSpec) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The continuous metrics bootstrapped overall, and those bootstrapped per slice too."""
    requested = set(policy.margins) | set(policy.slice_metrics)
    continuous = tuple(m for m in CONTINUOUS_METRICS if m in CHEAP_CONTINUOUS or m in requested)
    return continuous, tuple(m for m in CONTINUOUS_METRICS if m in policy.slice_metrics)


@dataclass
class _Rows:
    """The labelled calibration and test rows as class indices of this spec (-1: unknown), and the test slices."""

    y_cal: np.ndarray
    y_test: np.ndarray
    masks: dict[str, np.ndarray]


def _shared_champion(policy: GateSpec, space: LabelSpace, rows: _Rows, candidate: tuple[np.ndarray, np.ndarray],
                     champion: tuple[np.ndarray, np.ndarray], selected: str,
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Classes were added since the champion: the pair (candidate, champion) on the rows whose label is a shared
    class, both restricted to the shared columns, in its own paired bootstrap (the policy's seed).

    ``candidate`` / ``champion``: (calibration, test) logits of the labelled rows, champion columns = space.shared.
    Returns (the champion's model entry with its intervals, comparisons["champion"], label_space row facts)."""
    to_shared = np.full(len(space.candidate), -1)
    to_shared[space.candidate_columns()] = np.arange(len(space.shared))
    on_c, on_t = to_shared[rows.y_cal] >= 0, to_shared[rows.y_test] >= 0
    y_c, y = to_shared[rows.y_cal[on_c]], to_shared[rows.y_test[on_t]]
    cols = space.candidate_columns()
    masks = {s: m[on_t] for s, m in rows.masks.items()}
    entries, probs = {}, {}
    for name, (lc, lt), own in ((selected, candidate, cols), ("champion", champion, slice(None))):
        role = "candidate" if name == selected else "champion"
        entries[name], probs[name] = _model_entry(name, role, False, (lc[on_c][:, own], y_c), lt[on_t][:, own], y,
                                                  space.shared, masks)
    comparisons: dict[str, Any] = {}
    if len(y):
        continuous, slice_continuous = _continuous(policy)
        comparisons, intervals = compare_models(y, probs, {"overall": np.ones(len(y), dtype=bool), **masks},
                                                selected, policy.n_bootstrap, policy.bootstrap_seed,
                                                policy.confidence, continuous, slice_continuous)
        entries["champion"]["intervals"] = intervals["champion"]
    facts = {"shared_test_rows": int(len(y)), "shared_calibration_rows": int(len(y_c)),
             "shared_slices": {s: int(m.sum()) for s, m in masks.items()},
             "candidate_on_shared": entries[selected]["overall"]}
    return entries["champion"], comparisons.get("champion", {}), facts


def _label_space(space: LabelSpace | None, version: str | None, rows: _Rows, candidate: dict[str, Any],
                 facts: dict[str, Any]) -> dict[str, Any] | None:
    """The report's label_space section (None without a champion to compare). ``candidate``: its model entry on
    all rows (the added classes' metrics); ``facts``: the shared rows of an "added" comparison."""
    if space is None:
        return None
    section: dict[str, Any] = {
        "status": space.status, "champion_labels": list(space.champion), "candidate_labels": list(space.candidate),
        "shared": space.shared, "added": space.added, "removed": space.removed, "reason": space.reason(version)}
    if space.status in ("same", "reordered"):  # every labelled row
        section.update(shared_test_rows=int(len(rows.y_test)), shared_calibration_rows=int(len(rows.y_cal)))
    section.update(facts)
    per_class = candidate.get("per_class") or {}
    section["added_classes"] = {
        name: {"test_rows": int((rows.y_test == i).sum()), "calibration_rows": int((rows.y_cal == i).sum()),
               **{k: (per_class.get(name) or {}).get(k, 0) for k in ("precision", "recall", "f1", "support")}}
        for i, name in enumerate(space.candidate) if name in space.added}
    return section


def _curves(ctx: RunContext, strategies: list[str]) -> dict[str, list[dict[str, Any]]]:
    curves: dict[str, list[dict[str, Any]]] = {}
    for strategy in strategies:
        try:
            curves[strategy] = [c.model_dump() for c in ctx.read(TrainReport, strategy).curves]
        except NoSuchKey:
            curves[strategy] = []
    return curves


def _stored_temperatures(ctx: RunContext, strategies: list[str]) -> dict[str, float | None]:
    """Each trained model's temperature as training stored it in its config (None: not stored, fitted here)."""
    configs = {s: ctx.read_optional(ModelConfig, s) for s in strategies}
    return {s: c.temperature if c is not None else None for s, c in configs.items()}


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
    champion_info, space, aligned = _align_champion(champion, champion_info, labels,
                                                    {"calibration": len(cal), "test": len(test)})
    # Same classes (any order): the champion joins the one bootstrap of every model on every row.
    joint = aligned if space is not None and space.status in ("same", "reordered") else None
    logits, roles = _model_logits(ctx, frames, index, selected, strategies, joint)
    stored = _stored_temperatures(ctx, strategies)
    masks = slice_masks(test[keep_t].reset_index(drop=True), spec.data.slice_columns, spec.data.slice_crosses)
    y = y_test[keep_t]
    rows = _Rows(y_cal[keep_c], y, masks)
    models: dict[str, Any] = {}
    probs_after: dict[str, np.ndarray] = {}
    for name, (lc, lt) in logits.items():
        models[name], probs_after[name] = _model_entry(name, roles[name], name in strategies,
                                                       (lc[keep_c], y_cal[keep_c]), lt[keep_t], y, labels, masks,
                                                       stored.get(name))
    comparisons, bootstrap = _bootstrap(spec.gate, y, masks, probs_after, selected, models)
    facts: dict[str, Any] = {}
    if space is not None and space.status == "added" and aligned is not None:  # its own bootstrap, shared rows
        cand = logits[selected]
        models["champion"], versus, facts = _shared_champion(
            spec.gate, space, rows, (cand[0][keep_c], cand[1][keep_t]), (aligned[0][keep_c], aligned[1][keep_t]),
            selected)
        if versus:
            comparisons["champion"] = versus
    audit = ctx.read_optional(AuditReport)
    return {
        "schema_version": SCHEMA_VERSION, "run_id": ctx.run_id, "model": spec.name, "labels": labels,
        "primary_metric": spec.train.primary_metric, "test_size": int(len(y)),
        "unlabelled_test_rows": int((~keep_t).sum()), "candidate": selected,
        "slices": {s: int(m.sum()) for s, m in masks.items()}, "champion": champion_info, "models": models,
        "label_space": _label_space(space, champion_info.get("version"), rows, models[selected], facts),
        "comparisons": comparisons, "curves": _curves(ctx, strategies),
        "audit": _audit_summary(audit, _label_issues(ctx)),
        "gate_policy": spec.gate.model_dump(mode="json"), "bootstrap": bootstrap,
        "provenance": provenance(spec.for_model(selected)[0]),
        "baseline": _baseline(ctx.read(Selection), spec.train.primary_metric),
        "backbones": _backbones(ctx, models) if spec.candidates else None,
    }


def _baseline(candidate: Selection, metric: str) -> str | None:
    """The ladder's frozen baseline: the best frozen model of any backbone by validation (ties: listed first)."""
    frozen = [m for m in candidate.strategies if m.partition("-")[0] == "frozen"]
    if not frozen:
        return None

    def rank(m: str) -> float:  # a model without a finite validation score ranks last
        value = rank_key(metric, candidate.strategies[m].val_metric)
        return round(value, 6) if np.isfinite(value) else float("inf")

    return min(frozen, key=lambda m: (rank(m), frozen.index(m)))


def _backbones(ctx: RunContext, models: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per backbone: measured cost and budget verdict (candidate.json), licence, and its best trained model by
    validation with that model's test metric and interval."""
    candidate = ctx.read(Selection)
    spec, metric = ctx.spec, ctx.spec.train.primary_metric
    scores = candidate.strategies
    out = {}
    for name, info in (candidate.backbones or {}).items():
        own = [m for m, v in scores.items() if v.backbone == name]
        best = min(own, key=lambda m: rank_key(metric, scores[m].val_metric)) if own else None
        entry = models.get(best or "") or {}
        source = spec.backbone if name == "default" else next(c.backbone for c in spec.candidates if c.name == name)
        out[name] = {**info.model_dump(mode="json"),
                     "licence": provenance(spec.model_copy(update={"backbone": source}))["licence"],
                     "models": own, "best": best, "val_metric": scores[best].val_metric if best else None,
                     "test_metric": (entry.get("overall") or {}).get(metric),
                     "test_interval": ((entry.get("intervals") or {}).get(metric) or {}).get("overall"),
                     "selected": candidate.selected in own}
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


def _label_issues(ctx: RunContext) -> LabelIssues | None:
    """The run's label-issue finding (written by the first train task), when there is one."""
    return ctx.read_optional(LabelIssues)


def _audit_summary(audit: AuditReport | None, label_issues: LabelIssues | None = None) -> dict[str, Any] | None:
    """The audit's facts and findings for the evidence report, with the label-issue finding and its top examples
    (given and suspected labels) when the run has one."""
    if audit is None:
        return None
    summary: dict[str, Any] = audit.model_dump(mode="json", include={
        "total_rows", "usable_rows", "quarantined_rows", "blocking", "class_counts", "imbalance_ratio"})
    findings: list[AuditFinding | LabelIssues] = [*audit.findings]
    if label_issues is not None:
        findings.insert(0, label_issues)
        summary["label_issue_examples"] = [t.model_dump(include={"example_id", "given", "suspected"})
                                           for t in label_issues.top_examples][:10]
    # Every finding the audit made (about 20 checks, each once): the approver sees the ones that matter first.
    rank = {"blocking": 0, "warning": 1}
    findings.sort(key=lambda f: rank.get(f.severity, 2))
    summary["findings"] = [{"check": f.check, "severity": f.severity, "count": f.count, "message": f.message}
                           for f in findings]
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
    ctx.write(check_artifact(EvaluationReport, report, ctx.uri("evaluation/report.json")))  # checked, then written
    ctx.store.put_bytes(ctx.key("evaluation/report.html"), render_html(report, None).encode())
    return ctx.uri("evaluation/report.json")
