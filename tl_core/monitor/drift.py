"""Drift and label-free performance of one scored partition, against the champion's training snapshot.

Measured (``measure``), then decided (``decide_alerts``, a pure function of the report and the spec's thresholds):

* input drift: MMD permutation test on the frozen backbone's embeddings (the run's backbone, through the embedding
  cache of tl_core.train.frozen) of up to ``monitor.embedding_max_rows`` rows of the champion run's train split
  vs as many rows sampled from the partition;
* prediction shift: PSI and a chi-square test of the partition's predicted-class counts vs the champion's
  predictions on its own test split (the version's ``models/<strategy>/logits/test.npz``), both keyed by class name:
  the reference's columns are the champion's own class names (its model_config.json, else its spec.json; never
  the current spec's order), the partition's counts are of its ``prediction`` names, and a name outside the
  champion's classes is refused (those scores came from another model);
* label-free accuracy: CBPE (mean top calibrated probability; the served model is temperature-scaled), overall and
  per slice, vs the champion's test accuracy (per slice where its evaluation report has the slice).

Where the champion comes from: the registry pointer gives the version; the version's manifest names its run
(``run_id``) and strategy; the version's ``spec.json`` is the spec the run was trained with (its backbone); the
run's ``split/examples.parquet`` under ``<store>/runs/<model>/<run_id>/`` is the training snapshot.
Output: ``scores/<model>/dt=<day>/drift/report.json`` (tl_core.artifacts.DriftReport) and ``report.html``.

A partition with fewer than ``monitor.min_rows`` scored rows is measured and reported, but its overall checks (input
drift, prediction shift, overall accuracy) raise no alert: the report's ``not_judged`` says "N rows, below
monitor.min_rows M: not judged" (slices keep ``monitor.min_slice_rows``). A partition scored as 0 rows is not read
at all: its report has 0 rows, an unavailable input-drift section and no alerts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tl_core.artifacts import (
    DRIFT_SCHEMA_VERSION,
    A,
    DriftReport,
    EvaluationReport,
    ModelConfig,
    ParityReport,
    check_artifact,
    parse_artifact,
)
from tl_core.config import ModelSpec, MonitorSpec, parse_spec
from tl_core.errors import DataError, MonitorError, NoSuchKey, SpecError
from tl_core.monitor import stats
from tl_core.monitor.score import PREDICTIONS, partition_files, read_record, scores_prefix
from tl_core.registry import Registry
from tl_core.runs import RunContext
from tl_core.store import ObjectStore, join_key, local_file, open_store

logger = logging.getLogger(__name__)


@dataclass
class ChampionReference:
    """What the drift tests compare a partition with, all read from the champion's registered version."""

    version: str
    run_id: str
    labels: list[str]
    test_accuracy: float | None
    slice_accuracy: dict[str, float]
    test_counts: np.ndarray
    test_expected_accuracy: float | None
    run_spec: ModelSpec


def _version_file(path: Path, model: type[A]) -> A | None:
    """A typed file of the champion's version folder (None when the version has none)."""
    return parse_artifact(model, path.read_bytes(), str(path)) if path.is_file() else None


def _bound_spec(path: Path) -> dict[str, Any]:
    """The version's spec.json (the spec its run was bound to; validated by parse_spec), {} when absent."""
    value = json.loads(path.read_text()) if path.is_file() else {}
    return value if isinstance(value, dict) else {}


def _run_spec(spec: ModelSpec, root: Path, version: str) -> tuple[ModelSpec, bool]:
    """(the spec the champion was trained with, whether it came from the version's spec.json) - the current spec
    when the version has none or it does not validate."""
    bound = _bound_spec(root / "spec.json")
    bound.pop("fingerprint", None)
    if not bound:
        return spec, False
    try:
        return parse_spec(bound, f"champion {version} spec.json"), True
    except SpecError as exc:
        logger.warning("champion %s: its spec.json does not validate (%s); using the current spec", version, exc)
        return spec, False


