"""The CAM family, computed the fast way, and the one ``explain`` entry point for every method.

One forward pass with a hook on the target layer, then ``torch.autograd.grad`` from the class
score to that layer's activation only: no parameter gradients, no backward through the layers
below the target, and the CAM maths stays on the model's device. The model's mode and every
parameter's ``requires_grad`` are restored and the hook removed, even after an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.base import resolve_layer
from ..runtime import autocast, to_memory_format

SCORES = ("log_prob", "logit")


@dataclass(frozen=True)
class Explanation:
    """A batch of explanations.

    Attributes:
        maps: (N, H, W) in [0, 1], min-max normalised per image, at the input resolution.
        raw: (N, h, w) the map at the layer's resolution, before resizing and normalising
            (occlusion: at the input resolution; with ``tta``: the mean of the copies'
            normalised maps).
        probs: (N, C) softmax probabilities of the explained forward pass.
        targets: (N,) the class each map explains.
        method: method name; layer: the layer name it was computed at (``input`` for occlusion).
    """

    maps: torch.Tensor
    raw: torch.Tensor
    probs: torch.Tensor
    targets: torch.Tensor
    method: str
    layer: str


def _sum_hw(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=(2, 3), keepdim=True)


def _weighted(weights: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    return F.relu((weights * act).sum(dim=1))


def _gradcam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # Selvaraju et al. 2017: channel weight = spatial mean of the score's gradient.
    return _weighted(grad.mean(dim=(2, 3), keepdim=True), act)


def _gradcampp(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # Chattopadhay et al. 2018, eq. 19: the closed-form alpha for an exponential score,
    # applied to the score's first derivative (as every common implementation does).
    g2 = grad * grad
    alpha = g2 / (2.0 * g2 + _sum_hw(act) * g2 * grad + 1e-6)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    return _weighted(_sum_hw(F.relu(grad) * alpha), act)


def _hirescam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # Draelos & Carin 2020: element-wise gradient x activation, no spatial averaging.
    return F.relu((grad * act).sum(dim=1))


def _xgradcam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # Fu et al. 2020: gradients weighted by the activation's share of its channel total.
    return _weighted(_sum_hw(grad * act / (_sum_hw(act) + 1e-7)), act)


def _layercam(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    # Jiang et al. 2021: positive gradients as per-location weights.
    return F.relu((F.relu(grad) * act).sum(dim=1))


GRADIENT_METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "gradcam": _gradcam,
    "gradcampp": _gradcampp,
    "hirescam": _hirescam,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
}
"""Maps from (activation, gradient) at the target layer; all share one forward + backward."""

PERTURBATION_METHODS = ("scorecam", "occlusion")
"""Methods that run extra (batched) forward passes instead of a backward pass."""

METHODS: dict[str, str] = {
    "gradcam": "Grad-CAM: activations weighted by the spatial mean of the gradient",
    "gradcampp": "Grad-CAM++: positive gradients with higher-order pixel weights",
    "hirescam": "HiResCAM: element-wise gradient x activation",
    "xgradcam": "XGradCAM: activation-normalised gradient weights",
    "layercam": "LayerCAM: positive gradient x activation per location",
    "scorecam": "Score-CAM: activation maps as input masks, weighted by the masked class score",
    "occlusion": "Occlusion sensitivity: class-score drop when a sliding patch is blanked",
}
"""Every explanation method by name, with a one-line description."""

ALIASES = {"gradcam++": "gradcampp", "grad-cam": "gradcam", "score-cam": "scorecam"}


def canonical_method(name: str) -> str:
    """The registered name for ``name`` (case-insensitive, ``gradcam++`` → ``gradcampp``)."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in METHODS:
        raise ConfigError(f"unknown explanation method {name!r}; available: {', '.join(METHODS)}")
    return key


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
    # Validate on the host before moving to the device: a check on a CUDA tensor would make the
    # host wait for the forward pass and leave the GPU idle while it queues the rest.
    t = torch.as_tensor(target, dtype=torch.long)
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise ConfigError(f"target must be one class index or one per image ({n}), got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t >= c)).any()):  # a CUDA tensor given as target costs one sync here
        raise ConfigError(f"target class out of range 0..{c - 1}")
    return t.to(probs.device, non_blocking=True)


def minmax_normalize(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-map min-max to [0, 1]; a flat map becomes all zeros."""
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > eps, (flat - lo) / span.clamp_min(eps), torch.zeros_like(flat))
    return out.view_as(maps)


def class_scores(logits: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """The explained score per image: ``log p_target + 1e-8`` (``log_prob``) or the raw logit."""
    logits = logits.float()
    if score == "log_prob":
        return torch.log(logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1) + 1e-8)
    return logits.gather(1, targets[:, None]).squeeze(1)


# Test-time augmentation for smoothing: horizontal flip x intensity scaling of the
# normalised input (the usual flip x {0.9, 1, 1.1} set). The identity comes first: its
# forward pass decides the predicted targets for every augmented copy.
TTA_AUGMENTATIONS: tuple[tuple[bool, float], ...] = (
    (False, 1.0), (False, 0.9), (False, 1.1), (True, 1.0), (True, 0.9), (True, 1.1),
)


def _augment(x: torch.Tensor, augs: Sequence[tuple[bool, float]]) -> torch.Tensor:
    parts = []
    for flip, factor in augs:
        xi = x.flip(-1) if flip else x
        parts.append(xi * factor if factor != 1.0 else xi)
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return fallback


def default_layer(model: nn.Module) -> str:
    """The registry's default explanation layer for ``model``."""
    arch = getattr(model, "arch", "")
    if not arch:
        raise ConfigError("layer is required for a model that is not from the registry")
    from ..models.registry import get_model_info

    return get_model_info(arch).default_layer


def _layer_pass(
    model: nn.Module,
    module: nn.Module | None,
    layer: str | None,
    x: torch.Tensor,
    n: int,
    target: int | str | Sequence[int] | torch.Tensor | None,
    score: str,
    threshold: float | None,
    precision: str,
    class_names: Sequence[str] | None,
    need_grad: bool,
    temperature: float = 1.0,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One forward pass with ``module`` hooked and, if asked, one backward pass to it only.

    ``x`` holds ``len(x) // n`` augmented copies of ``n`` images, the originals first; the
    originals' probabilities decide the targets of every copy.

    Returns:
        (activation or None without a layer, gradient or None, logits of all of ``x``,
        targets of the ``n`` originals).
    """
    hook: contextlib.AbstractContextManager[list[torch.Tensor]] = (
        capture_activation(module) if module is not None else contextlib.nullcontext([])
    )
    with hook as store, torch.set_grad_enabled(need_grad):
        with autocast(x.device, precision):
            logits = model(x)
        if module is not None and not store:
            raise ConfigError(f"layer {layer!r} was not used in the forward pass")
        act = store[-1] if store else None
        logits = logits.float()
        # The threshold applies to calibrated probabilities, as in Predictor.
        tgt = _targets(target, (logits[:n].detach() / temperature).softmax(dim=1), threshold, class_names)
        grad = None
        if need_grad:
            chosen = class_scores(logits, tgt.repeat(len(x) // n), score)
            # Scores of different images are independent in eval mode, so one grad call on
            # the sum gives every image its own gradient, and stops at the hooked activation.
            (grad,) = torch.autograd.grad(chosen.sum(), act)
    return (None if act is None else act.detach()), grad, logits.detach(), tgt


def _finish(raw: torch.Tensor, n: int, augs: Sequence[tuple[bool, float]], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps at ``size`` in [0, 1], raw) from per-copy raw maps, undoing the augmentations."""
    raw = raw.float()
    if raw.shape[-2:] == size:
        up = raw
    else:
        up = F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    if len(augs) == 1:
        return minmax_normalize(up), raw
    # Each copy is normalised before averaging, so no single augmentation dominates.
    ups = minmax_normalize(up).view(len(augs), n, *size)
    raws = minmax_normalize(raw).view(len(augs), n, *raw.shape[-2:])
    flips = torch.tensor([flip for flip, _ in augs], device=raw.device)[:, None, None, None]
    ups = torch.where(flips, ups.flip(-1), ups)
    raws = torch.where(flips, raws.flip(-1), raws)
    return minmax_normalize(ups.mean(dim=0)), raws.mean(dim=0)


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
    tta: bool = False,
    batch_size: int = 64,
    patch: int | None = None,
    stride: int | None = None,
    progress: bool = False,
    temperature: float = 1.0,
) -> Explanation:
    """Explain a batch of preprocessed images.

    Args:
        model: a classifier (e.g. from :func:`pneumoscope.create_model`); any device.
        images: (N, 3, H, W) preprocessed tensors; moved to the model's device.
        method: a name from :data:`METHODS` (``gradcam``, ``gradcampp``, ``hirescam``,
            ``xgradcam``, ``layercam``, ``scorecam``, ``occlusion``).
        layer: friendly layer name (``block5_conv3``) or module path; default: the model's
            default Grad-CAM layer. Occlusion ignores it.
        target: ``None``/``"predicted"`` (the predicted class), a class index or name, or one
            index per image.
        score: ``log_prob`` (log p_c + 1e-8, the seed's) or ``logit`` (the raw class logit,
            as pytorch-grad-cam's ``ClassifierOutputTarget``).
        threshold: decide the predicted class by P(positive) >= threshold instead of argmax.
        precision: ``fp32`` or ``bf16`` (already resolved; see :mod:`pneumoscope.runtime`).
        class_names: names for string targets.
        tta: average the maps over horizontal flips x input scalings {0.9, 1, 1.1}, each
            normalised and mapped back before averaging (all copies in one batch).
        batch_size: images per extra forward pass for Score-CAM and occlusion.
        patch, stride: occlusion window side and step in pixels (default: 1/8 of the image
            side, and half the patch).
        progress: a progress bar over Score-CAM's and occlusion's forward passes.
        temperature: the checkpoint's calibration temperature. It applies to the reported
            probabilities and to the predicted-class decision (the threshold is on calibrated
            probabilities); the scores the maps explain stay those of the raw logits, so
            calibrating a model never changes its explanations.
    """
    name = canonical_method(method)
    return explain_many(
        model, images, (name,), layer, target, score=score, threshold=threshold, precision=precision,
        class_names=class_names, tta=tta, batch_size=batch_size, patch=patch, stride=stride, progress=progress,
        temperature=temperature,
    )[name]


def explain_many(
    model: nn.Module,
    images: torch.Tensor,
    methods: Sequence[str],
    layer: str | None = None,
    target: int | str | Sequence[int] | torch.Tensor | None = None,
    *,
    score: str = "log_prob",
    threshold: float | None = None,
    precision: str = "fp32",
    class_names: Sequence[str] | None = None,
    tta: bool = False,
    batch_size: int = 64,
    patch: int | None = None,
    stride: int | None = None,
    progress: bool = False,
    temperature: float = 1.0,
) -> dict[str, Explanation]:
    """Several methods for the same images from one shared forward (+ one backward) pass.

    Arguments as for :func:`explain`; returns ``{method: Explanation}`` in the order given.
    """
    from . import perturbation

    names = list(dict.fromkeys(canonical_method(m) for m in methods))
    if not names:
        raise ConfigError("no explanation method given")
    if score not in SCORES:
        raise ConfigError(f"unknown score {score!r}; expected one of {', '.join(SCORES)}")
    if images.dim() != 4:
        raise ConfigError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    if names == ["occlusion"]:
        module = None  # occlusion needs no layer; the result says "input"
    else:
        layer = layer or default_layer(model)
        module = resolve_layer(model, layer)
    device = _model_device(model, images.device)
    x = to_memory_format(images.to(device), model)  # channels-last in, if the model's weights are
    if x.is_inference():
        x = x.clone()
    n, size = len(x), (x.shape[-2], x.shape[-1])
    augs = TTA_AUGMENTATIONS if tta else TTA_AUGMENTATIONS[:1]
    xa = _augment(x, augs)
    out: dict[str, Explanation] = {}
    with _explain_mode(model):
        act, grad, logits, tgt = _layer_pass(
            model, module, layer, xa, n, target, score, threshold, precision, class_names,
            need_grad=any(m in GRADIENT_METHODS for m in names), temperature=temperature,
        )
        probs = (logits[:n] / temperature).softmax(dim=1)
        tgt_all = tgt.repeat(len(augs))
        for name in names:
            with torch.no_grad():
                if name in GRADIENT_METHODS:
                    assert act is not None and grad is not None
                    raw = GRADIENT_METHODS[name](act.float(), grad.float())
                elif name == "scorecam":
                    assert act is not None
                    raw = perturbation.score_cam(
                        model, xa, act, tgt_all, score=score, precision=precision, batch_size=batch_size,
                        progress=progress,
                    )
                else:
                    raw = perturbation.occlusion(
                        model, xa, tgt_all, class_scores(logits, tgt_all, score), score=score,
                        precision=precision, batch_size=batch_size, patch=patch, stride=stride, progress=progress,
                    )
                maps, raw = _finish(raw, n, augs, size)
            out[name] = Explanation(
                maps=maps, raw=raw, probs=probs, targets=tgt, method=name,
                layer="input" if name == "occlusion" else str(layer),
            )
    return out
