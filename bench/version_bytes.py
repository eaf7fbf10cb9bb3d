"""Bytes per registered LoRA version: a merged copy of the backbone (before) vs adapters + head + buffers naming
the base by fingerprint (after), for the real all-MiniLM-L6-v2 of configs/support-tickets.yaml (or --spec). The
ONNX artifact stays merged in both layouts and is measured by a real export.

    .venv/bin/python bench/version_bytes.py [--spec configs/support-tickets.yaml] [--r 8]

The model folder is written by the same functions a training run uses (tl_core.models.artifacts), with LoRA
applied as training applies it; the byte counts do not depend on the trained values, so no training is run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tl_core.config import load_spec, parse_spec
from tl_core.export.onnx_export import encode_for, export_onnx
from tl_core.models.adapters import adapter_state, apply_lora, base_fingerprint, merge_lora
from tl_core.models.artifacts import load_model_dir, model_config, save_adapter, save_model
from tl_core.models.backbones import Classifier, load_backbone
from tl_core.models.preprocessing import collate
from tl_core.store import FileStore


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="configs/support-tickets.yaml")
    parser.add_argument("--r", type=int, default=None, help="LoRA rank (default: the spec's)")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    if args.r:
        raw = spec.model_dump(mode="json")
        raw["train"]["lora"]["r"] = args.r
        spec = parse_spec(raw)
    torch.manual_seed(0)
    backbone = load_backbone(spec)
    model = Classifier(backbone.module, backbone.kind, backbone.num_features, len(spec.labels))
    base = base_fingerprint(model.backbone)
    settings = apply_lora(model, backbone, spec)
    for name, p in model.named_parameters():  # stand-in for training: adapters that are not zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.01)
    adapter = {"tensors": adapter_state(model), "lora": settings, "base_fingerprint": base}
    config = model_config(spec, backbone, "lora")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = FileStore(root)
        save_adapter(store, "after", adapter, backbone, config)
        merged = merge_lora(model)
        save_model(store, "before", merged, backbone, config)
        loaded = load_model_dir(root / "after")
        rows = pd.DataFrame({"example_id": ["a", "b"], "text": ["my parcel is late", "reset my password"],
                             "label": spec.labels[:2]})
        enc, transform, pad_id = encode_for(loaded, rows)
        batch = collate(enc, np.arange(len(enc)), pad_id, transform)
        with torch.no_grad():
            diff = float((loaded.model(*batch) - merged(*batch)).abs().max())
        onnx_path = root / "model.onnx"
        export_onnx(loaded, 1.0, batch, onnx_path, spec.export.opset)
        before, after, onnx = folder_bytes(root / "before"), folder_bytes(root / "after"), onnx_path.stat().st_size
    print(f"model {spec.name}: backbone {spec.backbone.name}, LoRA r={settings['r']} on {settings['target_modules']}")
    print(f"reloaded from adapter + base vs merged in memory: max |logit diff| {diff:.2e}")
    print(f"model folder  before (merged) {before / 1e6:8.2f} MB   after (adapter) {after / 1e6:8.2f} MB   "
          f"ratio {before / after:6.1f}x")
    print(f"per version   before {(before + onnx) / 1e6:8.2f} MB   after {(after + onnx) / 1e6:8.2f} MB   "
          f"(ONNX, merged in both: {onnx / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
