"""The gate's operating characteristics on real data: how often an equal retrain passes, how often a planted
regression is caught, per gate policy.

Data: Debian's package descriptions (``apt-cache dumpavail``: the one-line ``Description`` of every package this
machine's apt lists know), labelled by ``Section``: the ``--classes`` largest sections, ``--per-class`` packages
each (seeded sample), embedded once by the real all-MiniLM-L6-v2 (cached under ``--workdir``). Slices, as a
production team would define them from metadata: ``arch`` (all | any), ``multiarch`` (same | foreign | no) and
``length`` (short | long: word count against the median).

For each of ``--trials`` random splits (train 50%, validation 10%, calibration 10%, test 30%), the frozen
baseline's head (``tl_core.train.frozen.fit_head``, C chosen on validation, temperature on calibration) is trained
twice: the champion and the candidate each on a ``--shared`` share of the training rows that both see plus their
own half of the rest. ``--shared 0`` (disjoint halves) gives two independent, equally good retrains, as different
as two nightly runs on disjoint data can be; ``--shared 0.8`` is closer to a nightly window that moves by a few
days. Planted candidates are trained on that
same second half with a defect:

* ``relabel X%``: X% of the training rows of one slice (``PLANT_SLICE``, a few hundred test rows) get a random
  other label;
* ``class <label> -75%``: three quarters of one class's training rows get a random other label (its recall drops).

Every pair is bootstrapped once (``--n-boot`` paired replicates) and decided under every policy of ``POLICIES``.
Printed per policy: the false-rejection rate of equal retrains, and per plant the detection rate (FAIL, naming the
planted slice for slice plants), with the mean observed drop on the planted slice. Every pair's report is appended to
``<workdir>/trials-shared<S>.jsonl.gz``; ``--table`` decides them again under the current ``POLICIES`` in seconds.

    .venv/bin/python bench/gate_quality.py --trials 40
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm

from tl_core.config import GateSpec, ModelSpec, load_spec
from tl_core.evaluate.calibration import fit_temperature
from tl_core.evaluate.metrics import softmax
from tl_core.evaluate.run import report_from_probs
from tl_core.gate import decide
from tl_core.models.backbones import Classifier, load_backbone
from tl_core.models.embeddings import embed
from tl_core.models.preprocessing import encode_split
from tl_core.train.frozen import fit_head

PLANT_SLICE = "multiarch=foreign"
RELABEL = (0.10, 0.25, 0.50)
# The policies compared. "two-outcome" is the gate before three outcomes: any slice that does not show
# non-inferiority fails. The default is GateSpec's own default.
POLICIES: dict[str, dict[str, Any]] = {
    "two-outcome macro_f1 0.03": {"margins": {"macro_f1": 0.03, "accuracy": 0.03}, "slice_metrics": ["macro_f1"],
                                  "slice_inconclusive": "fail"},
    "macro_f1 slices 0.03": {"margins": {"macro_f1": 0.03, "accuracy": 0.03}, "slice_metrics": ["macro_f1"]},
    "balanced_accuracy slices 0.03": {"margins": {"macro_f1": 0.03, "accuracy": 0.03},
                                      "slice_metrics": ["balanced_accuracy"],
                                      "slice_margins": {"balanced_accuracy": 0.03}},
    "accuracy slices 0.03": {"margins": {"macro_f1": 0.03, "accuracy": 0.03}, "slice_metrics": ["accuracy"]},
    "accuracy slices 0.02": {"margins": {"macro_f1": 0.03, "accuracy": 0.03}, "slice_metrics": ["accuracy"],
                             "slice_margins": {"accuracy": 0.02}},
    "accuracy slices 0": {"margins": {"macro_f1": 0.03, "accuracy": 0.03}, "slice_metrics": ["accuracy"],
                          "slice_margins": {"accuracy": 0.0}},
    "overall 0.02, accuracy slices 0.02": {"margins": {"macro_f1": 0.02, "accuracy": 0.02},
                                           "slice_metrics": ["accuracy"], "slice_margins": {"accuracy": 0.02}},
    "harm only: overall 0.03 warn, slices 0": {"margins": {"macro_f1": 0.03, "accuracy": 0.03},
                                               "overall_inconclusive": "warn", "slice_metrics": ["accuracy"],
                                               "slice_margins": {"accuracy": 0.0}},
    "default (GateSpec())": {},
}
# The gate's other checks are held fixed so the table isolates the comparison with the champion.
FIXED = {"absolute_minimums": {}, "must_beat_majority": False, "must_match_frozen": False,
         "calibration": {"ece_max": 1.0, "ece_tolerance": 1.0}}


def package_descriptions(classes: int, per_class: int, seed: int) -> pd.DataFrame:
    """Debian's package descriptions labelled by Section, with metadata slices (see the module docstring)."""
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True, timeout=300).stdout
    rows = []
    for block in out.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != " ")
        if {"Package", "Section", "Description"} <= fields.keys():
            rows.append({"example_id": fields["Package"], "label": fields["Section"].split("/")[-1],
                         "text": fields["Description"].strip(),
                         "arch": "all" if fields.get("Architecture") == "all" else "any",
                         "multiarch": fields.get("Multi-Arch", "no")})
    df = pd.DataFrame(rows).drop_duplicates("example_id").drop_duplicates("text")
    top = df["label"].value_counts().index[:classes]
    df = df[df["label"].isin(top)]
    df = df.sample(frac=1.0, random_state=seed).groupby("label").head(per_class).reset_index(drop=True)
    words = df["text"].str.split().str.len()
    df["length"] = np.where(words > words.median(), "long", "short")
    df["multiarch"] = df["multiarch"].where(df["multiarch"].isin(["same", "foreign"]), "no")
    return df


