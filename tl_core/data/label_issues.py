"""Label issues: rows whose given label the data itself contradicts (confident learning, cleanlab).

Out-of-fold predicted probabilities come from a cross-validated multinomial logistic regression on the frozen
backbone's embeddings (the same cached embeddings the frozen baseline trains on, so it costs seconds, not a
training run); ``cleanlab.filter.find_label_issues`` (prune by noise rate) flags the rows, ranked by
self-confidence. The finding gives the share of flagged rows overall, per given class and per slice value,
the worst slices, and the top example ids with their given and suspected labels.

A limit is passed when a slice value (at least ``data.label_issues_min_slice`` rows) has a flagged share
more than ``data.label_issues_max_slice_excess`` above the other rows' with a Fisher exact test p below
``data.label_issues_alpha`` (noise planted in one slice), or when the overall share is above
``data.label_issues_max_fraction``. The limits are relative on purpose: confident learning on weak
embeddings flags many clean rows (14% of real Debian descriptions with MiniLM, 60-75% with random
features), evenly across slices. ``data.label_issues`` decides what a passed limit does: ``warn`` reports
it, ``quarantine`` keeps the flagged rows of the offending slices (all flagged rows when the overall limit
is passed) out of the training split, ``block`` stops the run before any fine-tuning. Per-class shares are
reported, never a limit (classes differ in difficulty). Runs on the non-test rows (a seeded sample of at
most ``data.label_issues_max_rows``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tl_core.artifacts import LabelIssues, SuspectedLabel
from tl_core.config import ModelSpec
from tl_core.runs import artifact_rel

logger = logging.getLogger(__name__)

LABEL_ISSUES = artifact_rel(LabelIssues)
TOP_EXAMPLES = 10
WORST_SLICES = 5


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int) -> np.ndarray:
    """n x n_classes out-of-fold probabilities of a standardised logistic regression (stratified folds; a
    class with fewer rows than folds lowers the number of folds, down to 2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    counts = np.bincount(y, minlength=n_classes)
    k = int(max(2, min(folds, counts[counts > 0].min())))
    probs = np.zeros((len(y), n_classes))
    # One BLAS/OpenMP thread: these small fits were 50x slower with two threads on a shared 2-core machine.
    with threadpool_limits(limits=1):
        for train, held in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y):
            mean, std = x[train].mean(0), x[train].std(0) + 1e-6
            clf = LogisticRegression(C=0.1, max_iter=500, random_state=seed)
            clf.fit((x[train] - mean) / std, y[train])
            probs[np.ix_(held, clf.classes_)] = clf.predict_proba((x[held] - mean) / std)
    # Classes a fold never saw get a small floor so every row's probabilities stay a distribution.
    probs = np.clip(probs, 1e-6, None)
    return probs / probs.sum(1, keepdims=True)


def _rates(flagged: np.ndarray, values: pd.Series) -> dict[str, dict[str, float]]:
    frame = pd.DataFrame({"v": values.astype(str).to_numpy(), "f": flagged})
    grouped = frame.groupby("v")["f"].agg(["sum", "count"])
    return {str(k): {"flagged": int(r["sum"]), "rows": int(r["count"]), "rate": float(r["sum"]) / int(r["count"])}
            for k, r in grouped.iterrows()}


def _slices_over(rates: dict[str, dict[str, float]], total_flagged: int, total: int, spec: ModelSpec) -> list[str]:
    """The slice values whose flagged share beats the other rows' by the spec's excess, significantly."""
    from scipy.stats import fisher_exact

    d = spec.data
    out = []
    for name, r in sorted(rates.items(), key=lambda kv: -kv[1]["rate"]):
        rest_rows, rest_flagged = total - r["rows"], total_flagged - r["flagged"]
        if r["rows"] < d.label_issues_min_slice or rest_rows <= 0:
            continue
        rest_rate = rest_flagged / rest_rows
        if r["rate"] - rest_rate <= d.label_issues_max_slice_excess:
            continue
        table = [[r["flagged"], r["rows"] - r["flagged"]], [rest_flagged, rest_rows - rest_flagged]]
        p = float(fisher_exact(table, alternative="greater")[1])
        if p < d.label_issues_alpha:
            out.append(f"{name} {r['rate']:.1%} ({int(r['flagged'])} of {int(r['rows'])}) vs {rest_rate:.1%} in the "
                       f"other rows (Fisher p {p:.2g})")
    return out


