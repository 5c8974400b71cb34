"""One registry, one factory (after timm): ``@register_model`` + ``create_model(name)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of pneumoscope needs to know about a backbone without building it."""

    name: str
    builder: Callable[..., nn.Module]
    min_input_size: int
    default_layer: str
    finetune_from: str
    pretrained: tuple[str, ...] = ()
    description: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    min_input_size: int,
    default_layer: str,
    finetune_from: str,
    pretrained: tuple[str, ...] = (),
    description: str = "",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder(weights=None, num_classes=2) -> Classifier`` under ``name``."""

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(
            name, builder, min_input_size, default_layer, finetune_from, pretrained, description
        )
        return builder

    return deco


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None


def create_model(name: str, weights: str | None = None, num_classes: int = 2, global_pool: str = "avg") -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        weights: ``None``/``"none"`` for random initialisation, ``"imagenet"`` for torchvision's
            ImageNet weights of the backbone (needs the network the first time), or a path to a
            local state dict (``.pth``/``.pt``/``.safetensors``) of the backbone or a pneumoscope
            checkpoint.
        num_classes: output classes (2: NORMAL, PNEUMONIA).
        global_pool: how the head pools the last feature map: ``avg`` (the seed's) or ``gem``
            (generalised mean, p = 3).
    """
    info = get_model_info(name)
    if weights in ("none", ""):
        weights = None
    model = info.builder(weights=weights, num_classes=num_classes)
    model.arch = name
    if global_pool != "avg":
        model.set_global_pool(global_pool)
    return model
