"""Model registry: backbones with the seed head, Keras-style layer names, Grad-CAM layers."""

# Importing the families registers them.
from . import families as _families  # noqa: F401
from . import resnet as _resnet  # noqa: F401
from . import vgg as _vgg  # noqa: F401
from .base import Classifier, resolve_layer
from .registry import (
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    register_model,
)

__all__ = [
    "Classifier",
    "ModelInfo",
    "create_model",
    "get_model_info",
    "list_models",
    "register_model",
    "resolve_layer",
]
