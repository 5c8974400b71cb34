"""Registry, the seed head, Keras-style layer names and weights loading."""

from __future__ import annotations

import urllib.error

import pytest
import torch

import pneumoscope
from pneumoscope.errors import ConfigError, WeightsUnavailableError
from pneumoscope.models import get_model_info


def test_registry_lists_seed_and_test_models():
    names = pneumoscope.list_models()
    assert {"vgg19", "vgg_tiny", "vgg_small", "resnet18"} <= set(names)
    with pytest.raises(ConfigError, match="available: .*vgg19"):
        pneumoscope.create_model("vgg99")


def test_vgg19_matches_the_seed_parameter_counts():
    m = pneumoscope.create_model("vgg19", weights=None)
    assert sum(p.numel() for p in m.parameters()) == 20_090_306
    m.set_trainable(None)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 65_922
    m.set_trainable("block5_conv1")
    # block5_conv1..conv4 (4 x 2,359,808) + the head
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 4 * 2_359_808 + 65_922


def test_keras_layer_names_point_at_relus_of_vgg19():
    m = pneumoscope.create_model("vgg19")
    assert m.layer_names["block5_conv3"] == "features.33"
    assert m.layer_names["block5_conv4"] == "features.35"
    assert pneumoscope.resolve_layer(m, "block5_conv3") is m.features[33]
    assert isinstance(m.features[33], torch.nn.ReLU)
    assert pneumoscope.resolve_layer(m, "features.34") is m.features[34]


def test_unknown_layer_lists_valid_names():
    m = pneumoscope.create_model("vgg_tiny")
    with pytest.raises(ConfigError) as err:
        pneumoscope.resolve_layer(m, "block9_conv9")
    assert "block1_conv1" in str(err.value) and "block3_conv1" in str(err.value)


@pytest.mark.parametrize("name", pneumoscope.list_models())
def test_every_model_runs_at_its_minimum_and_has_its_cam_layer(name):
    info = get_model_info(name)
    m = pneumoscope.create_model(name).eval()
    size = max(info.min_input_size, 32)
    with torch.no_grad():
        assert m(torch.randn(2, 3, size, size)).shape == (2, 2)
    pneumoscope.resolve_layer(m, info.default_layer)
    pneumoscope.resolve_layer(m, info.finetune_from)


def test_imagenet_weights_offline_fail_fast_with_alternatives(monkeypatch):
    def offline(*_a, **_k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        pneumoscope.create_model("vgg19", weights="imagenet")
    msg = str(err.value)
    assert "--weights none" in msg and "--weights PATH" in msg


def test_local_weights_file_roundtrip_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    src = pneumoscope.create_model("vgg_tiny")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = pneumoscope.create_model("vgg_tiny", weights=str(path))
    assert torch.equal(dst.features[0].weight, src.features[0].weight)
    # Backbone-only torch state dict (features.* keys), loaded without unpickling objects.
    pt = tmp_path / "w.pth"
    torch.save({k: v for k, v in src.state_dict().items() if k.startswith("features.")}, pt)
    assert torch.equal(pneumoscope.create_model("vgg_tiny", weights=str(pt)).features[0].weight, src.features[0].weight)
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        pneumoscope.create_model("vgg_small", weights=str(path))
    with pytest.raises(WeightsUnavailableError, match="not found"):
        pneumoscope.create_model("vgg_tiny", weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize(
    "name,tv_name,module",
    [
        ("densenet121", "densenet121", "families"),
        ("efficientnet_b0", "efficientnet_b0", "families"),
        ("convnext_tiny", "convnext_tiny", "families"),
        ("resnet34", "resnet34", "resnet"),
        ("resnet50", "resnet50", "resnet"),
    ],
)
def test_torchvision_layouts_load_imagenet_weights_key_for_key(monkeypatch, name, tv_name, module):
    """Stand torchvision's own (randomly initialised) state dict in for the ImageNet download."""
    import importlib

    import torchvision

    tv = getattr(torchvision.models, tv_name)(weights=None)
    state = tv.state_dict()
    if name == "densenet121":  # the published file uses the old "norm.1" key style
        state = {k.replace("norm1", "norm.1").replace("conv2", "conv.2") if "denselayer" in k else k: v for k, v in state.items()}
    mod = importlib.import_module(f"pneumoscope.models.{module}")
    monkeypatch.setattr(mod, "torchvision_state_dict", lambda *_a, **_k: state)
    m = pneumoscope.create_model(name, weights="imagenet").eval()
    tv_features = dict(tv.named_parameters())
    ours = dict(m.named_parameters())
    matched = 0
    for k, v in tv_features.items():
        if k.startswith("features."):
            assert torch.equal(ours[k], v), k
            matched += 1
        elif k.startswith("layer") or k.startswith(("conv1", "bn1")):  # ResNet stages live in features.N
            matched += 1
    assert matched > 10
    info = get_model_info(name)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert m(x).shape == (1, 2)
    layer = pneumoscope.resolve_layer(m, info.default_layer)
    assert isinstance(layer, torch.nn.Module)
    m.set_trainable(info.finetune_from)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any(n.startswith("head.") for n in trainable)
    assert 0 < len(trainable) < len(list(m.parameters()))
