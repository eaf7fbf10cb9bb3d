"""Transfer vs scratch: test macro-F1 per strategy at 50, 200 and all training examples per class.

For the text demo (real all-MiniLM-L6-v2) and the image demo (ImageNet EfficientNet-Lite0 from its package,
or the glyph backbone of the `tl pretrain-source` option), trains every strategy on subsets of the demo split,
3 seeds each, and prints mean +- spread of test macro-F1. Transfer should beat scratch at the small sizes.
CPU: expect tens of minutes per size; use --modality, --sizes and --strategies to run part of it.

Every finished cell (modality, size, seed, strategy) is appended to ``<workdir>/<modality>/results.jsonl``
as soon as it is measured, and the run's store lives under the work dir too, so an interrupted run
re-run with the same arguments continues where it stopped (finished models are not retrained; a
fine-tune cut mid-way resumes from its last epoch). ``--table`` prints the table from what is there.

    .venv/bin/python bench/quality.py --modality text --sizes 50 200 --seeds 3
    .venv/bin/python bench/quality.py --modality text image --table
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from tl_core.artifacts import TrainReport
from tl_core.config import ModelSpec, parse_spec
from tl_core.demo.data import write_demo_data
from tl_core.evaluate.metrics import confusion, scores_from_confusion
from tl_core.pipeline import step_audit, step_snapshot, step_split
from tl_core.runs import RunContext
from tl_core.train.run import run_train

SPECS = {"text": "configs/support-tickets.yaml", "image": "configs/digits.yaml"}
STRATEGIES = ["scratch", "frozen", "lora", "partial", "full"]
# Image: 1,797 real digits over a 14-day window; more than 128 a day reuses source digits, and the split
# (group- and near-duplicate-aware, newest days = test) then pulls most rows into test.
ROWS_PER_DAY = {"text": 300, "image": 128}


def subset(df: pd.DataFrame, per_class: int | None, seed: int) -> pd.DataFrame:
    """``per_class`` training rows of each label (all when None); the other splits unchanged."""
    train = df[df["split"] == "train"]
    if per_class is not None:
        keep = [i for _, g in train.groupby("label")
                for i in g.sample(n=min(per_class, len(g)), random_state=seed).index]
        train = train.loc[keep]
    return pd.concat([train, df[df["split"] != "train"]], ignore_index=True)


def prepare(modality: str, workdir: Path, rows_per_day: int) -> tuple[ModelSpec, pd.DataFrame]:
    """Demo data, snapshot, audit and split once per work dir; returns the spec and the split rows."""
    raw = yaml.safe_load(Path(SPECS[modality]).read_text())
    raw.pop("candidates", None)  # one backbone here: the spec's own (candidates are compared by `tl run`)
    uri = workdir.resolve().as_uri()
    raw["data"]["root"] = uri + "/data"
    raw["store"] = uri + "/store"
    raw["train"]["strategies"] = STRATEGIES
    glyphs = modality == "image" and raw["backbone"].get("weights") == "store"  # the `tl pretrain-source` option
    if glyphs:
        raw["backbone"]["path"] = uri + "/store/pretrained/glyphs/model.safetensors"
    spec = parse_spec(raw)
    spec_path = workdir / "spec.yaml"
    base = RunContext.open(spec, "base")
    if not base.store.exists(base.key("split/examples.parquet")):
        workdir.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        if glyphs:
            from tl_core.demo.pretrain_source import pretrain_source

            pretrain_source(spec)
        write_demo_data(spec, end_date=date(2026, 11, 1), days=spec.data.window_days, rows_per_day=rows_per_day)
        step_snapshot(str(spec_path), "base", "2026-11-01")
        step_audit(str(spec_path), "base")
        step_split(str(spec_path), "base")
    examples = pd.read_parquet(io.BytesIO(base.store.get_bytes(base.key("split/examples.parquet"))))
    return spec, examples


def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(spec: ModelSpec, examples: pd.DataFrame, size: str, seed: int, strategy: str) -> dict[str, Any]:
    """Train one strategy on the size/seed subset; test macro-F1 from its stored test logits."""
    run_spec = parse_spec({**spec.model_dump(mode="json"), "train": {**spec.train.model_dump(mode="json"),
                                                                     "seed": seed}})
    ctx = RunContext.open(run_spec, f"q-{size}-{seed}")
    rows = subset(examples, None if size == "all" else int(size), seed)
    if not ctx.store.exists(ctx.key("split/examples.parquet")):
        buf = io.BytesIO()
        rows.to_parquet(buf, index=False)
        ctx.store.put_bytes(ctx.key("split/examples.parquet"), buf.getvalue())
    run_train(ctx, strategy)
    test = ctx.read_npz(f"models/{strategy}/logits/test.npz")
    label_of = dict(zip(examples["example_id"], examples["label"], strict=True))
    index = {name: i for i, name in enumerate(spec.labels)}
    y = np.array([index[label_of[str(i)]] for i in test["example_id"]])
    report = ctx.read(TrainReport, strategy)
    train_rows = rows[rows["split"] == "train"]
    scores = scores_from_confusion(confusion(y, test["logits"].argmax(1), len(spec.labels)))
    return {"size": size, "seed": seed, "strategy": strategy, "macro_f1": float(scores["macro_f1"]),
            "train_examples": int(len(train_rows)), "min_per_class": int(train_rows["label"].value_counts().min()),
            "test_examples": int(len(y)), "wall_s": round(float(report.wall_s or 0.0), 2),
            "best_epoch": report.best_epoch}


def print_table(modality: str, backbone: str, results: list[dict[str, Any]], sizes: list[str],
                strategies: list[str]) -> None:
    print(f"\n{modality} demo ({backbone}): test macro-F1, mean +- std over seeds (n = seeds measured)")
    print(f"{'per class':<10}{'train rows':>11}" + "".join(f"{s:>20}" for s in strategies))
    for size in sizes:
        rows = [r for r in results if r["size"] == size]
        if not rows:
            print(f"{size:<10}{'':>11}  not measured (or more than the data holds: see 'all')")
            continue
        line = f"{size:<10}{int(np.median([r['train_examples'] for r in rows])):>11}"
        for strategy in strategies:
            scores = [r["macro_f1"] for r in rows if r["strategy"] == strategy]
            cell = f"{np.mean(scores):.3f} +-{np.std(scores):.3f} n={len(scores)}" if scores else "not measured"
            line += f"{cell:>20}"
        print(line)
    test_rows = {r["test_examples"] for r in results}
    print(f"test rows: {sorted(test_rows)}; mean train wall s per strategy: " + ", ".join(
        f"{s} {np.mean([r['wall_s'] for r in results if r['strategy'] == s]):.0f}"
        for s in strategies if any(r["strategy"] == s for r in results)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", choices=["text", "image"], nargs="+", default=["text", "image"])
    parser.add_argument("--sizes", nargs="+", default=["50", "200", "all"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=STRATEGIES)
    parser.add_argument("--rows-per-day", type=int, default=None,
                        help="demo rows per labeling day (default: text 300; image 128, the most for which no "
                             "scikit-learn digit is used twice in the 14-day window)")
    parser.add_argument("--workdir", type=Path, default=Path(".tl/bench/quality"),
                        help="store, data and results.jsonl per modality (kept, so a re-run resumes)")
    parser.add_argument("--fresh", action="store_true", help="delete the work dir of each modality first")
    parser.add_argument("--table", action="store_true", help="only print the table from results.jsonl")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for size in args.sizes:
        if size != "all" and not size.isdigit():
            parser.error(f"--sizes: expected whole numbers or 'all', got {size!r}")
    for modality in args.modality:
        workdir = args.workdir / modality
        if args.fresh and workdir.exists():
            shutil.rmtree(workdir)
        results_path = workdir / "results.jsonl"
        if args.table:
            backbone = yaml.safe_load(Path(SPECS[modality]).read_text())["backbone"]["name"]
            print_table(modality, backbone, load_results(results_path), args.sizes, args.strategies)
            continue
        rows_per_day = args.rows_per_day or ROWS_PER_DAY[modality]
        spec, examples = prepare(modality, workdir, rows_per_day)
        largest = int(examples[examples["split"] == "train"]["label"].value_counts().max())
        done = {(r["size"], r["seed"], r["strategy"]) for r in load_results(results_path)}
        sizes = [s for s in args.sizes if s == "all" or int(s) < largest]
        for size in sorted(set(args.sizes) - set(sizes)):
            print(f"{modality}: {size} per class is all of the data (largest class has {largest} training rows); "
                  "measured as 'all' only", flush=True)
        # Seeds outermost: every size gets its first seed before any gets its second, so a run cut short
        # still prints the whole table (with n < seeds where it was cut).
        for seed in range(args.seeds):
            for size in sizes:
                for strategy in args.strategies:
                    if (size, seed, strategy) in done:
                        continue
                    row = measure(spec, examples, size, seed, strategy)
                    with results_path.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"{modality} per_class={size} seed={seed} {strategy:<8} macro_f1={row['macro_f1']:.3f} "
                          f"train_rows={row['train_examples']} wall={row['wall_s']:.0f}s", flush=True)
        print_table(modality, spec.backbone.name, load_results(results_path), args.sizes, args.strategies)


if __name__ == "__main__":
    main()
