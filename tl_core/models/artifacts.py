"""Model files: ``model.safetensors`` + ``model_config.json`` + ``preprocessing/`` (tokenizer files and the
backbone's config for text; ``data_config.json`` for images). Only safetensors and JSON are ever read
back - never a pickle."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from tl_core.config import BackboneSpec, ModelSpec
from tl_core.models.backbones import Backbone, Classifier
from tl_core.store import ObjectStore, join_key

FORMAT = "tl-classifier/1"


def model_config(spec: ModelSpec, backbone: Backbone, strategy: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": spec.name,
        "strategy": strategy,
        "labels": list(spec.labels),
        "kind": backbone.kind,
        "num_features": backbone.num_features,
        "backbone": spec.backbone.model_dump(mode="json"),
        "preprocessing": backbone.preprocessing,
        "input_column": spec.data.input_column,
        "seed": spec.train.seed,
        "train": spec.train.model_dump(mode="json"),
        "spec_fingerprint": spec.fingerprint(),
    }


def save_model(store: ObjectStore, prefix: str, model: Classifier, backbone: Backbone, config: dict[str, Any]) -> None:
    """Write the model files under ``prefix`` (a key prefix in ``store``)."""
    with tempfile.TemporaryDirectory(prefix="tl-save-") as tmp:
        root = Path(tmp)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(root / "model.safetensors"), metadata={"format": FORMAT})
        (root / "model_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        prep = root / "preprocessing"
        prep.mkdir()
        if backbone.kind == "transformers":
            backbone.tokenizer.save_pretrained(str(prep))
            backbone.module.config.save_pretrained(str(prep))
        (prep / "data_config.json").write_text(json.dumps(backbone.preprocessing, indent=2, sort_keys=True))
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            store.put_bytes(join_key(prefix, str(path.relative_to(root))), path.read_bytes())


@dataclass
class LoadedModel:
    model: Classifier
    config: dict[str, Any]
    preprocessing: dict[str, Any]
    tokenizer: Any

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])


def load_model_dir(directory: str | Path) -> LoadedModel:
    """Rebuild a classifier from its files (no network: the architecture comes from the saved configs)."""
    root = Path(directory)
    config = json.loads((root / "model_config.json").read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{root / 'model_config.json'}: format must be {FORMAT!r}, got {config.get('format')!r}")
    prep_dir = root / "preprocessing"
    preprocessing = json.loads((prep_dir / "data_config.json").read_text())
    tokenizer = None
    module: nn.Module
    if config["kind"] == "transformers":
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(prep_dir))
        module = AutoModel.from_config(AutoConfig.from_pretrained(str(prep_dir)), add_pooling_layer=False)
    else:
        import timm

        bb = BackboneSpec.model_validate(config["backbone"])
        kwargs = dict(bb.model_kwargs)
        kwargs.pop("pretrained_cfg_overlay", None)
        module = timm.create_model(bb.name, pretrained=False, num_classes=0, **kwargs)
    model = Classifier(module, config["kind"], int(config["num_features"]), len(config["labels"]))
    state = load_file(str(root / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{root / 'model.safetensors'} does not match the architecture in model_config.json: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return LoadedModel(model.eval(), config, preprocessing, tokenizer)
