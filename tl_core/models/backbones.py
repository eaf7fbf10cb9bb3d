"""Backbones (timm for images, transformers for text) and the classifier around them.

The backbone's pretrained config is the one source of preprocessing: for images the timm data
config (input size, mean/std, interpolation, crop), for text the tokenizer and its max length. It is
saved with the model (``preprocessing/``) and reused at export and scoring (tl_core.models.preprocessing).
Where the weights come from (resolve, fetch, fingerprint) is tl_core.models.weights; LoRA is
tl_core.models.adapters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_core.config import ModelSpec
from tl_core.models.convert import load_converted
from tl_core.models.weights import resolve_weights_path
from tl_core.models.weights import sibling_key as sibling_key  # re-exported: tl_core.train.pretrain_source uses it

logger = logging.getLogger(__name__)
# The logger transformers' from_pretrained logs its load report on (transformers.utils.loading_report).
HF_LOAD_REPORT_LOGGER = "transformers.modeling_utils"


def _timm_cfg_overlay(cfg_file: Path) -> dict[str, Any]:
    """The fields of a weights file's pretrained_cfg.json that timm's PretrainedCfg knows."""
    import dataclasses

    from timm.models import PretrainedCfg

    cfg = json.loads(cfg_file.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_file}: expected a JSON object of timm pretrained-config fields, "
                         f"got {type(cfg).__name__}")
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(
            f"{cfg_file}: unknown timm pretrained-config fields {unknown}; expected only fields of "
            f"timm.models.PretrainedCfg (input_size, mean, std, interpolation, crop_pct, ...). Provenance belongs in "
            "a sibling source.json (re-run `tl pretrain-source` to rewrite an older file)"
        )
    return cfg


@dataclass
class Backbone:
    """A feature extractor plus the facts the rest of the pipeline needs about it."""

    module: Any  # nn.Module (timm model or transformers PreTrainedModel)
    kind: str  # "timm" | "transformers"
    num_features: int
    preprocessing: dict[str, Any]
    tokenizer: Any = None  # transformers tokenizer (text only)

    def blocks(self) -> list[list[str]]:
        """Parameter names grouped into blocks, bottom (input side) to top."""
        if self.kind == "timm":
            from timm.models import group_parameters

            groups = group_parameters(self.module, self.module.group_matcher(coarse=True))  # type: ignore[operator]
            return [list(names) for _, names in sorted(groups.items())]
        names = [n for n, _ in self.module.named_parameters()]
        layers: dict[int, list[str]] = {}
        embeddings, rest = [], []
        for n in names:
            parts = n.split(".")
            if "layer" in parts and parts[parts.index("layer") + 1].isdigit():
                layers.setdefault(int(parts[parts.index("layer") + 1]), []).append(n)
            elif n.startswith("embeddings"):
                embeddings.append(n)
            else:
                rest.append(n)
        return [embeddings] + [layers[i] for i in sorted(layers)] + ([rest] if rest else [])


def _timm_backbone(spec: ModelSpec, pretrained: bool) -> Backbone:
    import timm

    kwargs: dict[str, Any] = dict(spec.backbone.model_kwargs)
    # The weights' pretrained config is read for `scratch` (pretrained=False) too: the same architecture
    # from random init must see the same preprocessing (input size, normalisation) as the transfer runs.
    path = resolve_weights_path(spec.backbone)
    # Spec-level overrides of the pretrained config (e.g. input_size) come first, the weights file after.
    overlay: dict[str, Any] = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    package = spec.backbone.weights == "package"
    if path and not package:
        cfg_file = Path(path).parent / "pretrained_cfg.json"
        if cfg_file.exists():
            overlay.update(_timm_cfg_overlay(cfg_file))
        if pretrained:
            overlay["file"] = path
    if spec.backbone.input_size:
        overlay["input_size"] = (3, spec.backbone.input_size, spec.backbone.input_size)
    use_pretrained = pretrained and not package and (bool(path) or spec.backbone.weights == "hub")
    module: Any = timm.create_model(
        spec.backbone.name,
        pretrained=use_pretrained,
        num_classes=0,
        pretrained_cfg_overlay=overlay or None,
        **kwargs,
    )
    if overlay:
        module.pretrained_cfg.update({k: v for k, v in overlay.items() if k != "file"})
    if pretrained and package and path:
        # timm's pretrained config (mean/std, interpolation, crop) stays the preprocessing source; the package's
        # state dict is loaded through the declared key map, every shape checked.
        n = load_converted(module, path, spec.backbone.key_map)
        logger.info("loaded %d tensors from %s through key map %s", n, path, spec.backbone.key_map)
    data_config = timm.data.resolve_data_config({}, model=module)
    prep = {
        "kind": "image",
        "input_size": list(data_config["input_size"]),
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "interpolation": data_config["interpolation"],
        "crop_pct": float(data_config.get("crop_pct", 1.0)),
        "crop_mode": data_config.get("crop_mode", "center"),
    }
    return Backbone(module=module, kind="timm", num_features=int(module.num_features), preprocessing=prep)


class _HoldLoadReport(logging.Filter):
    """Keeps transformers' load report (its table of UNEXPECTED / MISSING keys, a warning on its own stderr
    handler at every from_pretrained) out of the output; the caller reports the load in its own words."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" not in str(record.msg):
            return True
        self.held.append(record.getMessage())
        return False


