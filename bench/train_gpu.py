"""Training-step throughput of the project's own loop vs a tuned reference and a naive fp32 loop.

For each model (resnet50 and vit_small_patch16_224 at 224 px, batch 256; MiniLM- and BERT-base-shaped
text models at sequence 128, batch 64 and 256) it measures samples/s, in one run on one device, of:
  project   - tl_core.train.finetune.finetune (the real data path: Encoded -> batch_indices -> collate,
              bf16 autocast, channels_last, fused AdamW), head warm-up off so every step trains all weights
  reference - a minimal tuned loop (bf16 autocast, channels_last, fused AdamW), same model and batch
  naive     - fp32 eager, TF32 off
and frozen embedding throughput (project embed() vs pure inference). Prints ratios project/reference.
Random-init weights (the hub is unreachable); throughput does not depend on the weights' values.

    python bench/train_gpu.py                 # on a GPU machine
    python bench/train_gpu.py --smoke         # tiny shapes on CPU, to check the script itself
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from tl_core.config import parse_spec
from tl_core.models.backbones import Backbone, Classifier
from tl_core.models.embeddings import embed
from tl_core.models.preprocessing import Encoded
from tl_core.train.finetune import finetune


def text_backbone(layers: int, hidden: int, heads: int) -> Backbone:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=hidden * 4)
    return Backbone(BertModel(cfg, add_pooling_layer=False), "transformers", hidden,
                    {"kind": "text", "max_length": 128}, tokenizer=None)


def image_backbone(name: str, size: int) -> Backbone:
    import timm

    m = timm.create_model(name, pretrained=False, num_classes=0, img_size=size) if "vit" in name else \
        timm.create_model(name, pretrained=False, num_classes=0)
    return Backbone(m, "timm", int(m.num_features), {"kind": "image"})


class _Images(Encoded):
    """In-memory image tensors going through the project's batching (decode is skipped: data in memory)."""


def synthetic(kind: str, n: int, seq: int, size: int, classes: int) -> tuple[Encoded, Any]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    if kind == "transformers":
        values = [list(rng.integers(1000, 30000, seq)) for _ in range(n)]
        return Encoded("text", [str(i) for i in range(n)], values, labels), None
    pixels = torch.randn(n, 3, size, size)
    enc = Encoded("image", [str(i) for i in range(n)], list(range(n)), labels)

    def transform(_: Any) -> torch.Tensor:
        raise RuntimeError("unused")

    return enc, pixels


def project_rate(bb: Backbone, enc: Encoded, pixels: Any, batch: int, device: str, steps: int) -> float:
    import tl_core.train.finetune as ft

    spec = parse_spec({
        "name": "bench", "modality": "text" if bb.kind == "transformers" else "image", "labels": ["a", "b", "c"],
        "backbone": {"library": bb.kind, "name": "bench", "weights": "none"},
        "data": {"input_column": "text" if bb.kind == "transformers" else "image"},
        "train": {"strategies": ["full"], "epochs": 1, "warmup_epochs": 0, "batch_size": batch,
                  "eval_batch_size": batch, "device": device, "patience": 1},
    })
    model = Classifier(bb.module, bb.kind, bb.num_features, 3)
    if pixels is not None:  # images already in memory: collate picks rows instead of decoding files
        original = ft.iterate

        def iterate_pixels(data, bs, shuffle, gen, pad, tr):  # type: ignore[no-untyped-def]
            for idx, _ in original(Encoded("text", data.ids, [[0]] * len(data), data.labels), bs, shuffle, gen,
                                   pad, tr):
                yield idx, (pixels[idx],)

        ft.iterate = iterate_pixels
    try:
        val = Encoded(enc.kind, enc.ids[:batch], enc.values[:batch], enc.labels[:batch])
        train = Encoded(enc.kind, enc.ids[: batch * steps], enc.values[: batch * steps], enc.labels[: batch * steps])
        t0 = time.perf_counter()
        finetune(model, bb, "full", spec, train, val, (None, None), lambda: None, lambda blob: None)
        if device == "cuda":
            torch.cuda.synchronize()
        return len(train) / (time.perf_counter() - t0)
    finally:
        if pixels is not None:
            ft.iterate = original


