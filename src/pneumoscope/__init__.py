"""pneumoscope: explainable pneumonia detection on chest X-rays.

The public API::

    create_model(name, weights=None, num_classes=2, global_pool="avg")
    list_models()                                      load_checkpoint(path)
    resolve_layer(model, name)                         explain(model, images, method="gradcam", ...)
    read_image(path)                                   explain_many(model, images, methods, ...)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from .data.io import read_image  # noqa: E402
from .errors import PneumoscopeError  # noqa: E402
from .explanation.cam import METHODS, Explanation, explain, explain_many  # noqa: E402
from .models import create_model, list_models, resolve_layer  # noqa: E402

__all__ = [
    "METHODS",
    "Checkpoint",
    "Explanation",
    "PneumoscopeError",
    "__version__",
    "create_model",
    "explain",
    "explain_many",
    "list_models",
    "load_checkpoint",
    "read_image",
    "resolve_layer",
    "save_checkpoint",
]
