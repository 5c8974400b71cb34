"""ResNet backbones (torchvision layout) with the seed head; Grad-CAM on ``layer4``."""

from __future__ import annotations

from torch import nn

from .base import Classifier
from .pretrained import StateDict, load_backbone_weights
from .registry import register_model

_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _resnet_classifier(tv_model: nn.Module, num_classes: int) -> Classifier:
    features = nn.Sequential(*(getattr(tv_model, n) for n in _STAGES))
    names = {n: f"features.{i}" for i, n in enumerate(_STAGES)}
    return Classifier(features, tv_model.fc.in_features, names, num_classes=num_classes, hidden=128)


@register_model(
    "resnet18",
    min_input_size=32,
    default_layer="layer4",
    finetune_from="layer4",
    pretrained=("imagenet",),
    description="ResNet-18 + the seed head; 11.2 M parameters",
)
def resnet18(weights: str | None = None, num_classes: int = 2) -> Classifier:
    from torchvision.models import ResNet18_Weights
    from torchvision.models import resnet18 as tv_resnet18

    model = _resnet_classifier(tv_resnet18(weights=None), num_classes)
    if weights is not None:
        load_backbone_weights(model, weights, "resnet18", lambda: ResNet18_Weights.IMAGENET1K_V1, to_features)
    return model


@register_model(
    "resnet10",
    min_input_size=32,
    default_layer="layer4",
    finetune_from="layer4",
    description="ResNet-18 with one residual block per stage instead of two + the seed head; 5.0 M parameters, "
                "about half the compute; no ImageNet weights (from scratch or a local file)",
)
def resnet10(weights: str | None = None, num_classes: int = 2) -> Classifier:
    from torchvision.models.resnet import BasicBlock, ResNet

    model = _resnet_classifier(ResNet(BasicBlock, [1, 1, 1, 1]), num_classes)
    if weights is not None:
        load_backbone_weights(model, weights, "resnet10", None, to_features)
    return model


@register_model(
    "resnet34",
    min_input_size=32,
    default_layer="layer4",
    finetune_from="layer4",
    pretrained=("imagenet",),
    description="ResNet-34 + the seed head; 21.3 M parameters",
)
def resnet34(weights: str | None = None, num_classes: int = 2) -> Classifier:
    from torchvision.models import ResNet34_Weights
    from torchvision.models import resnet34 as tv_resnet34

    model = _resnet_classifier(tv_resnet34(weights=None), num_classes)
    if weights is not None:
        load_backbone_weights(model, weights, "resnet34", lambda: ResNet34_Weights.IMAGENET1K_V1, to_features)
    return model


@register_model(
    "resnet50",
    min_input_size=32,
    default_layer="layer4",
    finetune_from="layer4",
    pretrained=("imagenet",),
    description="ResNet-50 + the seed head; 23.8 M parameters",
)
def resnet50(weights: str | None = None, num_classes: int = 2) -> Classifier:
    from torchvision.models import ResNet50_Weights
    from torchvision.models import resnet50 as tv_resnet50

    model = _resnet_classifier(tv_resnet50(weights=None), num_classes)
    if weights is not None:
        load_backbone_weights(model, weights, "resnet50", lambda: ResNet50_Weights.IMAGENET1K_V2, to_features)
    return model


def to_features(state: StateDict) -> StateDict:
    """torchvision ResNet keys (``layer1.0.conv1.weight``) → ours (``features.4.0.conv1.weight``).

    Keys already in our layout (``features.*``, a backbone saved from pneumoscope) are kept;
    the ImageNet classifier (``fc.*``) is dropped.
    """
    index = {n: i for i, n in enumerate(_STAGES)}
    out = {}
    for k, v in state.items():
        top, _, rest = k.partition(".")
        if top in index:
            out[f"features.{index[top]}.{rest}"] = v
        elif top == "features":
            out[k] = v
    return out
