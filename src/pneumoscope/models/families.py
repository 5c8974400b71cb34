"""More torchvision backbones with the seed head: DenseNet-121 (CheXNet's), EfficientNet-B0,
ConvNeXt-Tiny, ResNet-34 and ResNet-50.

Each keeps torchvision's module names inside ``features`` so torchvision's ImageNet weights
(or a local copy of them, ``--weights PATH``) load key for key, and each names the layer
Grad-CAM reads by default: the last feature map before global pooling.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Callable

from torch import nn

from .base import Classifier
from .pretrained import StateDict, features_keys, load_backbone_weights
from .registry import register_model


def _named_features(children: list[tuple[str, nn.Module]]) -> tuple[nn.Sequential, dict[str, str]]:
    seq = nn.Sequential(OrderedDict(children))
    return seq, {name: f"features.{name}" for name, _ in children}


def _load(
    model: Classifier,
    weights: str | None,
    name: str,
    imagenet: Callable[[], Any],
    to_features: Callable[[StateDict], StateDict] = features_keys,
) -> Classifier:
    if weights is not None:
        load_backbone_weights(model, weights, name, imagenet, to_features)
    return model


# torchvision's DenseNet files predate its module names: "denselayer1.norm.1.weight" is
# "denselayer1.norm1.weight" today. Same rename torchvision applies when it loads them.
_DENSENET_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def densenet_to_features(state: StateDict) -> StateDict:
    """torchvision DenseNet keys in either style (``norm.1`` or ``norm1``) → our ``features.*``."""
    out = {}
    for k, v in state.items():
        m = _DENSENET_OLD_KEY.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return features_keys(out)


@register_model(
    "densenet121",
    min_input_size=32,
    default_layer="relu5",
    finetune_from="denseblock4",
    pretrained=("imagenet",),
    description="DenseNet-121 (as in CheXNet) + the seed head; 7.1 M parameters",
)
def densenet121(weights: str | None = None, num_classes: int = 2) -> Classifier:
    from torchvision.models import DenseNet121_Weights
    from torchvision.models import densenet121 as tv_densenet121

    tv = tv_densenet121(weights=None)
    # torchvision applies F.relu after features.norm5; as a module it can be Grad-CAM's layer.
    features, names = _named_features([*tv.features.named_children(), ("relu5", nn.ReLU(inplace=False))])
    model = Classifier(features, tv.classifier.in_features, names, num_classes=num_classes)
    return _load(model, weights, "densenet121", lambda: DenseNet121_Weights.IMAGENET1K_V1, densenet_to_features)


_EFFNET_NAMES = ["stem", "block1", "block2", "block3", "block4", "block5", "block6", "block7", "top"]


@register_model(
    "efficientnet_b0",
    min_input_size=32,
    default_layer="top",
    finetune_from="block6",
    pretrained=("imagenet",),
    description="EfficientNet-B0 + the seed head; 4.2 M parameters",
)
def efficientnet_b0(weights: str | None = None, num_classes: int = 2) -> Classifier:
    from torchvision.models import EfficientNet_B0_Weights
    from torchvision.models import efficientnet_b0 as tv_efficientnet_b0

    tv = tv_efficientnet_b0(weights=None)
    # Keep torchvision's numeric child names so its weights load; friendly names on top.
    names = {friendly: f"features.{i}" for i, friendly in enumerate(_EFFNET_NAMES)}
    model = Classifier(tv.features, tv.classifier[-1].in_features, names, num_classes=num_classes)
    return _load(model, weights, "efficientnet_b0", lambda: EfficientNet_B0_Weights.IMAGENET1K_V1)


_CONVNEXT_NAMES = ["stem", "stage1", "down2", "stage2", "down3", "stage3", "down4", "stage4"]


@register_model(
    "convnext_tiny",
    min_input_size=32,
    default_layer="stage4",
    finetune_from="stage4",
    pretrained=("imagenet",),
    description="ConvNeXt-Tiny + the seed head; 27.9 M parameters",
)
def convnext_tiny(weights: str | None = None, num_classes: int = 2) -> Classifier:
    from torchvision.models import ConvNeXt_Tiny_Weights
    from torchvision.models import convnext_tiny as tv_convnext_tiny

    tv = tv_convnext_tiny(weights=None)
    names = {friendly: f"features.{i}" for i, friendly in enumerate(_CONVNEXT_NAMES)}
    model = Classifier(tv.features, tv.classifier[-1].in_features, names, num_classes=num_classes)
    return _load(model, weights, "convnext_tiny", lambda: ConvNeXt_Tiny_Weights.IMAGENET1K_V1)