def embeddings(df: pd.DataFrame, spec: ModelSpec, workdir: Path) -> np.ndarray:
    """The frozen backbone's embedding of every text, cached in ``workdir`` by the texts' hash."""
    digest = hashlib.sha256("\n".join(df["text"]).encode()).hexdigest()[:16]
    path = workdir / f"embeddings-{digest}.npy"
    if path.exists():
        return np.load(path)  # type: ignore[no-any-return]
    backbone = load_backbone(spec)
    model = Classifier(backbone.module, backbone.kind, backbone.num_features, len(spec.labels))
    encoded = encode_split(df, "text", spec.labels, backbone.preprocessing, backbone.tokenizer)
    t0 = time.perf_counter()
    x = embed(model, encoded, 64, torch.device("cpu"), int(backbone.tokenizer.pad_token_id or 0), None)
    print(f"embedded {len(df)} texts in {time.perf_counter() - t0:.1f} s")
    np.save(path, x)
    return x


def relabel(y: np.ndarray, rows: np.ndarray, share: float, classes: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``y`` with ``share`` of ``rows`` given a random other label."""
    y = y.copy()
    pick = rng.choice(rows, size=round(share * len(rows)), replace=False)
    y[pick] = (y[pick] + rng.integers(1, classes, len(pick))) % classes
    return y


def test_probs(spec: ModelSpec, x: np.ndarray, y: np.ndarray, parts: dict[str, np.ndarray],
               train_rows: np.ndarray, y_train: np.ndarray) -> np.ndarray:
    """Fit the frozen head on ``train_rows`` (labels ``y_train``), temperature on calibration; test probabilities."""
    weight, bias, _ = fit_head(spec, x[train_rows], y_train, x[parts["validation"]], y[parts["validation"]])
    cal = parts["calibration"]
    temperature = fit_temperature(x[cal] @ weight.T + bias, y[cal])
    return softmax(x[parts["test"]] @ weight.T + bias, temperature)


def _split(rng: np.random.Generator, df: pd.DataFrame, shared: float) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                                np.ndarray, dict[str, np.ndarray]]:
    """A random split (train 50%, validation 10%, calibration 10%, test 30%), the two models' training rows and
    the test slices."""
    order = rng.permutation(len(df))
    cuts = np.cumsum([int(0.5 * len(df)), int(0.1 * len(df)), int(0.1 * len(df))])
    parts = dict(zip(("train", "validation", "calibration", "test"), np.split(order, cuts), strict=True))
    shuffled = rng.permutation(parts["train"])
    common = round(shared * len(shuffled))
    own_a, own_b = np.array_split(shuffled[common:], 2)
    half_a, half_b = np.sort(np.r_[shuffled[:common], own_a]), np.sort(np.r_[shuffled[:common], own_b])
    test = df.iloc[parts["test"]].reset_index(drop=True)
    slices = {f"{col}={v}": (test[col] == v).to_numpy() for col in ("arch", "multiarch", "length")
              for v in sorted(test[col].unique())}
    return parts, half_a, half_b, slices


def _row(trial: int, plant: str, y_test: np.ndarray, cand: np.ndarray, champion: np.ndarray,
         slices: dict[str, np.ndarray], n_boot: int) -> dict[str, Any]:
    """One pair: its bootstrap report and the observed differences."""
    report = report_from_probs(y_test, {"cand": cand, "champion": champion}, slices, "cand", "frozen", n_boot, trial)
    acc = report["comparisons"]["champion"]["accuracy"]
    return {"trial": trial, "plant": plant, "test_rows": len(y_test), "slice_rows": int(slices[PLANT_SLICE].sum()),
            "disagreement": float((cand.argmax(1) != champion.argmax(1)).mean()),
            "overall_accuracy_diff": acc["overall"]["diff"], "slice_accuracy_diff": acc[PLANT_SLICE]["diff"],
            "report": _slim(report)}


def one_trial(trial: int, spec: ModelSpec, df: pd.DataFrame, x: np.ndarray, n_boot: int, plant_class: int,
              shared: float) -> list[dict[str, Any]]:
    """One random split: the equal pair and every planted pair of frozen heads."""
    rng = np.random.default_rng(1000 + trial)
    y = df["label"].map({k: i for i, k in enumerate(spec.labels)}).to_numpy()
    parts, half_a, half_b, slices = _split(rng, df, shared)
    champion = test_probs(spec, x, y, parts, half_a, y[half_a])
    column, value = PLANT_SLICE.split("=")
    in_slice = _positions(half_b, half_b[(df.iloc[half_b][column] == value).to_numpy()])
    of_class = _positions(half_b, half_b[y[half_b] == plant_class])
    c = len(spec.labels)
    plants: dict[str, np.ndarray] = {"equal": y[half_b]}
    for share in RELABEL:
        plants[f"relabel {share:.0%}"] = relabel(y[half_b], in_slice, share, c, rng)
    plants[f"class {spec.labels[plant_class]} -75%"] = relabel(y[half_b], of_class, 0.75, c, rng)
    return [_row(trial, plant, y[parts["test"]], test_probs(spec, x, y, parts, half_b, y_b), champion, slices, n_boot)
            for plant, y_b in plants.items()]


def _slim(report: dict[str, Any]) -> dict[str, Any]:
    """The report without per-model intervals (the gate reads comparisons and overall metrics only)."""
    models = {k: {"strategy": v["strategy"], "overall": v["overall"]} for k, v in report["models"].items()}
    return {**report, "models": models}


def decided(row: dict[str, Any], policy: GateSpec) -> dict[str, Any]:
    """One pair decided under one policy: passed, the failing slices, and how many checks were inconclusive."""
    d = decide(row["report"], policy)
    return {"passed": d.passed, "failing": sorted({r.slice or "" for r in d.failures}),
            "inconclusive": sum(r.outcome == "inconclusive" for r in d.reasons)}


def _positions(within: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions in ``within`` of the example indices ``rows``."""
    return np.flatnonzero(np.isin(within, rows))


def policies() -> dict[str, GateSpec]:
    return {name: GateSpec.model_validate({**p, **FIXED}) for name, p in POLICIES.items()}


def caught(row: dict[str, Any], policy: GateSpec) -> bool:
    """The plant is caught: the gate FAILs, and for a slice plant names that slice."""
    p = decided(row, policy)
    return (not p["passed"]) and ("relabel" not in row["plant"] or PLANT_SLICE in p["failing"])


def print_table(rows: list[dict[str, Any]]) -> None:
    plants = list(dict.fromkeys(r["plant"] for r in rows))
    by_plant = {p: [r for r in rows if r["plant"] == p] for p in plants}
    print(f"\nplanted slice: {PLANT_SLICE}; accuracy differences are candidate - champion, means over pairs")
    print(f"{'plant':<20}{'pairs':>6}{'test rows':>10}{'slice rows':>11}{'disagree':>10}{'acc diff overall':>18}"
          f"{'acc diff slice':>16}")
    for p, rs in by_plant.items():
        print(f"{p:<20}{len(rs):>6}{np.mean([r['test_rows'] for r in rs]):>10.0f}"
              f"{np.mean([r['slice_rows'] for r in rs]):>11.0f}{np.mean([r['disagreement'] for r in rs]):>10.3f}"
              f"{np.mean([r['overall_accuracy_diff'] for r in rs]):>+18.3f}"
              f"{np.mean([r['slice_accuracy_diff'] for r in rs]):>+16.3f}")
    header = "".join(f"{p:>20}" for p in plants)
    print(f"\nfalse rejections (equal) and detections (plants, FAIL naming {PLANT_SLICE} for relabels) per policy")
    print(f"{'policy':<38}{header}")
    for name, policy in policies().items():
        cells = []
        for p, rs in by_plant.items():
            rate = (np.mean([not decided(r, policy)["passed"] for r in rs]) if p.startswith("equal")
                    else np.mean([caught(r, policy) for r in rs]))
            cells.append(f"{rate:>20.0%}")
        print(f"{name:<38}{''.join(cells)}")


def print_power(rows: list[dict[str, Any]]) -> None:
    """What the planted slice can resolve under the default policy, from the gate's own power figures on the equal
    pairs, and how many test rows each plant's mean observed drop would need to be shown as harm (80% power)."""
    policy = GateSpec.model_validate(FIXED)
    metric = policy.slice_metrics[0]
    margin = policy.slice_margin(metric)
    equal = [r for r in rows if r["plant"] == "equal"]  # frozen pairs: the resolution of the slice
    reasons = [next(x for x in decide(r["report"], policy).reasons if x.slice == PLANT_SLICE and x.metric == metric)
               for r in equal]
    family = sum(1 for k in equal[0]["report"]["slices"])
    z = float(norm.ppf(1 - (1 - policy.confidence) / 2 / family) + norm.ppf(policy.power))
    se = float(np.mean([(x.interval[1] - x.interval[0]) / (2 * norm.ppf(1 - (1 - policy.confidence) / 2))
                        for x in reasons if x.interval]))
    n = int(np.mean([r["slice_rows"] for r in equal]))
    print(f"\n{PLANT_SLICE} ({n} test rows), default policy ({metric} margin {margin}): detects drops >= "
          f"{np.mean([x.detectable for x in reasons if x.detectable]):.3f} at {policy.power:.0%} power "
          f"(mean over equal pairs; se of the difference {se:.4f})")
    overall_z = float(norm.ppf(1 - (1 - policy.confidence) / 2))
    for metric_o, m_o in policy.margins.items():
        ivs = [r["report"]["comparisons"]["champion"][metric_o]["overall"] for r in equal]
        se_o = float(np.mean([(c["hi"] - c["lo"]) / (2 * overall_z) for c in ivs]))
        shown = float(np.mean([c["lo"] >= -m_o for c in ivs]))
        need = equal[0]["test_rows"] * ((overall_z + float(norm.ppf(0.9))) * se_o / m_o) ** 2
        print(f"overall {metric_o} (margin {m_o}): equal pairs showed non-inferiority in {shown:.0%}; se "
              f"{se_o:.4f}; about {need:,.0f} test rows for 90% of equal pairs to show it")
    for plant in dict.fromkeys(r["plant"] for r in rows if r["plant"].startswith("relabel")):
        drop = -float(np.mean([r["slice_accuracy_diff"] for r in rows if r["plant"] == plant]))
        for m in sorted({margin, 0.0}, reverse=True):
            need = ("never: the drop is within the margin" if drop <= m else
                    f"about {n * (z * se / (drop - m)) ** 2:,.0f} test rows in the slice")
            print(f"  {plant}: mean drop {drop:.3f}; shown as harm at margin {m:g} with {policy.power:.0%} power: "
                  f"{need}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--per-class", type=int, default=350)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--shared", type=float, default=0.0,
                        help="share of the training split both models train on (0: disjoint halves)")
    parser.add_argument("--workdir", type=Path, default=Path(".tl/bench/gate_quality"))
    parser.add_argument("--table", action="store_true", help="print the table from the log of --shared")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    logs = {"frozen": args.workdir / f"trials-shared{args.shared:g}.jsonl.gz"}
    if args.table:
        rows = [json.loads(line) for path in logs.values() if path.exists() for line in gzip.open(path, "rt")]
        print_table(rows)
        print_power(rows)
        return
    df = package_descriptions(args.classes, args.per_class, seed=0)
    base = load_spec("configs/support-tickets.yaml")
    spec = ModelSpec.model_validate({**base.model_dump(), "labels": sorted(df["label"].unique())})
    x = embeddings(df, spec, args.workdir)
    plant_class = int(np.argmax(np.bincount(df["label"].map({k: i for i, k in enumerate(spec.labels)}))))
    print(f"data: {len(df)} Debian package descriptions, {df['label'].nunique()} sections, "
          f"{(df['arch'] == 'all').sum()} arch=all; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"pairs: each model trains on {args.shared:.0%} shared training rows plus its own half of the rest")
    t0 = time.perf_counter()
    jobs = {"frozen": [lambda t=t: one_trial(t, spec, df, x, args.n_boot, plant_class, args.shared)
                       for t in range(args.trials)]}
    rows: list[dict[str, Any]] = []
    for kind, trials in jobs.items():
        if trials:
            logs[kind].unlink(missing_ok=True)  # a new run of this kind replaces its log
        for i, job in enumerate(trials):
            new = job()
            with gzip.open(logs[kind], "at") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
            rows += new
            print(f"{kind} trial {i + 1}/{len(trials)} done, {time.perf_counter() - t0:.0f} s", flush=True)
    print_table(rows)
    print_power(rows)


if __name__ == "__main__":
    main()
