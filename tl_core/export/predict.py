"""Batched onnxruntime scoring of Parquet input: the serving path, also used to re-score the champion.

Preprocessing comes from the model's own files (tokenizer / data_config.json), exactly as in training.
CUDAExecutionProvider is used when onnxruntime-gpu and a GPU are present, the CPU provider otherwise.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from tl_core.config import ModelSpec
from tl_core.errors import DataError
from tl_core.train.data import collate, encode_split, image_transform

logger = logging.getLogger(__name__)


@dataclass
class ServedModel:
    session: Any
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    tokenizer: Any
    version: str

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def open_model_dir(root: str | Path, version: str = "unregistered") -> ServedModel:
    """A directory holding ``export/model.onnx`` and ``models/<strategy>/{model_config.json,preprocessing/}``
    (a registered version's layout, or a run's)."""
    import onnxruntime as ort

    root = Path(root)
    onnx_path = root / "export" / "model.onnx"
    configs = sorted(root.glob("models/*/model_config.json"))
    if not onnx_path.is_file() or len(configs) != 1:
        raise DataError(
            f"{root}: expected export/model.onnx and exactly one models/<strategy>/model_config.json, found "
            f"onnx={onnx_path.is_file()} configs={[str(c.relative_to(root)) for c in configs]}"
        )
    model_dir = configs[0].parent
    config = json.loads(configs[0].read_text())
    preprocessing = json.loads((model_dir / "preprocessing" / "data_config.json").read_text())
    tokenizer = None
    if config["kind"] == "transformers":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "preprocessing"))
    session = ort.InferenceSession(str(onnx_path), providers=providers())
    return ServedModel(session, config, preprocessing, tokenizer, version)


def score(model: ServedModel, df: pd.DataFrame, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits, calibrated probabilities) for every row of ``df``, in row order."""
    column = model.config["input_column"]
    if column not in df.columns:
        raise DataError(f"input is missing the column {column!r} the model was trained on (has {list(df.columns)})")
    if "example_id" not in df.columns:
        df = df.assign(example_id=[str(i) for i in range(len(df))])
    enc = encode_split(df, column, model.labels, model.preprocessing, model.tokenizer)
    transform = image_transform(model.preprocessing, False) if model.config["kind"] == "timm" else None
    pad_id = int(getattr(model.tokenizer, "pad_token_id", 0) or 0)
    names = [i.name for i in model.session.get_inputs()]
    logits = np.zeros((len(enc), len(model.labels)), np.float32)
    probs = np.zeros_like(logits)
    with tqdm(total=len(enc), desc="scoring", unit="ex", leave=False, disable=None) as bar:
        for start in range(0, len(enc), batch_size):
            idx = np.arange(start, min(start + batch_size, len(enc)))
            feeds = {n: t.numpy() for n, t in zip(names, collate(enc, idx, pad_id, transform), strict=True)}
            out_logits, out_probs = model.session.run(["logits", "probabilities"], feeds)
            logits[idx], probs[idx] = out_logits, out_probs
            bar.update(len(idx))
    return logits, probs


def predictions_frame(model: ServedModel, df: pd.DataFrame, logits: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    labels = model.labels
    out = pd.DataFrame({
        "example_id": df["example_id"].astype(str).to_numpy() if "example_id" in df else np.arange(len(df)).astype(str),
        "prediction": [labels[i] for i in probs.argmax(1)],
        "confidence": probs.max(1),
        "model_version": model.version,
    })
    for j, name in enumerate(labels):
        out[f"prob_{name}"] = probs[:, j]
    return out


def score_registered(spec: ModelSpec, version: str, examples: pd.DataFrame) -> np.ndarray:
    """Logits of a registered version on ``examples`` (how the evaluation re-scores the champion)."""
    from tl_core.registry import Registry

    path = Registry.for_spec(spec).load_version(version)
    logits, _ = score(open_model_dir(path, version), examples)
    return logits


def read_table(uri_or_path: str) -> pd.DataFrame:
    if uri_or_path.startswith(("s3://", "file://")):
        from tl_core.store import read_uri

        return pd.read_parquet(io.BytesIO(read_uri(uri_or_path)))
    return pd.read_parquet(uri_or_path)


def write_table(df: pd.DataFrame, uri_or_path: str) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    if uri_or_path.startswith(("s3://", "file://")):
        from tl_core.store import split_uri

        store, key = split_uri(uri_or_path)
        store.put_bytes(key, buf.getvalue())
    else:
        Path(uri_or_path).write_bytes(buf.getvalue())