def _reference_labels(classes: list[str] | None, run_spec: ModelSpec | None, version: str, width: int) -> list[str]:
    """The champion's class names in its logit order: its manifest or model_config.json, else its own spec.json
    (never the current spec: its order may have changed since); MonitorError when none says, or the width
    differs."""
    labels = [str(n) for n in (classes or (run_spec.labels if run_spec is not None else []))]
    if not labels:
        raise MonitorError(f"champion {version}: neither its model_config.json nor its spec.json names its classes, "
                           "so its reference predictions cannot be keyed by class name")
    if width != len(labels):
        raise MonitorError(f"champion {version}: its test logits have {width} columns but its classes are "
                           f"{labels} ({len(labels)}); the version's files disagree")
    return labels


def load_reference(spec: ModelSpec, registry: Registry, version: str) -> ChampionReference:
    """The champion's test predictions (keyed by its own class names), test accuracy (overall, per slice) and
    training spec."""
    manifest = registry.manifest(version)
    root = registry.load_version(version)
    strategy = manifest.strategy
    logits_file = root / "models" / strategy / "logits" / "test.npz"
    if not logits_file.is_file():
        raise MonitorError(f"champion {version}: models/{strategy}/logits/test.npz is missing from the version, so "
                           "there are no reference predictions to compare the partition's with")
    with np.load(logits_file, allow_pickle=False) as z:
        logits = z["logits"].astype(np.float64)
    config = _version_file(root / "models" / strategy / "model_config.json", ModelConfig)
    run_spec, own = _run_spec(spec, root, version)
    labels = _reference_labels(manifest.classes or (config.labels if config is not None else None),
                               run_spec if own else None, version, logits.shape[1])
    parity = _version_file(root / "export" / "parity.json", ParityReport)
    temperature = manifest.temperature or (parity.temperature if parity is not None else None) or 1.0
    z_t = logits / temperature
    probs = np.exp(z_t - z_t.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    report = _version_file(root / "evaluation" / "report.json", EvaluationReport)
    evaluated = report.models.get(strategy) if report is not None else None
    slice_acc = {s: float(value) for s, m in (evaluated.slices if evaluated is not None else {}).items()
                 if isinstance(value := m.get("accuracy"), int | float)}
    accuracy = manifest.metrics.get("accuracy")
    return ChampionReference(
        version=version, run_id=manifest.run_id, labels=labels,
        test_accuracy=float(accuracy) if isinstance(accuracy, int | float) else None, slice_accuracy=slice_acc,
        test_counts=np.bincount(probs.argmax(1), minlength=len(labels)) if len(probs) else np.zeros(len(labels)),
        test_expected_accuracy=stats.expected_accuracy(probs) if len(probs) else None, run_spec=run_spec)


@dataclass
class PredictionTally:
    """Streaming sums over predictions.parquet: class counts by name, top-probability sums, overall and per slice."""

    counts: dict[str, int]
    rows: int = 0
    top_sum: float = 0.0
    slices: dict[str, list[float]] | None = None  # "col=value" -> [rows, top-probability sum]


def tally_predictions(store: ObjectStore, key: str, labels: list[str], slice_columns: list[str],
                      chunk_rows: int) -> PredictionTally:
    """Read the predictions in chunks (bounded memory) and sum what the prediction tests need. Predicted classes are
    counted by name; a name outside ``labels`` (the champion's classes) is a MonitorError naming it."""
    tally = PredictionTally({name: 0 for name in labels}, slices={})
    with local_file(store, key) as path:
        for batch in pq.ParquetFile(path).iter_batches(chunk_rows, columns=["prediction", "confidence",
                                                                            *slice_columns]):
            df = batch.to_pandas()
            for name, n in df["prediction"].astype(str).value_counts().items():
                if name not in tally.counts:
                    raise MonitorError(f"{store.url(key)} predicts class {name!r}, which is not among the champion's "
                                       f"classes {labels}: these scores were made by another model; score the "
                                       "partition again with the champion (`tl score`)")
                tally.counts[str(name)] += int(n)
            top = df["confidence"].to_numpy(np.float64)
            tally.rows += len(df)
            tally.top_sum += float(top.sum())
            for col in slice_columns:
                for value, part in pd.Series(top).groupby(df[col].astype(str).to_numpy()):
                    entry = tally.slices.setdefault(f"{col}={value}", [0, 0.0])  # type: ignore[union-attr]
                    entry[0] += len(part)
                    entry[1] += float(part.sum())
    return tally


def sample_rows(store: ObjectStore, keys: list[str], columns: list[str], k: int, seed: int,
                chunk_rows: int) -> pd.DataFrame:
    """A uniform sample of ``k`` rows over Parquet objects, in one chunked pass (keep the k smallest random keys)."""
    rng = np.random.default_rng(seed)
    kept: pd.DataFrame | None = None
    for key in keys:
        with local_file(store, key) as path:
            for batch in pq.ParquetFile(path).iter_batches(chunk_rows, columns=columns):
                df = batch.to_pandas().assign(_draw=rng.random(batch.num_rows))
                kept = df if kept is None else pd.concat([kept, df], ignore_index=True)
                kept = kept.nsmallest(k, "_draw")
    return (kept if kept is not None else pd.DataFrame(columns=columns)).drop(columns="_draw", errors="ignore")


def embed_rows(run_spec: ModelSpec, store: ObjectStore, df: pd.DataFrame, shard: str) -> np.ndarray:
    """Frozen-backbone embeddings of ``df`` through the run's embedding cache (tl_core.models.embeddings)."""
    from tl_core.models.backbones import Classifier, load_backbone
    from tl_core.models.embeddings import CacheStats, EmbeddingCache, cache_key, choose_device, embed_with_cache
    from tl_core.models.preprocessing import content_hashes, encode_split, image_transform

    backbone = load_backbone(run_spec, pretrained=True)
    model = Classifier(backbone.module, backbone.kind, backbone.num_features, len(run_spec.labels))
    column = run_spec.data.input_column
    enc = encode_split(df, column, run_spec.labels, backbone.preprocessing, backbone.tokenizer)
    transform = image_transform(backbone.preprocessing, False) if backbone.kind == "timm" else None
    cache = EmbeddingCache(store, cache_key(run_spec, backbone.preprocessing))
    found = CacheStats()
    out = embed_with_cache(model, backbone, run_spec, enc, content_hashes(df, column), cache, shard, transform,
                           found, choose_device(run_spec.train.device))
    logger.info("embedded %d rows for drift (%d cached, %d new)", len(df), found.hits, found.misses)
    return out


def measure_embedding(spec: ModelSpec, ref: ChampionReference, day: date) -> dict[str, Any]:
    """The input-drift section: 'unavailable' (with the reason) when the training snapshot cannot be read."""
    monitor = spec.monitor
    run = RunContext(spec=spec, store=open_store(spec.store), run_id=ref.run_id)
    where = f"run {ref.run_id} train split ({run.uri('split', 'examples.parquet')})"
    try:
        examples = run.read_examples()
    except (DataError, NoSuchKey) as exc:
        return {"status": "unavailable", "reason": f"the champion's training snapshot cannot be read: {exc}",
                "reference": where}
    column = ref.run_spec.data.input_column
    train = examples[examples["split"] == "train"]
    train = train.sample(n=min(len(train), monitor.embedding_max_rows), random_state=monitor.seed)
    in_store, keys = partition_files(spec, day)
    current = sample_rows(in_store, keys, ["example_id", column], monitor.embedding_max_rows, monitor.seed,
                          monitor.chunk_rows)
    if len(train) < 2 or len(current) < 2:
        return {"status": "unavailable", "reference": where, "reason": f"too few rows for the test: {len(train)} "
                f"training rows, {len(current)} partition rows (at least 2 each)"}
    x = embed_rows(ref.run_spec, run.store, train.reset_index(drop=True), f"{ref.run_id}-train")
    y = embed_rows(ref.run_spec, run.store, current.reset_index(drop=True), f"monitor-dt={day.isoformat()}")
    result = stats.mmd_permutation_test(x, y, monitor.permutations, monitor.seed)
    return {"status": "ok", **result, "reference_rows": len(x), "current_rows": len(y), "reference": where}


def prediction_sections(ref: ChampionReference, tally: PredictionTally) -> tuple[dict[str, Any], dict[str, Any]]:
    """(prediction shift, accuracy estimate) from the champion reference and the partition's tallies (the counts
    lined up by class name, in the champion's class order)."""
    current = np.array([tally.counts.get(name, 0) for name in ref.labels], dtype=np.int64)
    chi = stats.chi_square(ref.test_counts, current)
    shift = {"psi": stats.psi(ref.test_counts, current), "chi2": chi["statistic"],
             "chi2_p_value": chi["p_value"], "dof": chi["dof"],
             "reference_counts": {name: int(c) for name, c in zip(ref.labels, ref.test_counts, strict=True)},
             "current_counts": {name: int(c) for name, c in zip(ref.labels, current, strict=True)}}
    slices = {name: {"rows": int(n), "expected_accuracy": s / n if n else None,
                     "reference_accuracy": ref.slice_accuracy.get(name, ref.test_accuracy)}
              for name, (n, s) in sorted((tally.slices or {}).items())}
    accuracy = {"method": "cbpe", "expected_accuracy": tally.top_sum / tally.rows if tally.rows else None,
                "reference_accuracy": ref.test_accuracy, "reference_expected_accuracy": ref.test_expected_accuracy,
                "slices": slices}
    return shift, accuracy


def measure(spec: ModelSpec, day: date, run_id: str = "manual") -> dict[str, Any]:
    """Every drift measurement of the scored partition ``dt=day`` (the report without its alerts)."""
    record = read_record(spec, day)
    registry = Registry.for_spec(spec)
    ref = load_reference(spec, registry, record.champion_version)
    out = open_store(spec.store)
    prefix = scores_prefix(spec, day)
    slice_columns = list(record.slice_columns)
    if record.rows:
        tally = tally_predictions(out, join_key(prefix, PREDICTIONS), ref.labels, slice_columns,
                                  spec.monitor.chunk_rows)
        embedding = measure_embedding(spec, ref, day)
    else:  # scored as 0 rows: no predictions file, nothing to sample
        tally = PredictionTally({name: 0 for name in ref.labels}, slices={})
        embedding = {"status": "unavailable", "reason": f"the partition has 0 rows ({len(record.inputs)} file(s)): "
                     "nothing to compare with the training snapshot"}
    shift, accuracy = prediction_sections(ref, tally)
    monitor = spec.monitor
    return {"schema_version": DRIFT_SCHEMA_VERSION, "model": spec.name, "dt": day.isoformat(), "run_id": run_id,
            "champion_version": ref.version, "challenger_version": record.challenger_version,
            "rows": tally.rows, "scores_uri": out.url(prefix), "embedding": embedding,
            "predictions": shift, "accuracy": accuracy, "disagreement": record.disagreement,
            "thresholds": {"embedding_alpha": monitor.embedding_alpha, "chi2_alpha": monitor.chi2_alpha,
                           "psi_threshold": monitor.psi_threshold, "accuracy_drop": monitor.accuracy_drop,
                           "min_slice_rows": float(monitor.min_slice_rows), "min_rows": float(monitor.min_rows)},
            "created_at": datetime.now(UTC).isoformat()}


def _accuracy_alerts(accuracy: dict[str, Any], monitor: MonitorSpec, overall: bool = True) -> list[dict[str, Any]]:
    """Accuracy-drop alerts of the slices with at least monitor.min_slice_rows rows, and (``overall``) of the
    whole partition."""
    groups = [("overall", None, accuracy.get("rows"), accuracy["expected_accuracy"],
               accuracy["reference_accuracy"])] if overall else []
    groups += [(name, name, s["rows"], s["expected_accuracy"], s["reference_accuracy"])
               for name, s in accuracy["slices"].items()]
    alerts = []
    for name, slice_name, rows, estimate, reference in groups:
        if estimate is None or reference is None or (slice_name and rows < monitor.min_slice_rows):
            continue
        drop = reference - estimate
        if drop > monitor.accuracy_drop:
            alerts.append({"metric": "expected_accuracy_drop", "slice": slice_name, "value": drop,
                           "threshold": monitor.accuracy_drop,
                           "text": f"label-free accuracy ({name}): estimated {estimate:.3f} vs the champion's test "
                                   f"accuracy {reference:.3f}, a drop of {drop:.3f} > {monitor.accuracy_drop}"})
    return alerts


def not_judged(rows: int, monitor: MonitorSpec) -> str | None:
    """Why the overall checks of a partition of ``rows`` rows raise no alert (None: they are judged)."""
    if rows >= monitor.min_rows:
        return None
    empty = "; the partition is empty, so nothing was measured" if rows == 0 else ""
    return (f"{rows} rows, below monitor.min_rows {monitor.min_rows}: not judged (input drift, prediction shift and "
            f"the overall label-free accuracy are reported but raise no alert; a slice is judged from monitor."
            f"min_slice_rows {monitor.min_slice_rows} rows){empty}")


def decide_alerts(report: dict[str, Any], monitor: MonitorSpec) -> list[dict[str, Any]]:
    """The alerts a measured report raises under the spec's thresholds (pure: no I/O). Below monitor.min_rows
    rows the overall checks raise none (see :func:`not_judged`); the slices keep monitor.min_slice_rows."""
    judged = not_judged(int(report["rows"]), monitor) is None
    alerts = _overall_alerts(report, monitor) if judged else []
    alerts += _accuracy_alerts({**report["accuracy"], "rows": report["rows"]}, monitor, overall=judged)
    return alerts


def _overall_alerts(report: dict[str, Any], monitor: MonitorSpec) -> list[dict[str, Any]]:
    """Input drift (or that it was not measured) and prediction shift of the whole partition."""
    alerts: list[dict[str, Any]] = []
    emb = report["embedding"]
    if emb["status"] != "ok":
        alerts.append({"metric": "embedding_drift_unmeasured", "text": f"input drift not measured: {emb['reason']}"})
    elif emb["p_value"] < monitor.embedding_alpha:
        alerts.append({"metric": "embedding_mmd_p_value", "value": emb["p_value"], "threshold": monitor.embedding_alpha,
                       "text": f"input drift: frozen-backbone embeddings differ from the training snapshot (MMD^2 "
                               f"{emb['statistic']:.4g}, permutation p = {emb['p_value']:.4f} < "
                               f"{monitor.embedding_alpha})"})
    pred = report["predictions"]
    moved = sorted(pred["current_counts"], key=lambda c: -abs(_share(pred["current_counts"], c)
                                                                - _share(pred["reference_counts"], c)))[:3]
    detail = ", ".join(f"{c} {_share(pred['reference_counts'], c):.1%} -> {_share(pred['current_counts'], c):.1%}"
                       for c in moved)
    if pred["psi"] > monitor.psi_threshold:
        alerts.append({"metric": "prediction_psi", "value": pred["psi"], "threshold": monitor.psi_threshold,
                       "text": f"prediction shift: PSI {pred['psi']:.3f} > {monitor.psi_threshold} ({detail})"})
    if pred["chi2_p_value"] < monitor.chi2_alpha:
        alerts.append({"metric": "prediction_chi2_p_value", "value": pred["chi2_p_value"],
                       "threshold": monitor.chi2_alpha,
                       "text": f"prediction shift: chi-square {pred['chi2']:.1f} (dof {pred['dof']}), p = "
                               f"{pred['chi2_p_value']:.2g} < {monitor.chi2_alpha} ({detail})"})
    return alerts


def _share(counts: dict[str, int], name: str) -> float:
    total = sum(counts.values())
    return counts.get(name, 0) / total if total else 0.0


def run_drift(spec: ModelSpec, day: date, run_id: str = "manual") -> dict[str, Any]:
    """Measure, decide, write drift/report.json and report.html; returns report_uri, alerts, champion_version,
    rows and not_judged (why the overall checks raised no alert, None when they were judged)."""
    from tl_core.monitor.html import drift_page

    report = measure(spec, day, run_id)
    report["alerts"] = decide_alerts(report, spec.monitor)
    report["not_judged"] = not_judged(int(report["rows"]), spec.monitor)
    check_artifact(DriftReport, report, f"{spec.name} dt={day.isoformat()} drift report")
    out = open_store(spec.store)
    prefix = join_key(scores_prefix(spec, day), "drift")
    out.put_bytes(join_key(prefix, "report.html"), drift_page(report).encode())
    out.put_bytes(join_key(prefix, "report.json"), json.dumps(report, indent=2, sort_keys=True).encode())
    for alert in report["alerts"]:
        logger.warning("%s dt=%s: %s", spec.name, day, alert["text"])
    if report["not_judged"]:
        logger.warning("%s dt=%s: %s", spec.name, day, report["not_judged"])
    return {"report_uri": out.url(join_key(prefix, "report.json")),
            "alerts": [a["text"] for a in report["alerts"]], "champion_version": report["champion_version"],
            "rows": report["rows"], "not_judged": report["not_judged"]}
