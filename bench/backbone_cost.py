"""What each backbone of a spec (its own and its `candidates`) costs to serve, measured side by side: parameters,
ONNX size and onnxruntime latency at batch 1 and the serving batch, timed round-robin across the backbones (one
timed call of each in turn, many rounds, median) so that a busy machine slows all of them alike.

    .venv/bin/python bench/backbone_cost.py [--spec configs/digits.yaml] [--rounds 30]

The train task measures the same figures (models/frozen[-<candidate>]/cost.json) one backbone at a time; this
bench is for comparing them on one machine at one moment. Random input of each backbone's own input size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tl_core.config import load_spec


def main() -> None:
    import onnxruntime as ort

    from tl_core.models.backbones import Classifier, load_backbone

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="configs/digits.yaml")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    spec = load_spec(args.spec)
    batches = sorted({1, spec.selection.serving_batch})
    sessions, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cand in [("default", spec), *((c.name, spec.model_copy(update={"backbone": c.backbone}))
                                                  for c in spec.candidates)]:
            backbone = load_backbone(cand)
            model = Classifier(backbone.module, backbone.kind, backbone.num_features, len(spec.labels)).eval()
            shape = backbone.preprocessing["input_size"]
            path = Path(tmp) / f"{name}.onnx"
            with torch.no_grad():
                torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), input_names=["pixel_values"],
                                  output_names=["logits"], dynamic_axes={"pixel_values": {0: "b"}}, dynamo=False)
            sessions[name] = (ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), shape)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            rows[name] = {"checkpoint": cand.backbone.name, "params_m": params,
                          "onnx_mb": path.stat().st_size / 1e6, "input": shape[-1]}
        rng = np.random.default_rng(0)
        for batch in batches:
            feeds = {n: {"pixel_values": rng.normal(size=(batch, *s)).astype(np.float32)}
                     for n, (_, s) in sessions.items()}
            times: dict[str, list[float]] = {n: [] for n in sessions}
            for n, (sess, _) in sessions.items():  # warm-up
                for _ in range(3):
                    sess.run(None, feeds[n])
            for _ in range(args.rounds):
                for n, (sess, _) in sessions.items():
                    t0 = time.perf_counter()
                    sess.run(None, feeds[n])
                    times[n].append((time.perf_counter() - t0) * 1000)
            for n in sessions:
                rows[n][f"b{batch}"] = statistics.median(times[n])
    base = rows["default"]
    print(f"{'backbone':<9}{'checkpoint':<20}{'input':>6}{'params':>9}{'ONNX MB':>9}"
          + "".join(f"{'ms @' + str(b):>10}{'ratio':>7}" for b in batches))
    for n, r in rows.items():
        print(f"{n:<9}{r['checkpoint']:<20}{r['input']:>6}{r['params_m']:>8.2f}M{r['onnx_mb']:>9.1f}"
              + "".join(f"{r[f'b{b}']:>10.2f}{r[f'b{b}'] / base[f'b{b}']:>7.2f}" for b in batches))
    print(f"(median of {args.rounds} round-robin runs per batch size; ratio: latency / the spec's own backbone's)")


if __name__ == "__main__":
    main()
