"""Transfer vs scratch: test macro-F1 per strategy at 50, 200 and all training examples per class.

For the text demo (real all-MiniLM-L6-v2) and the image demo (backbone from `tl pretrain-source`),
trains every strategy on subsets of the demo split, 3 seeds each, and prints mean +- spread of test
macro-F1. Transfer should beat scratch at the small sizes. CPU: expect tens of minutes for all rows;
use --modality and --sizes to run part of it.

    .venv/bin/python bench/quality.py --modality text --sizes 50 200 --seeds 3
"""

from __future__ import annotations

import argparse
import io
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tl_core.config import parse_spec
from tl_core.data.demo import write_demo_data
from tl_core.pipeline import step_audit, step_snapshot, step_split
from tl_core.runs import RunContext
from tl_core.train.finetune import macro_f1
from tl_core.train.run import run_train

SPECS = {"text": "configs/support-tickets.yaml", "image": "configs/digits.yaml"}


def subset(df: pd.DataFrame, per_class: int | None, seed: int) -> pd.DataFrame:
    train = df[df["split"] == "train"]
    if per_class is not None:
        keep = [i for _, g in train.groupby("label")
                for i in g.sample(n=min(per_class, len(g)), random_state=seed).index]
        train = train.loc[keep]
    return pd.concat([train, df[df["split"] != "train"]], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modality", choices=["text", "image"], nargs="+", default=["text", "image"])
    parser.add_argument("--sizes", nargs="+", default=["50", "200", "all"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows-per-day", type=int, default=300)
    args = parser.parse_args()
    for modality in args.modality:
        raw = yaml.safe_load(Path(SPECS[modality]).read_text())
        strategies = ["scratch", "frozen", "lora", "partial", "full"]
        with tempfile.TemporaryDirectory() as tmp:
            uri = Path(tmp).as_uri()
            raw["data"]["root"] = uri + "/data"
            raw["store"] = uri + "/store"
            raw["train"]["strategies"] = strategies
            if modality == "image":
                raw["backbone"]["path"] = uri + "/store/pretrained/glyphs/model.safetensors"
            spec = parse_spec(raw)
            spec_path = Path(tmp) / "spec.yaml"
            spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
            if modality == "image":
                from tl_core.train.pretrain_source import pretrain_source

                pretrain_source(spec)
            write_demo_data(spec, end_date=date(2026, 11, 1), days=spec.data.window_days,
                            rows_per_day=args.rows_per_day)
            step_snapshot(str(spec_path), "base", "2026-11-01")
            step_audit(str(spec_path), "base")
            step_split(str(spec_path), "base")
            base = RunContext.open(spec, "base")
            examples = pd.read_parquet(io.BytesIO(base.store.get_bytes(base.key("split/examples.parquet"))))
            labels = examples[examples["split"] == "test"]["label"].map({n: i for i, n in enumerate(spec.labels)})
            results: dict[tuple[str, str], list[float]] = {}
            for size in args.sizes:
                for seed in range(args.seeds):
                    per_class = None if size == "all" else int(size)
                    run_spec = parse_spec({**spec.model_dump(mode="json"),
                                           "train": {**spec.train.model_dump(mode="json"), "seed": seed}})
                    ctx = RunContext.open(run_spec, f"q-{size}-{seed}")
                    buf = io.BytesIO()
                    subset(examples, per_class, seed).to_parquet(buf, index=False)
                    ctx.store.put_bytes(ctx.key("split/examples.parquet"), buf.getvalue())
                    for strategy in strategies:
                        run_train(ctx, strategy)
                        test = ctx.read_npz(f"models/{strategy}/logits/test.npz")
                        y = labels.to_numpy()
                        results.setdefault((size, strategy), []).append(
                            macro_f1(y, test["logits"].argmax(1), len(spec.labels)))
        print(f"\n{modality} demo ({spec.backbone.name}): test macro-F1, mean +- std over {args.seeds} seeds")
        print(f"{'per class':<10}" + "".join(f"{s:>16}" for s in strategies))
        for size in args.sizes:
            cells = [results[(size, s)] for s in strategies]
            print(f"{size:<10}" + "".join(f"{np.mean(c):>10.3f} +-{np.std(c):.3f}" for c in cells))


if __name__ == "__main__":
    main()
