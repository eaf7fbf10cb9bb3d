"""LoRA adapters (peft): which modules to adapt per architecture, applying them for training, merging them
back into the base weights (the exported model has exactly the base architecture's keys), and what a LoRA
version stores instead of a merged copy: the adapters, the head and the buffers, with the base named by the
fingerprint of its tensors (tl_core.models.artifacts reads it back and refuses another base)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from tl_core.config import BackboneSpec, ModelSpec
from tl_core.models.backbones import Backbone, Classifier


def base_fingerprint(module: nn.Module) -> str:
    """sha256 over every tensor of a (pretrained, unadapted) backbone: names, dtypes, shapes and bytes.

    It identifies the weights an adapter was trained on whatever their source (hub, local, store, package),
    so a version loaded on another worker is checked against the very tensors it was trained on.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def adapter_storable(backbone: BackboneSpec) -> bool:
    """A LoRA version can name its base only if the base can be loaded again: not from random init."""
    return backbone.weights != "none"


def adapter_state(model: Classifier) -> dict[str, torch.Tensor]:
    """What a LoRA version stores: the adapters, the head and every buffer (e.g. BatchNorm statistics).

    Buffers are a few kB; keeping them means a base whose statistics moved in training still round-trips.
    """
    buffers = {name for name, _ in model.named_buffers()}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if ".lora_" in k or k.startswith("head.") or k in buffers}


def default_lora_targets(backbone: Backbone) -> list[str]:
    """LoRA target modules chosen per architecture (overridable in the spec)."""
    # A suffix qualifies only if every module carrying it is a Linear or an ungrouped Conv2d (peft matches by
    # suffix, and refuses a grouped conv, e.g. EfficientNet's depthwise conv_dw, unless the rank divides groups).
    kinds: dict[str, set[bool]] = {}
    for n, m in backbone.module.named_modules():
        if n:
            ok = isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
            kinds.setdefault(n.split(".")[-1], set()).add(ok)
    names = {suffix for suffix, ok in kinds.items() if ok == {True}}
    for candidates in (["query", "key", "value"], ["q_proj", "k_proj", "v_proj"], ["qkv"], ["q_lin", "v_lin"]):
        if set(candidates) <= names:
            return candidates
    convs = sorted(n for n in names if n.startswith("conv"))
    if convs:
        return convs
    raise ValueError(
        f"cannot choose LoRA target modules for {type(backbone.module).__name__}: set train.lora.target_modules "
        f"(linear/conv module names seen: {sorted(names)[:12]})"
    )


def apply_lora(model: Classifier, backbone: Backbone, spec: ModelSpec) -> dict[str, Any]:
    """Wrap the backbone in peft LoRA layers; returns the settings used (stored with a LoRA version)."""
    lora = spec.train.lora
    settings = {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                "target_modules": list(lora.target_modules or default_lora_targets(backbone))}
    apply_lora_settings(model, settings)
    return settings


def apply_lora_settings(model: Classifier, settings: dict[str, Any]) -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=int(settings["r"]), lora_alpha=int(settings["alpha"]),
                        lora_dropout=float(settings["dropout"]), target_modules=list(settings["target_modules"]),
                        bias="none")
    model.backbone = get_peft_model(model.backbone, config)  # type: ignore[assignment]


def merge_lora(model: Classifier) -> Classifier:
    """Fold the adapters into the base weights; the result has exactly the base architecture's keys."""
    merge = getattr(model.backbone, "merge_and_unload", None)
    if merge is not None:
        model.backbone = merge()
    return model
