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
    assert {"vgg19", "vgg_tiny", "vgg_small", "vgg_mini", "resnet18"} <= set(names)
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


# --------------------------------------------------------------------------- --weights PATH

# The stages of torchvision's ResNet, in the order our ``features`` holds them.
RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

# Key styles a weights file of each backbone comes in: ``torchvision`` (what its constructor's
# state_dict() saves today), ``legacy`` (the key names of the file torchvision publishes for
# DenseNet, which torchvision renames with a regex while loading; no other family torchvision
# has here ever changed its key names), ``pneumoscope`` (our own ``features.*`` layout, e.g. a
# backbone exported from a pneumoscope model; the only style of the backbones torchvision lacks).
WEIGHT_STYLES = {
    "vgg19": ("torchvision",),
    "resnet10": ("pneumoscope",),
    "resnet18": ("torchvision", "pneumoscope"),
    "resnet34": ("torchvision", "pneumoscope"),
    "resnet50": ("torchvision", "pneumoscope"),
    "densenet121": ("torchvision", "legacy"),
    "efficientnet_b0": ("torchvision",),
    "convnext_tiny": ("torchvision",),
    "vgg_small": ("pneumoscope",),
    "vgg_mini": ("pneumoscope",),
    "vgg_tiny": ("pneumoscope",),
}
IMAGENET_ENUMS = {
    "vgg19": "VGG19_Weights.IMAGENET1K_V1", "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1", "resnet50": "ResNet50_Weights.IMAGENET1K_V2",
    "densenet121": "DenseNet121_Weights.IMAGENET1K_V1", "efficientnet_b0": "EfficientNet_B0_Weights.IMAGENET1K_V1",
    "convnext_tiny": "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
}


@pytest.fixture
def fast_init(monkeypatch):
    """Skip the weight initialisers while models are built: every tensor a test compares is
    overwritten with its own random values or loaded from a file, and ConvNeXt's and VGG19's
    initialisers alone take seconds on a small CPU."""
    for fn in ("trunc_normal_", "normal_", "uniform_", "kaiming_normal_", "kaiming_uniform_", "constant_",
               "zeros_", "ones_", "xavier_uniform_"):
        monkeypatch.setattr(torch.nn.init, fn, lambda t, *a, **k: t)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter and buffer (BatchNorm statistics and step counters too) with random
    values, so a tensor that was not loaded cannot equal the file by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, t in module.state_dict().items():  # views of the module's own tensors
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5 if k.endswith("running_var") else torch.randn(t.shape, generator=g))
            else:
                t.fill_(int(torch.randint(1, 1000, (1,), generator=g)))


def _weights_file(name: str, style: str, tmp_path):
    """(path of a torch.save'd state dict in ``style``, {our key: tensor the model must hold})."""
    import re

    import torchvision

    if style == "pneumoscope":
        src = pneumoscope.create_model(name)
        _randomise(src, 1)
        state = {k: v for k, v in src.state_dict().items() if k.startswith("features.")}
        expected = dict(state)
    else:
        tv = getattr(torchvision.models, name)(weights=None)
        _randomise(tv, 1)
        if name == "vgg19":  # 120 M classifier weights the loader drops anyway: keep the keys, not the bulk
            tv.classifier = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Dropout(),
                                                torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Dropout(),
                                                torch.nn.Linear(3, 1000))
        state = tv.state_dict()
        # What our model must hold, read module by module from torchvision's model (not by
        # renaming keys, which is what the code under test does).
        if name.startswith("resnet"):
            expected = {f"features.{i}.{k}": v for i, stage in enumerate(RESNET_STAGES)
                        for k, v in getattr(tv, stage).state_dict().items()}
        else:
            expected = {f"features.{k}": v for k, v in tv.features.state_dict().items()}
        if style == "legacy":  # torchvision's published DenseNet file: "norm.1" keys, no step counters
            state = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
                     for k, v in state.items() if not k.endswith("num_batches_tracked")}
            assert any(".norm.1." in k for k in state) and not any(".norm1." in k for k in state)
            expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"{name}-{style}.pth"
    torch.save(state, path)
    return path, expected


