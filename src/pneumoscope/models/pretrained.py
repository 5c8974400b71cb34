"""Loading backbone weights: torchvision's ImageNet weights or a local file."""

from __future__ import annotations

import urllib.error
from typing import Any

import torch
from torch import nn

from ..errors import WeightsUnavailableError
from .base import load_state_dict_file


def _offline_message(name: str, exc: BaseException) -> str:
    reason = str(getattr(exc, "reason", exc)).splitlines()[0][:160]
    return (
        f"cannot download ImageNet weights for {name} ({reason}); this machine seems offline. "
        "Use --weights none to train from scratch, or --weights PATH with a local copy of the "
        "torchvision weights file"
    )


def torchvision_state_dict(weights_enum: Any, name: str) -> dict[str, torch.Tensor]:
    """Fetch (or read from the torch hub cache) torchvision weights, failing fast offline."""
    import socket

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)  # a firewall that drops packets must not hang training for minutes
    try:
        return weights_enum.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, TimeoutError, ConnectionError) as exc:
        raise WeightsUnavailableError(_offline_message(name, exc)) from exc
    finally:
        socket.setdefaulttimeout(old)


def load_backbone_weights(
    model: nn.Module, weights: str, name: str, imagenet_state: Any
) -> None:
    """Load ``weights`` (``imagenet`` or a path) into ``model.features``.

    ``imagenet_state`` is a zero-argument callable returning torchvision's state dict, whose
    ``features.*`` keys match ours because the backbones mirror torchvision's layout.
    A pneumoscope checkpoint or a full state dict of this architecture loads every key it has.
    """
    if weights == "imagenet":
        state = imagenet_state()
        feature_keys = {k: v for k, v in state.items() if k.startswith("features.")}
        _load_strict(model.features, _strip(feature_keys, "features."), f"ImageNet {name}")
        return
    state = load_state_dict_file(weights)
    if any(k.startswith("head.") for k in state):
        _load_strict(model, state, weights)
    else:
        feature_keys = {k: v for k, v in state.items() if k.startswith("features.")}
        if not feature_keys:
            raise WeightsUnavailableError(
                f"{weights}: no 'features.*' tensors; expected torchvision {name} weights or a pneumoscope checkpoint"
            )
        _load_strict(model.features, _strip(feature_keys, "features."), weights)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items()}


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise WeightsUnavailableError(f"{source}: weights do not fit this architecture ({detail[:200]})") from exc