@contextlib.contextmanager
def _load_report_held() -> Iterator[None]:
    """While loading: transformers' load report is held back; a load that fails shows it (as an error of ours,
    its table is what explains the failure)."""
    hold = _HoldLoadReport()
    source = logging.getLogger(HF_LOAD_REPORT_LOGGER)
    source.addFilter(hold)
    try:
        yield
    except Exception:
        for report in hold.held:
            logger.error("%s", re.sub(r"\x1b\[[0-9;]*m", "", report))
        raise
    finally:
        source.removeFilter(hold)


def _report_load(source: str, info: dict[str, Any]) -> None:
    """What transformers' load report said, in one record of ours: checkpoint tensors the backbone does not use
    (the pooler: the backbone is built without it) at debug; tensors of the backbone missing from the checkpoint
    (initialised at random) or of another shape at warning."""
    unused = sorted(str(k) for k in info.get("unexpected_keys") or ())
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    mismatched = sorted(str(k[0]) for k in info.get("mismatched_keys") or ())
    if unused:
        logger.debug("text backbone %s: %d checkpoint tensor(s) not used by the backbone (expected: it is built "
                     "without the pooler and heads): %s", source, len(unused), ", ".join(unused))
    if missing or mismatched:
        logger.warning("text backbone %s: %d tensor(s) of the backbone missing from the checkpoint%s, initialised "
                       "at random: %s", source, len(missing) + len(mismatched),
                       f" ({len(mismatched)} of another shape)" if mismatched else "",
                       ", ".join([*missing, *mismatched]))


def _hf_backbone(spec: ModelSpec, pretrained: bool) -> Backbone:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = resolve_weights_path(spec.backbone)
    source = path or spec.backbone.name
    revision = None if path else spec.backbone.revision
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
    module: Any
    if pretrained and spec.backbone.weights != "none":
        with _load_report_held():
            module, info = AutoModel.from_pretrained(source, revision=revision, add_pooling_layer=False,
                                                     output_loading_info=True)
        _report_load(str(source), info)
    else:
        module = AutoModel.from_config(AutoConfig.from_pretrained(source, revision=revision), add_pooling_layer=False)
    prep = {"kind": "text", "max_length": spec.backbone.max_length}
    return Backbone(
        module=module,
        kind="transformers",
        num_features=int(module.config.hidden_size),
        preprocessing=prep,
        tokenizer=tokenizer,
    )


def load_backbone(spec: ModelSpec, pretrained: bool = True) -> Backbone:
    """Build the backbone of ``spec``; ``pretrained=False`` gives the same architecture from random init."""
    if spec.backbone.library == "timm":
        return _timm_backbone(spec, pretrained)
    return _hf_backbone(spec, pretrained)


class Classifier(nn.Module):
    """Backbone features -> linear head. Text features are the attention-masked mean of token states."""

    def __init__(self, backbone: nn.Module, kind: str, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        self.head = nn.Linear(num_features, num_classes)

    def features(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.kind == "timm":
            return self.backbone(inputs[0])  # type: ignore[no-any-return]
        input_ids, attention_mask = inputs
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(*inputs))  # type: ignore[no-any-return]
