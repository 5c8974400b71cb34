"""Grad-CAM, computed the fast way.

One forward pass with a hook on the target layer, then ``torch.autograd.grad`` from the class
score to that layer's activation only: no parameter gradients, no backward through the layers
below the target, and the CAM maths stays on the model's device. The model's mode and every
parameter's ``requires_grad`` are restored and the hook removed, even after an exception.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.base import resolve_layer
from ..runtime import autocast

SCORES = ("log_prob", "logit")


@dataclass(frozen=True)
class Explanation:
    """A batch of explanations.

    Attributes:
        maps: (N, H, W) in [0, 1], min-max normalised per image, at the input resolution.
        raw: (N, h, w) the map at the layer's resolution, before resizing and normalising.
        probs: (N, C) softmax probabilities of the explained forward pass.
        targets: (N,) the class each map explains.
        method: method name; layer: the layer name it was computed at.
    """

    maps: torch.Tensor
    raw: torch.Tensor
    probs: torch.Tensor
    targets: torch.Tensor
    method: str
    layer: str


def _gradcam_weights(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # Grad-CAM: channel weight = spatial mean of the score's gradient.
    return grad.mean(dim=(2, 3), keepdim=True)


def _gradcam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return F.relu((_gradcam_weights(act, grad) * act).sum(dim=1))


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"gradcam": _gradcam}


@contextlib.contextmanager
def _explain_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; restore both afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def capture_activation(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Hook ``layer`` so its output becomes a grad-requiring leaf we can differentiate to.

    The activation is detached (nothing below it is recorded) and a clone is passed on, so an
    in-place op after the layer (VGG's ``ReLU(inplace=True)``) cannot overwrite what we keep.
    """
    store: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor:
        act = out.detach().requires_grad_(True)
        store.append(act)
        return act.clone()

    handle = layer.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def _targets(
    target: int | str | Sequence[int] | torch.Tensor | None,
    probs: torch.Tensor,
    threshold: float | None,
    class_names: Sequence[str] | None,
) -> torch.Tensor:
    n, c = probs.shape
    if target is None or target == "predicted":
        if threshold is not None and c == 2:
            return (probs[:, 1] >= threshold).long()
        return probs.argmax(dim=1)
    if isinstance(target, str):
        names = list(class_names or ("NORMAL", "PNEUMONIA"))
        if target not in names:
            raise ConfigError(f"unknown target {target!r}; expected predicted or one of {', '.join(names)}")
        return torch.full((n,), names.index(target), dtype=torch.long, device=probs.device)
    t = torch.as_tensor(target, dtype=torch.long, device=probs.device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ConfigError(f"target must be one class index or one per image ({n}), got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t >= c)).any()):
        raise ConfigError(f"target class out of range 0..{c - 1}")
    return t


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-map min-max to [0, 1]; a flat map becomes all zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.view_as(maps)


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    layer: str | None = None,
    target: int | str | Sequence[int] | torch.Tensor | None = None,
    *,
    score: str = "log_prob",
    threshold: float | None = None,
    precision: str = "fp32",
    class_names: Sequence[str] | None = None,
    temperature: float = 1.0,
) -> Explanation:
    """Explain a batch of preprocessed images.

    Args:
        model: a classifier (e.g. from :func:`pneumoscope.create_model`); any device.
        images: (N, 3, H, W) preprocessed tensors; moved to the model's device.
        method: a name from :data:`METHODS`.
        layer: friendly layer name (``block5_conv3``) or module path; default: the model's
            default Grad-CAM layer.
        target: ``None``/``"predicted"`` (the predicted class), a class index or name, or one
            index per image.
        score: ``log_prob`` (log p_c + 1e-8, the seed's) or ``logit`` (the raw class logit).
        threshold: decide the predicted class by P(positive) >= threshold instead of argmax.
        precision: ``fp32`` or ``bf16`` (already resolved; see :mod:`pneumoscope.runtime`).
        class_names: names for string targets.
        temperature: the checkpoint's calibration temperature; probabilities (and the
            ``log_prob`` score) are those of ``logits / temperature``. For two classes and Grad-CAM this
            scales each image's gradient by a positive factor, so the normalised map is unchanged.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown explanation method {method!r}; available: {', '.join(METHODS)}")
    if score not in SCORES:
        raise ConfigError(f"unknown score {score!r}; expected one of {', '.join(SCORES)}")
    if images.dim() != 4:
        raise ConfigError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if layer is None:
        from ..models.registry import get_model_info

        layer = get_model_info(getattr(model, "arch", "")).default_layer if getattr(model, "arch", "") else None
        if layer is None:
            raise ConfigError("layer is required for a model that is not from the registry")
    module = resolve_layer(model, layer)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = images.device
    x = images.to(device)
    if x.is_inference():
        x = x.clone()
    with _explain_mode(model), capture_activation(module) as store, torch.enable_grad():
        with autocast(device, precision):
            logits = model(x)
        if not store:
            raise ConfigError(f"layer {layer!r} was not used in the forward pass")
        act = store[-1]
        logits = logits.float()
        probs = (logits / temperature).softmax(dim=1)
        tgt = _targets(target, probs.detach(), threshold, class_names)
        if score == "log_prob":
            chosen = torch.log(probs.gather(1, tgt[:, None]).squeeze(1) + 1e-8)
        else:
            chosen = logits.gather(1, tgt[:, None]).squeeze(1)
        # Scores of different images are independent in eval mode, so one grad call on the sum
        # gives every image its own gradient.
        (grad,) = torch.autograd.grad(chosen.sum(), act)
    with torch.no_grad():
        raw = METHODS[method](act.detach().float(), grad.float())
        up = F.interpolate(raw[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        maps = minmax_normalize(up)
    return Explanation(
        maps=maps, raw=raw, probs=probs.detach(), targets=tgt, method=method, layer=layer
    )
