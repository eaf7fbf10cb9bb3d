"""LoRA adapters (peft): which modules to adapt per architecture, applying them for training and merging
them back into the base weights (the exported model has exactly the base architecture's keys)."""

from __future__ import annotations

from torch import nn

from tl_core.config import ModelSpec
from tl_core.models.backbones import Backbone, Classifier


def default_lora_targets(backbone: Backbone) -> list[str]:
    """LoRA target modules chosen per architecture (overridable in the spec)."""
    # A suffix qualifies only if every module carrying it is a Linear or Conv2d (peft matches by suffix).
    kinds: dict[str, set[bool]] = {}
    for n, m in backbone.module.named_modules():
        if n:
            kinds.setdefault(n.split(".")[-1], set()).add(isinstance(m, nn.Linear | nn.Conv2d))
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


def apply_lora(model: Classifier, backbone: Backbone, spec: ModelSpec) -> None:
    from peft import LoraConfig, get_peft_model

    targets = spec.train.lora.target_modules or default_lora_targets(backbone)
    config = LoraConfig(
        r=spec.train.lora.r, lora_alpha=spec.train.lora.alpha, lora_dropout=spec.train.lora.dropout,
        target_modules=targets, bias="none",
    )
    model.backbone = get_peft_model(model.backbone, config)  # type: ignore[assignment]


def merge_lora(model: Classifier) -> Classifier:
    """Fold the adapters into the base weights; the result has exactly the base architecture's keys."""
    merge = getattr(model.backbone, "merge_and_unload", None)
    if merge is not None:
        model.backbone = merge()
    return model
