"""A LoRA version is stored as its adapters + head + buffers naming the base by the fingerprint of its tensors;
loading rebuilds the base from its source, refuses another base by name, and gives the trained model's logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from model_fixtures import image_examples, image_spec, make_run, text_examples, text_spec, tiny_bert_dir
from tl_core.artifacts import ADAPTER_FILE, MERGED_FILE, ModelConfig, Selection
from tl_core.config import parse_spec
from tl_core.errors import BaseMismatchError
from tl_core.models.adapters import base_fingerprint
from tl_core.models.artifacts import load_model_dir, read_model_config
from tl_core.models.backbones import load_backbone
from tl_core.models.preprocessing import collate, encode_split, image_transform
from tl_core.registry import Registry
from tl_core.store import local_copy
from tl_core.train.run import run_train


def _test_logits(model_dir: Path, examples: object, spec: object) -> torch.Tensor:
    loaded = load_model_dir(model_dir)
    test = examples[examples["split"] == "test"].reset_index(drop=True)  # type: ignore[index]
    enc = encode_split(test, spec.data.input_column, spec.labels, loaded.preprocessing,  # type: ignore[attr-defined]
                       loaded.tokenizer)
    transform = image_transform(loaded.preprocessing, training=False) if loaded.tokenizer is None else None
    with torch.no_grad():
        return loaded.model(*collate(enc, np.arange(len(enc)), 0, transform))  # type: ignore[no-any-return]


def test_a_text_lora_version_round_trips_from_adapter_and_base(tmp_path: Path) -> None:
    bert = tiny_bert_dir(tmp_path / "models")
    spec = text_spec((tmp_path / "store").as_uri(), bert, strategies=["lora"], epochs=2)
    examples = text_examples()
    ctx = make_run(spec, examples)
    run_train(ctx, "lora")
    config = ctx.read(ModelConfig, "lora")
    assert config.storage == "adapter" and config.base is not None and config.lora is not None
    assert config.base.fingerprint == base_fingerprint(load_backbone(spec).module)
    assert config.lora["target_modules"] == ["query", "key", "value"]
    assert ctx.store.exists(ctx.model_key("lora", ADAPTER_FILE))
    assert not ctx.store.exists(ctx.model_key("lora", MERGED_FILE))
    stored = torch.from_numpy(ctx.read_npz("models/lora/logits/test.npz")["logits"])
    with local_copy(ctx.store, ctx.model_key("lora")) as model_dir:
        torch.testing.assert_close(_test_logits(model_dir, examples, spec), stored, atol=1e-5, rtol=1e-5)
    # registered: the version holds the adapters, verifies and loads back to the same logits
    ctx.write(Selection(selected="lora", primary_metric="macro_f1",
                        strategies={"lora": {"val_metric": 0.9, "strategy": "lora", "backbone": "default"}}))
    reg = Registry((tmp_path / "reg").as_uri(), spec.name, cache_dir=tmp_path / "cache")
    version = reg.register(ctx)
    assert "models/lora/adapter.safetensors" in reg.show(version)["files"]
    reg.verify(version)
    torch.testing.assert_close(_test_logits(reg.load_version(version) / "models/lora", examples, spec), stored,
                               atol=1e-5, rtol=1e-5)
    # ... and is a small fraction of a merged copy
    adapter_bytes = reg.show(version)["files"]["models/lora/adapter.safetensors"]["size"]
    merged_bytes = sum(p.numel() * p.element_size() for p in load_backbone(spec).module.state_dict().values())
    assert adapter_bytes < merged_bytes / 5, (adapter_bytes, merged_bytes)


def test_a_version_refuses_a_base_with_another_fingerprint(tmp_path: Path) -> None:
    bert = tiny_bert_dir(tmp_path / "models")
    spec = text_spec((tmp_path / "store").as_uri(), bert, strategies=["lora"], epochs=1)
    ctx = make_run(spec, text_examples())
    run_train(ctx, "lora")
    from transformers import BertModel

    moved = BertModel.from_pretrained(str(bert), add_pooling_layer=False)
    with torch.no_grad():
        moved.encoder.layer[0].attention.self.query.weight.add_(1e-3)  # one tensor of the base moved
    moved.save_pretrained(str(bert))
    with local_copy(ctx.store, ctx.model_key("lora")) as model_dir:
        with pytest.raises(BaseMismatchError, match=r"the LoRA adapters were trained on base 'tiny-bert' with tensor "
                                                     r"fingerprint [0-9a-f]{16}\.\.\., but the base loaded from "
                                                     r"local source '.*tiny-bert' has fingerprint [0-9a-f]{16}"):
            load_model_dir(model_dir)


def test_an_image_lora_keeps_its_buffers_and_a_random_init_base_stays_merged(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    base = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    weights = tmp_path / "test_resnet" / "model.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(weights))
    local = image_spec((tmp_path / "store").as_uri(), strategies=["lora"], epochs=1)
    raw = local.model_dump(mode="json")
    raw["backbone"].update(weights="local", path=str(weights))
    spec = parse_spec(raw)
    examples = image_examples(n_per_class=12)
    ctx = make_run(spec, examples)
    run_train(ctx, "lora")
    assert ctx.read(ModelConfig, "lora").storage == "adapter"
    stored = torch.from_numpy(ctx.read_npz("models/lora/logits/test.npz")["logits"])
    with local_copy(ctx.store, ctx.model_key("lora")) as model_dir:
        names = (read_model_config(model_dir).lora or {})["target_modules"]
        assert names and all(n.startswith("conv") for n in names)
        torch.testing.assert_close(_test_logits(model_dir, examples, spec), stored, atol=1e-5, rtol=1e-5)
    # weights 'none': no base can be loaded again, so the merged model is stored
    ctx2 = make_run(local, examples, run_id="random-init")
    run_train(ctx2, "lora")
    assert ctx2.read(ModelConfig, "lora").storage == "merged"
    assert ctx2.store.exists(ctx2.model_key("lora", MERGED_FILE))
    shutil.rmtree(weights.parent)


def test_lora_targets_skip_grouped_convolutions() -> None:
    """EfficientNet's depthwise convs (groups = channels) cannot take a rank-8 LoRA; the defaults leave them out,
    and the chosen ones train through peft."""
    import timm
    from torch import nn

    from tl_core.models.adapters import apply_lora, default_lora_targets
    from tl_core.models.backbones import Backbone, Classifier

    module = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=0)
    backbone = Backbone(module=module, kind="timm", num_features=int(module.num_features), preprocessing={})
    targets = default_lora_targets(backbone)
    assert "conv_dw" not in targets and {"conv_pw", "conv_pwl", "conv_stem", "conv_head"} <= set(targets)
    grouped = {n.split(".")[-1] for n, m in module.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert grouped == {"conv_dw"}
    spec = parse_spec({"name": "icons", "modality": "image", "labels": ["a", "b"], "data": {"input_column": "image"},
                       "backbone": {"library": "timm", "name": "efficientnet_lite0", "weights": "none"}})
    model = Classifier(module, "timm", backbone.num_features, 2)
    apply_lora(model, backbone, spec)
    assert any(".lora_A." in n for n, _ in model.named_parameters())
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
