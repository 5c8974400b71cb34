"""pneumoscope: explainable pneumonia detection on chest X-rays."""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from .errors import PneumoscopeError  # noqa: E402
from .models import create_model, list_models, resolve_layer  # noqa: E402


def read_image(path):  # type: ignore[no-untyped-def]
    """(H, W) float32 in [0, 1] as a radiologist sees it, for JPEG, PNG and DICOM."""
    from .data.io import read_image as _read_image

    return _read_image(path)


def explain(model, images, method="gradcam", layer=None, target=None, **kwargs):  # type: ignore[no-untyped-def]
    """Explain a batch of preprocessed images; see :func:`pneumoscope.explanation.cam.explain`."""
    from .explanation.cam import explain as _explain

    return _explain(model, images, method=method, layer=layer, target=target, **kwargs)


__all__ = [
    "Checkpoint",
    "PneumoscopeError",
    "__version__",
    "create_model",
    "explain",
    "list_models",
    "load_checkpoint",
    "read_image",
    "resolve_layer",
    "save_checkpoint",
]
