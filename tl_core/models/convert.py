"""Key maps: how a state dict shipped under another project's tensor names becomes a timm model's, verified.

A key map pairs every source tensor with one target tensor (``backbone.key_map``). ``apply_key_map`` checks the
pairs before anything is loaded: the source and target keys are covered exactly once, and every pair has equal
shapes; the first mismatch is an error that names the source key, the target key and both shapes.

- ``identity``: the file already uses the model's names.
- ``by_position``: the i-th source tensor is the i-th target tensor (both in state-dict order).
- ``lukemelas_efficientnet``: the EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.N._bn0``, ``_fc``) onto
  timm's EfficientNet: by position, each pair of the same kind (weight, bias, running_mean, ...), and the
  classifier (``_fc.*``) dropped when the model has none (``num_classes=0``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from tl_core.errors import TLError

Pairs = list[tuple[str, str]]
Mapped = tuple[Pairs, list[str]]  # the pairs, and the source keys the map drops on purpose (e.g. a classifier)


class KeyMapError(TLError):
    """A key map does not fit the model: the message names the first source and target tensor that disagree."""


def _shape(t: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in t.shape)


def _by_position(source: Sequence[str], target: Sequence[str]) -> Pairs:
    if len(source) != len(target):
        first = min(len(source), len(target))
        extra = source[first] if len(source) > first else target[first]
        side = "source" if len(source) > first else "target"
        raise KeyMapError(f"by-position key map: the source has {len(source)} tensors, the model {len(target)}; "
                          f"the first unmatched is {side} key {extra!r}")
    return list(zip(source, target, strict=True))


def _identity(source: Sequence[str], target: Sequence[str]) -> Mapped:
    missing = [k for k in target if k not in set(source)]
    if missing:
        raise KeyMapError(f"identity key map: the model's tensor {missing[0]!r} is not in the source "
                          f"({len(missing)} missing of {len(target)}); set backbone.key_map")
    return [(k, k) for k in target], [k for k in source if k not in set(target)]


def _lukemelas_efficientnet(source: Sequence[str], target: Sequence[str]) -> Mapped:
    has_head = any(k.startswith("classifier.") for k in target)
    src = [k for k in source if has_head or not k.startswith("_fc.")]
    pairs = _by_position(src, target)
    for s, t in pairs:
        if s.rsplit(".", 1)[-1] != t.rsplit(".", 1)[-1]:
            raise KeyMapError(f"lukemelas_efficientnet key map: source key {s!r} pairs with target key {t!r}, "
                              "tensors of another kind; the model is not the source's architecture")
    return pairs, [k for k in source if k not in set(src)]


KEY_MAPS: dict[str, Callable[[Sequence[str], Sequence[str]], Mapped]] = {
    "identity": _identity, "by_position": lambda s, t: (_by_position(s, t), []),
    "lukemelas_efficientnet": _lukemelas_efficientnet,
}


def key_pairs(name: str, source: Sequence[str], target: Sequence[str]) -> Mapped:
    """The (source key, target key) pairs of key map ``name`` and the source keys it drops."""
    if name not in KEY_MAPS:
        raise KeyMapError(f"unknown key map {name!r}; expected one of {sorted(KEY_MAPS)}")
    return KEY_MAPS[name](list(source), list(target))


def apply_key_map(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], pairs: Pairs,
                  dropped: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The source's tensors under the target's keys, after checking that the pairs cover the target and the source
    (less ``dropped``) exactly once, with equal shapes."""
    kept = {k: v for k, v in source.items() if k not in set(dropped)}
    for side, keys, named in (("source", kept, [s for s, _ in pairs]), ("target", target, [t for _, t in pairs])):
        paired = set(named)
        unpaired = [k for k in keys if k not in paired]
        unknown = [k for k in named if k not in keys]
        if unpaired or unknown or len(set(named)) != len(named):
            dupes = sorted({k for k in named if named.count(k) > 1})
            raise KeyMapError(f"key map does not cover the {side} exactly once: unpaired {unpaired[:3]}, "
                              f"not in the {side} {unknown[:3]}, paired twice {dupes[:3]}")
    for s, t in pairs:
        if _shape(source[s]) != _shape(target[t]):
            raise KeyMapError(f"key map mismatch: source key {s!r} has shape {list(_shape(source[s]))}, target key "
                              f"{t!r} has shape {list(_shape(target[t]))}")
    return {t: source[s] for s, t in pairs}


def load_converted(module: torch.nn.Module, path: str, key_map: str) -> int:
    """Load the state-dict file ``path`` (tensors only: ``weights_only=True``) into ``module`` through ``key_map``;
    returns the number of tensors loaded."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(source, Mapping) or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise KeyMapError(f"{path}: expected a plain state dict (tensor name -> tensor), got {type(source).__name__}")
    target = module.state_dict()
    pairs, dropped = key_pairs(key_map, list(source), list(target))
    state = apply_key_map(source, target, pairs, dropped)
    module.load_state_dict(state, strict=True)
    return len(state)
