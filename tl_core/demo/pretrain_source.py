"""`tl pretrain-source`: a real pretrained image backbone for the demo, made here.

The hub is unreachable on these machines, so the image demo's backbone is pretrained on a *different
source task* - printed digit glyphs rendered from the fonts installed on the machine, with
augmentation - and saved to the store as ``model.safetensors`` + ``pretrained_cfg.json``. The digits
spec then transfers it to real handwritten digits (printed glyphs -> handwriting).
"""

from __future__ import annotations

import glob
import json
import logging
import time
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import nn
from tqdm.auto import tqdm

from tl_core.config import ModelSpec
from tl_core.errors import DataError
from tl_core.models.backbones import sibling_key
from tl_core.store import split_uri

logger = logging.getLogger(__name__)

SIZE = 32
FONT_GLOBS = ("/usr/share/fonts/**/*.ttf", "/usr/share/fonts/**/*.otf")


def installed_fonts() -> list[str]:
    fonts = sorted({p for pattern in FONT_GLOBS for p in glob.glob(pattern, recursive=True)})
    if not fonts:
        raise DataError("no TrueType/OpenType fonts under /usr/share/fonts (install fonts-dejavu-core)")
    return fonts


def render_glyphs(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Digit glyphs 0-9 from every installed font: random size, position, rotation, stroke and noise."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    fonts = installed_fonts()
    images = np.zeros((per_class * 10, SIZE, SIZE), dtype=np.uint8)
    labels = np.repeat(np.arange(10), per_class)
    for i, digit in enumerate(labels):
        font = ImageFont.truetype(fonts[rng.integers(len(fonts))], int(rng.integers(18, 30)))
        canvas = Image.new("L", (48, 48), 0)
        draw = ImageDraw.Draw(canvas)
        xy = (24.0 + float(rng.integers(-4, 5)), 24.0 + float(rng.integers(-4, 5)))
        draw.text(xy, str(digit), fill=255, font=font, anchor="mm", stroke_width=int(rng.integers(0, 2)),
                  stroke_fill=255)
        canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            canvas = canvas.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
        arr = np.asarray(canvas.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32)
        noisy = arr + rng.normal(0, 12, arr.shape)
        images[i] = noisy.clip(0, 255).astype(np.uint8)
    return images, labels


def pretrain_source(spec: ModelSpec, per_class: int = 300, epochs: int = 4, seed: int = 0) -> dict[str, Any]:
    """Train spec.backbone.name on rendered glyphs and write it to spec.backbone.path (a store URI)."""
    import timm

    if spec.backbone.library != "timm" or spec.backbone.weights != "store" or not spec.backbone.path:
        raise ValueError(
            "pretrain-source needs an image spec with backbone.weights 'store' and backbone.path set to the store "
            f"URI to write, got library={spec.backbone.library!r} weights={spec.backbone.weights!r}"
        )
    torch.manual_seed(seed)
    images, labels = render_glyphs(per_class, seed)
    x = torch.from_numpy(images).float().div(255).sub(0.5).div(0.5).unsqueeze(1).repeat(1, 3, 1, 1)
    y = torch.from_numpy(labels)
    kwargs = {k: v for k, v in spec.backbone.model_kwargs.items() if k != "pretrained_cfg_overlay"}
    model: Any = timm.create_model(spec.backbone.name, pretrained=False, num_classes=10, **kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps = epochs * ((len(x) + 63) // 64)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    history = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        correct, total, loss_sum = 0, 0, 0.0
        for start in tqdm(range(0, len(x), 64), desc=f"pretrain epoch {epoch + 1}/{epochs}", leave=False,
                          disable=None):
            idx = order[start : start + 64]
            logits = model(x[idx])
            loss = nn.functional.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            total += len(idx)
        history.append({"epoch": epoch + 1, "loss": loss_sum / total, "accuracy": correct / total})
        logger.info("pretrain epoch %d: loss %.3f acc %.3f", epoch + 1, loss_sum / total, correct / total)
    model.reset_classifier(0)  # the backbone only: the target task brings its own head
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    store, key = split_uri(spec.backbone.path)
    store.put_bytes(key, save(state))
    # pretrained_cfg.json holds timm PretrainedCfg fields only (it becomes the overlay at load time);
    # what the backbone was trained on goes beside it in source.json.
    pretrained_cfg = {"input_size": [3, SIZE, SIZE], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                      "interpolation": "bilinear", "crop_pct": 1.0, "num_classes": 0}
    source = {"source_task": "printed digit glyphs rendered from installed fonts", "architecture": spec.backbone.name,
              "examples": len(x), "epochs": epochs, "seed": seed, "fonts": len(installed_fonts()), "history": history}
    store.put_bytes(sibling_key(key, "pretrained_cfg.json"), json.dumps(pretrained_cfg, indent=2).encode())
    store.put_bytes(sibling_key(key, "source.json"), json.dumps(source, indent=2).encode())
    return {"uri": spec.backbone.path, "examples": len(x), "wall_s": time.perf_counter() - t0, "history": history}