def _assert_holds(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    ours = model.state_dict()
    backbone = {k for k in ours if k.startswith("features.") and not k.endswith("num_batches_tracked")}
    assert backbone <= set(expected) | {k for k in ours if k.endswith("num_batches_tracked")}, sorted(backbone - set(expected))[:3]
    for k, v in expected.items():
        assert torch.equal(ours[k], v), k


def test_every_registered_backbone_has_weight_styles_under_test():
    assert set(WEIGHT_STYLES) == set(pneumoscope.list_models())
    assert {n for n in pneumoscope.list_models() if get_model_info(n).pretrained} == set(IMAGENET_ENUMS)


@pytest.mark.parametrize(("name", "style"), [(n, s) for n, styles in WEIGHT_STYLES.items() for s in styles])
def test_weights_path_loads_each_backbone_in_each_key_style(fast_init, tmp_path, monkeypatch, name, style):
    """--weights PATH: a torchvision-style file saved locally loads tensor for tensor."""
    path, expected = _weights_file(name, style, tmp_path)
    m = pneumoscope.create_model(name, weights=str(path))
    _assert_holds(m, expected)
    if style == "pneumoscope":
        return
    # The ImageNet download goes through the same loader: only where the file comes from differs.
    from pneumoscope.models import pretrained

    asked = []

    def download(enum, model_name):
        asked.append((f"{type(enum).__name__}.{enum.name}", model_name))
        return torch.load(path, weights_only=True)

    monkeypatch.setattr(pretrained, "torchvision_state_dict", download)
    _assert_holds(pneumoscope.create_model(name, weights="imagenet"), expected)
    assert asked == [(IMAGENET_ENUMS[name], name)]


@pytest.mark.parametrize(
    ("file_of", "into", "needles"),
    [
        ("resnet18", "resnet34", ("do not fit resnet34", "missing, e.g. features.")),
        ("resnet50", "resnet18", ("do not fit resnet18", "another shape")),
        ("densenet121", "resnet18", ("do not fit resnet18", "unexpected, e.g. features.conv0")),
        ("resnet18", "densenet121", ("no densenet121 backbone tensors", "'conv1.weight'")),
        ("vgg19", "vgg_tiny", ("do not fit vgg_tiny",)),
    ],
)
def test_weights_file_of_another_architecture_is_one_clear_line(fast_init, tmp_path, file_of, into, needles):
    path, _ = _weights_file(file_of, "torchvision", tmp_path)
    with pytest.raises(WeightsUnavailableError) as err:
        pneumoscope.create_model(into, weights=str(path))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    for needle in needles:
        assert needle in msg, msg


class _Payload:
    """Stands in for whatever code a pickled weights file could carry."""


def test_weights_path_never_unpickles_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": torch.zeros(1), "payload": _Payload()}, path)
    with pytest.raises(WeightsUnavailableError, match="not a readable weights file"):
        pneumoscope.create_model("vgg_tiny", weights=str(path))


def test_cli_weights_of_another_architecture_is_a_user_error(fast_init, run_cli, synth_root, tmp_path):
    from conftest import assert_user_error

    path, _ = _weights_file("resnet18", "torchvision", tmp_path)
    out = tmp_path / "run"
    result = run_cli("train", "--data", synth_root, "--backbone", "resnet34", "--weights", path,
                     "--image-size", 32, "--epochs", 1, "--device", "cpu", "--out", out, "--no-progress")
    assert_user_error(result, str(path), "do not fit resnet34")
    assert not out.exists()


def test_torchvision_layouts_train_and_explain_after_loading(fast_init, tmp_path):
    """After a torchvision file loads, the default CAM layer and the fine-tuning split still work."""
    for name in ("resnet18", "densenet121", "efficientnet_b0"):
        path, _ = _weights_file(name, "torchvision", tmp_path)
        m = pneumoscope.create_model(name, weights=str(path)).eval()
        _randomise(m.head, 2)  # fast_init left the head's memory as allocated
        info = get_model_info(name)
        with torch.no_grad():
            assert m(torch.randn(1, 3, 64, 64)).shape == (1, 2)
        assert isinstance(pneumoscope.resolve_layer(m, info.default_layer), torch.nn.Module)
        m.set_trainable(info.finetune_from)
        trainable = {n for n, p in m.named_parameters() if p.requires_grad}
        assert any(n.startswith("head.") for n in trainable)
        assert 0 < len(trainable) < len(list(m.parameters()))


def test_gem_pooling_sits_between_average_and_max_and_keeps_the_weights():
    from pneumoscope.models.base import GeneralizedMeanPool

    x = torch.rand(3, 4, 5, 5)
    gem = GeneralizedMeanPool()(x).flatten(1)
    assert torch.all(gem > x.mean((2, 3)) - 1e-6) and torch.all(gem < x.amax((2, 3)) + 1e-6)
    torch.testing.assert_close(GeneralizedMeanPool(p=1.0)(x).flatten(1), x.mean((2, 3)))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # pooled in float32 under bf16 autocast too
        assert GeneralizedMeanPool()(x.bfloat16()).dtype == torch.float32
    avg, gem_model = pneumoscope.create_model("vgg_tiny"), pneumoscope.create_model("vgg_tiny", global_pool="gem")
    assert avg.state_dict().keys() == gem_model.state_dict().keys() and gem_model.global_pool == "gem"
    with pytest.raises(ConfigError, match="unknown global pool 'max'"):
        pneumoscope.create_model("vgg_tiny", global_pool="max")
