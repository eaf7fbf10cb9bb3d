"""Model files: ``model.safetensors`` + ``model_config.json`` + ``preprocessing/`` (tokenizer files and the
backbone's config for text; ``data_config.json`` for images). Only safetensors and JSON are ever read
back - never a pickle.

A LoRA model whose base can be loaded again stores ``adapter.safetensors`` (adapters, head, buffers) instead
of a merged copy; its ``model_config.json`` names the base by the fingerprint of its tensors and holds the
LoRA settings. Loading rebuilds the base from its source, refuses another base by name, and merges."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from tl_core.artifacts import ADAPTER_FILE, MERGED_FILE, ModelConfig, dump_artifact, parse_artifact
from tl_core.config import BackboneSpec, ModelSpec
from tl_core.errors import BaseMismatchError
from tl_core.models.backbones import Backbone, Classifier
from tl_core.store import ObjectStore, join_key

FORMAT = "tl-classifier/1"


def model_config(spec: ModelSpec, backbone: Backbone, strategy: str) -> ModelConfig:
    """The config of a model trained from ``spec`` on ``backbone`` (stored merged; save_adapter turns it into an
    adapter config)."""
    return ModelConfig(
        format=FORMAT, model=spec.name, strategy=strategy, labels=list(spec.labels), kind=backbone.kind,
        num_features=backbone.num_features, backbone=spec.backbone.model_dump(mode="json"),
        preprocessing=backbone.preprocessing, input_column=spec.data.input_column, seed=spec.train.seed,
        train=spec.train.model_dump(mode="json"), spec_fingerprint=spec.fingerprint(), storage="merged")


def save_model(store: ObjectStore, prefix: str, model: Classifier, backbone: Backbone, config: ModelConfig) -> None:
    """Write the model files under ``prefix`` (a key prefix in ``store``)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    merged = ModelConfig.model_validate({**config.model_dump(), "storage": "merged", "base": None, "lora": None})
    _write_files(store, prefix, MERGED_FILE, state, backbone, merged)


def save_adapter(store: ObjectStore, prefix: str, adapter: dict[str, Any], backbone: Backbone,
                 config: ModelConfig) -> None:
    """Write a LoRA model as its adapters + head + buffers and a reference to the base (``adapter`` holds
    ``tensors``, ``lora`` settings and ``base_fingerprint``, as tl_core.train.run builds it)."""
    from tl_core.models.weights import weights_fingerprint

    bb = BackboneSpec.model_validate(config.backbone)
    base = {"fingerprint": adapter["base_fingerprint"], "weights_fingerprint": weights_fingerprint(bb) or None,
            "name": bb.name, "revision": bb.revision, "weights": bb.weights}
    full = ModelConfig.model_validate({**config.model_dump(), "storage": "adapter", "base": base,
                                       "lora": adapter["lora"]})
    _write_files(store, prefix, ADAPTER_FILE, adapter["tensors"], backbone, full)


def _write_files(store: ObjectStore, prefix: str, weights_name: str, state: dict[str, Any], backbone: Backbone,
                 config: ModelConfig) -> None:
    with tempfile.TemporaryDirectory(prefix="tl-save-") as tmp:
        root = Path(tmp)
        save_file(state, str(root / weights_name), metadata={"format": FORMAT})
        (root / "model_config.json").write_bytes(dump_artifact(config))
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
    """A rebuilt classifier with its config, preprocessing (the config's) and tokenizer (text only)."""

    model: Classifier
    config: ModelConfig
    preprocessing: dict[str, Any]
    tokenizer: Any

    @property
    def labels(self) -> list[str]:
        return list(self.config.labels)


def read_model_config(model_dir: Path) -> ModelConfig:
    """A model folder's model_config.json (ArtifactError naming the file when it is not one)."""
    path = model_dir / "model_config.json"
    return parse_artifact(ModelConfig, path.read_bytes(), str(path))


def load_model_dir(directory: str | Path) -> LoadedModel:
    """Rebuild a classifier from its files (the architecture comes from the saved configs; a LoRA model stored
    as adapters also loads its base from the recorded source, as training did). The preprocessing contract is
    the config's (``preprocessing/data_config.json`` is a copy for people)."""
    root = Path(directory)
    config = read_model_config(root)
    prep_dir = root / "preprocessing"
    tokenizer = None
    if config.kind == "transformers":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(prep_dir))
    if config.storage == "adapter":
        return LoadedModel(_adapted_model(root, config).eval(), config, config.preprocessing, tokenizer)
    module: nn.Module
    if config.kind == "transformers":
        from transformers import AutoConfig, AutoModel

        module = AutoModel.from_config(AutoConfig.from_pretrained(str(prep_dir)), add_pooling_layer=False)
    else:
        import timm

        bb = BackboneSpec.model_validate(config.backbone)
        kwargs = dict(bb.model_kwargs)
        kwargs.pop("pretrained_cfg_overlay", None)
        module = timm.create_model(bb.name, pretrained=False, num_classes=0, **kwargs)
    model = Classifier(module, config.kind, config.num_features, len(config.labels))
    state = load_file(str(root / MERGED_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{root / MERGED_FILE} does not match the architecture in model_config.json: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return LoadedModel(model.eval(), config, config.preprocessing, tokenizer)


def _adapted_model(root: Path, config: ModelConfig) -> Classifier:
    """Base from its source (checked by fingerprint) + the stored adapters, head and buffers, merged."""
    from tl_core.models.adapters import apply_lora_settings, base_fingerprint, merge_lora
    from tl_core.models.backbones import load_backbone

    bb = BackboneSpec.model_validate(config.backbone)
    if config.base is None or config.lora is None:
        raise ValueError(f"{root / 'model_config.json'}: storage 'adapter' needs 'base' and 'lora' (got base "
                         f"{config.base!r}, lora {config.lora!r})")
    spec = ModelSpec.model_validate({
        "name": config.model, "modality": "text" if bb.library == "transformers" else "image",
        "labels": config.labels, "backbone": config.backbone, "data": {"input_column": config.input_column}})
    backbone = load_backbone(spec, pretrained=True)
    expected, got = config.base.fingerprint, base_fingerprint(backbone.module)
    if got != expected:
        source = bb.path or bb.name
        raise BaseMismatchError(
            f"{root / 'model_config.json'}: the LoRA adapters were trained on base {bb.name!r} with tensor "
            f"fingerprint {expected[:16]}..., but the base loaded from {bb.weights} source {source!r} has "
            f"fingerprint {got[:16]}...; restore that checkpoint (or register a merged model)")
    model = Classifier(backbone.module, config.kind, config.num_features, len(config.labels))
    apply_lora_settings(model, config.lora)
    state = load_file(str(root / ADAPTER_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if ".lora_" in k or k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(f"{root / ADAPTER_FILE} does not match the LoRA settings in model_config.json: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return merge_lora(model)