def find_label_issues(rows: pd.DataFrame, embeddings: np.ndarray, spec: ModelSpec) -> LabelIssues:
    """The label-issue finding for ``rows`` (example_id, label and the spec's slice columns) and their
    embeddings (row order). Pure: no I/O."""
    from cleanlab.filter import find_label_issues as cleanlab_find

    d = spec.data
    present = [lab for lab in spec.labels if (rows["label"].astype(str) == lab).any()]
    if len(present) < 2 or len(rows) < 2 * len(present):
        return skipped_finding(spec, rows, f"{len(rows)} rows in {len(present)} class(es): too few to cross-validate")
    index = {lab: i for i, lab in enumerate(present)}
    y = rows["label"].astype(str).map(index).to_numpy(dtype=np.int64)
    probs = out_of_fold_probabilities(embeddings.astype(np.float64), y, len(present), d.label_issues_folds,
                                      d.split_seed)
    ranked = cleanlab_find(labels=y, pred_probs=probs, filter_by="prune_by_noise_rate",
                           return_indices_ranked_by="self_confidence", n_jobs=1)
    flagged = np.zeros(len(y), dtype=bool)
    flagged[ranked] = True
    per_class = _rates(flagged, rows["label"])
    per_slice: dict[str, dict[str, float]] = {}
    for col in d.slice_columns:
        if col in rows:
            per_slice.update({f"{col}={k}": v for k, v in _rates(flagged, rows[col]).items()})
    suspected = np.array(present, dtype=object)[probs.argmax(1)]
    ids = rows["example_id"].astype(str).to_numpy()
    top = [SuspectedLabel(example_id=ids[i], given=present[y[i]], suspected=str(suspected[i]),
                          given_probability=round(float(probs[i, y[i]]), 4)) for i in ranked[:TOP_EXAMPLES]]
    return _finding(spec, rows, flagged, per_class, per_slice, top, float((probs.argmax(1) == y).mean()))


def _finding(spec: ModelSpec, rows: pd.DataFrame, flagged: np.ndarray, per_class: dict[str, dict[str, float]],
             per_slice: dict[str, dict[str, float]], top: list[SuspectedLabel], oof_accuracy: float) -> LabelIssues:
    d = spec.data
    n, k = len(flagged), int(flagged.sum())
    rate = k / n if n else 0.0
    slices = _slices_over(per_slice, k, n, spec)
    overall = [f"overall {rate:.1%} ({k} of {n})"] if rate > d.label_issues_max_fraction else []
    over = overall + slices
    severity = "info" if not over else {"warn": "warning", "quarantine": "warning", "block": "blocking"}[
        d.label_issues]
    worst = sorted(per_slice.items(), key=lambda kv: -kv[1]["rate"])[:WORST_SLICES]
    shown = ", ".join(f"{t.example_id} (given {t.given}, suspected {t.suspected})" for t in top[:5])
    message = (f"{k} of {n} rows ({rate:.1%}) look mislabelled (cleanlab confident learning on out-of-fold "
               f"probabilities of a {d.label_issues_folds}-fold logistic regression on the frozen embeddings, "
               f"out-of-fold accuracy {oof_accuracy:.1%}); worst slices: "
               + (", ".join(f"{s} {r['rate']:.1%} ({r['flagged']} of {r['rows']})" for s, r in worst) or "none")
               + (f"; e.g. {shown}" if shown else ""))
    quarantined: list[str] = []
    if over:
        action = {"warn": "reported only", "quarantine": "their flagged rows are kept out of the training split",
                  "block": "the run stops before any fine-tuning"}[d.label_issues]
        message += (f"; over the limit (data.label_issues_max_slice_excess {d.label_issues_max_slice_excess:.0%}, "
                    f"alpha {d.label_issues_alpha:g}, max_fraction {d.label_issues_max_fraction:.0%}): "
                    f"{'; '.join(over[:5])}; data.label_issues {d.label_issues!r}: {action}")
        if d.label_issues == "quarantine":
            quarantined = _quarantined_ids(rows, flagged, [s.split(" ")[0] for s in slices], bool(overall))
    return LabelIssues(severity=severity, count=k, rows=n, rate=rate, oof_accuracy=oof_accuracy, over_limit=over,
                       per_class=per_class, per_slice=per_slice, worst_slices=[s for s, _ in worst], top_examples=top,
                       policy=d.label_issues, quarantined_ids=quarantined, message=message)


def skipped_finding(spec: ModelSpec, rows: pd.DataFrame, why: str) -> LabelIssues:
    """The finding when label issues cannot be checked (too few rows or classes), saying why."""
    return LabelIssues(severity="info", count=0, rows=len(rows), rate=0.0, oof_accuracy=None, over_limit=[],
                       per_class={}, per_slice={}, worst_slices=[], top_examples=[], policy=spec.data.label_issues,
                       quarantined_ids=[], message=f"label issues not checked: {why}")


def _quarantined_ids(rows: pd.DataFrame, flagged: np.ndarray, slices: list[str], everything: bool) -> list[str]:
    """The flagged rows of the offending slices (every flagged row when the overall limit is passed)."""
    keep = flagged.copy() if everything else np.zeros(len(rows), dtype=bool)
    for name in slices:
        col, _, value = name.partition("=")
        keep |= flagged & (rows[col].astype(str) == value).to_numpy()
    return sorted(rows["example_id"].astype(str).to_numpy()[keep].tolist())
