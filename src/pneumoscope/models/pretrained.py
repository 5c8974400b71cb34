"""Loading backbone weights: torchvision's ImageNet weights or a local copy of such a file.

Both come through one path, :func:`load_backbone_weights`; the only difference is where the
state dict comes from (torchvision's download cache or ``--weights PATH``). Each backbone
says how torchvision's keys (in every key style torchvision itself accepts) map onto its
``features`` module, so a local copy of the published file loads exactly like the download.
"""

from __future__ import annotations

import urllib.error
from typing import Any, Callable

import torch
from torch import nn

from ..errors import WeightsUnavailableError
from .base import load_state_dict_file

StateDict = dict[str, torch.Tensor]


def _offline_message(name: str, exc: BaseException) -> str:
    reason = str(getattr(exc, "reason", exc)).splitlines()[0][:160]
    return (
        f"cannot download ImageNet weights for {name} ({reason}); this machine seems offline. "
        "Use --weights none to train from scratch, or --weights PATH with a local copy of the "
        "torchvision weights file"
    )


def torchvision_state_dict(weights_enum: Any, name: str) -> StateDict:
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


def features_keys(state: StateDict) -> StateDict:
    """The ``features.*`` tensors of a state dict whose backbone already has our layout."""
    return {k: v for k, v in state.items() if k.startswith("features.")}


def load_backbone_weights(
    model: nn.Module,
    weights: str,
    name: str,
    imagenet: Callable[[], Any] | None = None,
    to_features: Callable[[StateDict], StateDict] = features_keys,
) -> None:
    """Load ``weights`` (``imagenet`` or a path) into ``model``.

    Args:
        model: a :class:`~pneumoscope.models.base.Classifier`.
        weights: ``imagenet`` or the path of a local weights file (safetensors, or a torch
            state dict read with ``weights_only=True``, never unpickling arbitrary objects).
        name: the registry name, for messages.
        imagenet: returns torchvision's weights enum for ``name``; None where torchvision
            has no such model.
        to_features: maps torchvision's keys (any key style it accepts) to ours,
            ``features.*``; keys of the classifier it replaces are dropped.

    A pneumoscope checkpoint, or any state dict with ``head.*`` keys, loads every key it has.

    Raises:
        WeightsUnavailableError: offline, no such file, or a file of another architecture.
    """
    if weights == "imagenet":
        if imagenet is None:
            raise WeightsUnavailableError(f"{name} has no ImageNet weights; use --weights none or a local PATH")
        state, source = torchvision_state_dict(imagenet(), name), f"ImageNet {name}"
    else:
        state, source = load_state_dict_file(weights), str(weights)
    expected = (
        f"torchvision's {name} weights or a pneumoscope {name} checkpoint"
        if imagenet is not None
        else f"a {name} state dict or a pneumoscope {name} checkpoint"
    )
    if any(k.startswith("head.") for k in state):
        _load_exact(model, state, source, name, expected, prefix="")
        return
    feature_state = to_features(state)
    if not feature_state:
        sample = ", ".join(repr(k) for k in list(state)[:3]) or "none"
        raise WeightsUnavailableError(
            f"{source}: no {name} backbone tensors in this file (its keys start {sample}); expected {expected}"
        )
    _load_exact(model.features, _strip(feature_state, "features."), source, name, expected, prefix="features.")


def _strip(state: StateDict, prefix: str) -> StateDict:
    return {k[len(prefix):]: v for k, v in state.items()}


def _load_exact(
    module: nn.Module, state: StateDict, source: str, name: str, expected: str, prefix: str
) -> None:
    """Load every tensor of ``module`` from ``state`` or fail with one line saying what differs."""
    own = module.state_dict()
    # Files from before PyTorch 0.4.1 (torchvision's DenseNet) have no BatchNorm step counters;
    # load_state_dict fills those in, as it does for torchvision.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {prefix}{missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {prefix}{unexpected[0]}")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} of another shape, e.g. {prefix}{k} {tuple(state[k].shape)} instead of {tuple(own[k].shape)}"
        )
    if problems:
        raise WeightsUnavailableError(
            f"{source}: weights do not fit {name} ({'; '.join(problems)}); expected {expected}"
        )
    module.load_state_dict(state, strict=True)
