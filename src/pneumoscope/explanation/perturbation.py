"""Explanations from extra forward passes: Score-CAM and occlusion sensitivity.

Both build many perturbed copies of the inputs. The copies of every image in the batch are
pooled and run through the model in chunks of ``batch_size``, so a chunk is always full and
the device stays busy; masks are made on the device, chunk by chunk, so memory stays bounded.
The caller (:func:`pneumoscope.explanation.cam.explain_many`) has already put the model in
eval mode with frozen parameters.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..runtime import autocast
from .cam import class_scores


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(total, start + size))


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="pass", disable=not progress, leave=False)


@torch.no_grad()
def _scores(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, score: str, precision: str) -> torch.Tensor:
    with autocast(x.device, precision):
        logits = model(x)
    return class_scores(logits, targets, score)


@torch.no_grad()
def score_cam(
    model: nn.Module,
    x: torch.Tensor,
    act: torch.Tensor,
    targets: torch.Tensor,
    *,
    score: str = "log_prob",
    precision: str = "fp32",
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """Score-CAM (Wang et al. 2020) at the layer that produced ``act``.

    Every channel's activation map, upsampled to the input size and min-max normalised, masks
    the input; the target's score on the masked input, softmaxed over the channels, weights
    the channel in the map. With ``score="log_prob"`` the softmax of log-probabilities is the
    masked class probability normalised over channels; with ``score="logit"`` it is the
    softmax of the logits, as pytorch-grad-cam computes it.

    A channel that is flat over the image gives an all-zero mask, and all-zero inputs score
    the same whatever the image, so those channels share one forward pass.

    Args:
        x: (N, 3, H, W) inputs on the model's device; act: (N, K, h, w) their activations.
        targets: (N,) the class explained per image.

    Returns:
        (N, h, w) the non-negative Score-CAM map at the layer's resolution.
    """
    n, k = act.shape[:2]
    size = x.shape[-2:]
    act = act.float()
    flat = act.flatten(2)
    live = flat.amax(dim=2) > flat.amin(dim=2)
    scores = torch.empty((n, k), device=x.device)
    zeros = torch.zeros((1, *x.shape[1:]), device=x.device, dtype=x.dtype)
    with autocast(x.device, precision):
        zero_logits = model(zeros).float()
    blank = class_scores(zero_logits.expand(n, -1), targets, score)
    scores[:] = blank[:, None]
    pairs = live.nonzero()
    bar = _bar(len(pairs), "score-cam", progress)
    for sl in _chunks(len(pairs), batch_size):
        img, ch = pairs[sl, 0], pairs[sl, 1]
        masks = F.interpolate(act[img, ch][:, None], size=size, mode="bilinear", align_corners=True)
        lo = masks.amin(dim=(2, 3), keepdim=True)
        hi = masks.amax(dim=(2, 3), keepdim=True)
        masks = (masks - lo) / (hi - lo + 1e-8)
        scores[img, ch] = _scores(model, x[img] * masks.to(x.dtype), targets[img], score, precision)
        bar.update(len(img))
    bar.close()
    weights = scores.softmax(dim=1)
    return F.relu((weights[:, :, None, None] * act).sum(dim=1))


def occlusion_windows(size: int, patch: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` pixels, the last one flush with the edge."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


@torch.no_grad()
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    base: torch.Tensor,
    *,
    score: str = "log_prob",
    precision: str = "fp32",
    batch_size: int = 64,
    patch: int | None = None,
    stride: int | None = None,
    fill: float = 0.0,
    progress: bool = False,
) -> torch.Tensor:
    """Occlusion sensitivity (Zeiler & Fergus 2014): how much the target's score drops when a
    ``patch`` x ``patch`` window is set to ``fill``, averaged over the windows covering each pixel.

    ``fill`` 0 is the normalisation mean, i.e. a mid-grey patch. Windows slide by ``stride``
    and the last one is flush with the edge, so every pixel is covered.

    Args:
        x: (N, 3, H, W) inputs on the model's device; targets: (N,) classes to explain.
        base: (N,) the unoccluded score of each target.

    Returns:
        (N, H, W) the non-negative score drop at input resolution.
    """
    n, _, h, w = x.shape
    side = min(h, w)
    patch = patch or max(1, side // 8)
    stride = stride or max(1, patch // 2)
    if not 1 <= patch <= side:
        raise ConfigError(f"occlusion patch must be between 1 and the image side {side}, got {patch}")
    if stride < 1:
        raise ConfigError(f"occlusion stride must be at least 1, got {stride}")
    windows = [(y, x0) for y in occlusion_windows(h, patch, stride) for x0 in occlusion_windows(w, patch, stride)]
    m = len(windows)
    drops = torch.empty((n, m), device=x.device)
    wy = torch.tensor([y for y, _ in windows], device=x.device)
    wx = torch.tensor([x0 for _, x0 in windows], device=x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    bar = _bar(n * m, "occlusion", progress)
    for sl in _chunks(n * m, batch_size):
        flat = torch.arange(sl.start, sl.stop, device=x.device)
        img, win = flat // m, flat % m
        # (B, H, W) True inside each copy's window, built without a Python loop.
        in_y = (rows[None] >= wy[win, None]) & (rows[None] < wy[win, None] + patch)
        in_x = (cols[None] >= wx[win, None]) & (cols[None] < wx[win, None] + patch)
        inside = in_y[:, :, None] & in_x[:, None, :]
        batch = torch.where(inside[:, None], torch.full_like(x[img], fill), x[img])
        drops[img, win] = base[img] - _scores(model, batch, targets[img], score, precision)
        bar.update(len(flat))
    bar.close()
    total = torch.zeros((n, h, w), device=x.device)
    count = torch.zeros((h, w), device=x.device)
    for j, (y, x0) in enumerate(windows):
        total[:, y : y + patch, x0 : x0 + patch] += drops[:, j, None, None]
        count[y : y + patch, x0 : x0 + patch] += 1
    return F.relu(total / count)
