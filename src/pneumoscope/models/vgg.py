"""VGG backbones with Keras-style layer names (``block5_conv3`` is the ReLU after that conv).

The layout mirrors torchvision's ``make_layers`` exactly, so torchvision's ImageNet weights
load into ``features`` key for key, and Grad-CAM layer names mean what they mean in Keras.
"""

from __future__ import annotations

from torch import nn

from .base import Classifier
from .pretrained import load_backbone_weights
from .registry import register_model

VGG19_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


def make_vgg_features(cfg: list[int | str], batch_norm: bool = False) -> tuple[nn.Sequential, dict[str, str], int]:
    """Build VGG features and name its layers the Keras way.

    Returns:
        (features, layer_names, out_channels); ``layer_names`` maps ``blockB_convC`` to the
        ReLU after the C-th conv of block B and ``blockB_pool`` to the block's max-pool.
    """
    layers: list[nn.Module] = []
    names: dict[str, str] = {}
    in_ch, block, conv = 3, 1, 0
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            names[f"block{block}_pool"] = f"features.{len(layers) - 1}"
            block, conv = block + 1, 0
            continue
        assert isinstance(v, int)
        layers.append(nn.Conv2d(in_ch, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        conv += 1
        names[f"block{block}_conv{conv}"] = f"features.{len(layers) - 1}"
        in_ch = v
    return nn.Sequential(*layers), names, in_ch


def _compact_vgg(
    name: str, cfg: list[int | str], hidden: int, batch_norm: bool, weights: str | None, num_classes: int
) -> Classifier:
    """One of pneumoscope's own small VGGs; ``weights`` can only be a local file (no torchvision counterpart)."""
    features, names, ch = make_vgg_features(cfg, batch_norm=batch_norm)
    model = Classifier(features, ch, names, num_classes=num_classes, hidden=hidden)
    if weights is not None:
        load_backbone_weights(model, weights, name)
    return model


@register_model(
    "vgg19",
    min_input_size=32,
    default_layer="block5_conv3",
    finetune_from="block5_conv1",
    pretrained=("imagenet",),
    description="VGG19 + the seed head (GAP, Dropout 0.4, Dense 128 ReLU, Dropout 0.3, Dense 2); 20.09 M parameters",
)
def vgg19(weights: str | None = None, num_classes: int = 2) -> Classifier:
    features, names, ch = make_vgg_features(VGG19_CFG)
    model = Classifier(features, ch, names, num_classes=num_classes, hidden=128)
    if weights is not None:
        from torchvision.models import VGG19_Weights

        load_backbone_weights(model, weights, "vgg19", lambda: VGG19_Weights.IMAGENET1K_V1)
    return model


@register_model(
    "vgg_small",
    min_input_size=16,
    default_layer="block4_conv2",
    finetune_from="block4_conv1",
    description="compact VGG with batch norm (16-32-64-128 channels, 0.3 M parameters) for CPU demos",
)
def vgg_small(weights: str | None = None, num_classes: int = 2) -> Classifier:
    return _compact_vgg("vgg_small", [16, "M", 32, "M", 64, 64, "M", 128, 128], 64, True, weights, num_classes)


@register_model(
    "vgg_mini",
    min_input_size=16,
    default_layer="block4_conv2",
    finetune_from="block4_conv1",
    description="vgg_small at half width (8-16-32-64 channels, 75 k parameters): the demo's model, 3.4x cheaper per step",
)
def vgg_mini(weights: str | None = None, num_classes: int = 2) -> Classifier:
    return _compact_vgg("vgg_mini", [8, "M", 16, "M", 32, 32, "M", 64, 64], 32, True, weights, num_classes)


@register_model(
    "vgg_tiny",
    min_input_size=8,
    default_layer="block3_conv1",
    finetune_from="block3_conv1",
    description="a few-thousand-parameter VGG for tests",
)
def vgg_tiny(weights: str | None = None, num_classes: int = 2) -> Classifier:
    return _compact_vgg("vgg_tiny", [4, "M", 8, "M", 8], 8, False, weights, num_classes)