def loop_rate(bb: Backbone, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, device: str, steps: int,
              tuned: bool) -> float:
    model = Classifier(bb.module, bb.kind, bb.num_features, 3).to(device)
    torch.backends.cuda.matmul.allow_tf32 = tuned
    torch.backends.cudnn.allow_tf32 = tuned
    if tuned and bb.kind == "timm" and device == "cuda":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=tuned and device == "cuda")
    inputs = tuple(x.to(device) for x in inputs)
    labels = labels.to(device)
    times = []
    for step in range(steps + 3):
        t0 = time.perf_counter()
        if tuned and device == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(*inputs).float(), labels)
        else:
            loss = nn.functional.cross_entropy(model(*inputs), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 3:
            times.append(time.perf_counter() - t0)
    return len(labels) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    if args.smoke:
        cases = [("bert-tiny seq16", lambda: text_backbone(2, 32, 2), 8, 16, 0),
                 ("test_resnet 32px", lambda: image_backbone("test_resnet", 32), 8, 0, 32)]
    else:
        cases = [("resnet50 224px", lambda: image_backbone("resnet50", 224), 256, 0, 224),
                 ("vit_small 224px", lambda: image_backbone("vit_small_patch16_224", 224), 256, 0, 224),
                 ("MiniLM-shape seq128", lambda: text_backbone(6, 384, 12), 64, 128, 0),
                 ("MiniLM-shape seq128", lambda: text_backbone(6, 384, 12), 256, 128, 0),
                 ("BERT-base-shape seq128", lambda: text_backbone(12, 768, 12), 64, 128, 0),
                 ("BERT-base-shape seq128", lambda: text_backbone(12, 768, 12), 256, 128, 0)]
    print(f"device: {name}; samples/s, median over {args.steps} steps")
    print(f"{'model':<24}{'batch':>6}{'project':>10}{'reference':>11}{'naive':>9}{'proj/ref':>10}"
          f"{'embed':>9}{'infer':>9}{'emb/inf':>9}")
    for label, make, batch, seq, size in cases:
        torch.manual_seed(0)
        bb = make()
        enc, pixels = synthetic(bb.kind, batch * args.steps, seq, size, 3)
        if bb.kind == "transformers":
            inputs: tuple[torch.Tensor, ...] = (torch.tensor(np.array(enc.values[:batch])),
                                                torch.ones(batch, seq, dtype=torch.long))
        else:
            inputs = (pixels[:batch],)
        labels = torch.tensor(enc.labels[:batch])
        proj = project_rate(make(), enc, pixels, batch, device, args.steps)
        ref = loop_rate(make(), inputs, labels, device, args.steps, tuned=True)
        naive = loop_rate(make(), inputs, labels, device, args.steps, tuned=False)
        model = Classifier(bb.module, bb.kind, bb.num_features, 3)
        sub = Encoded(enc.kind, enc.ids[: batch * 4], enc.values[: batch * 4], enc.labels[: batch * 4])
        if pixels is None:
            t0 = time.perf_counter()
            embed(model, sub, batch, torch.device(device), 0, None)
            emb = len(sub) / (time.perf_counter() - t0)
        else:
            emb = float("nan")  # image embed() decodes files; measured on in-memory text only
        model.eval().to(device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            for _ in range(4):
                model.features(*(x.to(device) for x in inputs))
            if device == "cuda":
                torch.cuda.synchronize()
            inf = batch * 4 / (time.perf_counter() - t0)
        print(f"{label:<24}{batch:>6}{proj:>10.0f}{ref:>11.0f}{naive:>9.0f}{proj / ref:>10.2f}"
              f"{emb:>9.0f}{inf:>9.0f}{emb / inf:>9.2f}")


if __name__ == "__main__":
    main()
