"""onnxruntime vs eager PyTorch for the text demo model (all-MiniLM-L6-v2 + linear head).

Prints median latency at batch 1 and throughput at batch 32, measured side by side in one run, and
the ratio. Goal (issue 7): onnxruntime >= 1.5x faster than eager PyTorch at batch 1 on CPU.

    .venv/bin/python bench/onnx_latency.py [--device cuda] [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from tl_core.config import load_spec
from tl_core.export.onnx_export import export_onnx, onnx_inputs
from tl_core.models.artifacts import LoadedModel
from tl_core.models.backbones import Classifier, load_backbone
from tl_core.models.preprocessing import collate, encode_split

TEXTS = [
    "I was charged twice for my subscription this month, please refund the second payment",
    "cannot log in after resetting my password, the app says my account is locked",
    "my parcel tracking has not updated for five days and the courier will not answer",
    "the export button crashes the desktop app every time I click it",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", default="configs/support-tickets.yaml")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    spec = load_spec(args.spec)
    backbone = load_backbone(spec)
    model = Classifier(backbone.module, backbone.kind, backbone.num_features, len(spec.labels)).eval()
    import pandas as pd

    df = pd.DataFrame({"example_id": [str(i) for i in range(32)], "text": [TEXTS[i % 4] for i in range(32)],
                       "label": spec.labels[0]})
    enc = encode_split(df, "text", spec.labels, backbone.preprocessing, backbone.tokenizer)
    b1, b32 = collate(enc, np.arange(1), 0), collate(enc, np.arange(32), 0)
    loaded = LoadedModel(model, {"kind": backbone.kind, "labels": spec.labels}, backbone.preprocessing,
                         backbone.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(loaded, 1.0, b32, path, spec.export.opset)
        providers = ["CUDAExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), providers=providers)
    device = torch.device(args.device)
    model.to(device)

    def eager(batch: tuple[torch.Tensor, ...]) -> None:
        model(*(t.to(device) for t in batch))
        if device.type == "cuda":
            torch.cuda.synchronize()

    def onnx_run(batch: tuple[torch.Tensor, ...]) -> None:
        session.run(["logits"], onnx_inputs("transformers", batch))

    def median_s(fn, batch) -> float:  # type: ignore[no-untyped-def]
        for _ in range(5):
            fn(batch)
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    # Interleave the two engines so background load affects both alike.
    rows = []
    for label, batch in (("batch 1 latency", b1), ("batch 32", b32)):
        e, o = median_s(eager, batch), median_s(onnx_run, batch)
        rows.append((label, len(batch[0]), e, o))
    print(f"text demo model ({spec.backbone.name}, seq len {b32[0].shape[1]}), device {args.device}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print(f"{'case':<16}{'eager ms':>10}{'onnx ms':>10}{'eager/s':>10}{'onnx/s':>10}{'speed-up':>10}")
    for label, n, e, o in rows:
        print(f"{label:<16}{e * 1e3:>10.2f}{o * 1e3:>10.2f}{n / e:>10.0f}{n / o:>10.0f}{e / o:>9.2f}x")


if __name__ == "__main__":
    main()
