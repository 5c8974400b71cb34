"""Measures of explanation quality: faithfulness, localisation and a sanity check.

* Deletion / insertion (Petsiuk et al. 2018, RISE): pixels are removed from (deletion) or
  added to (insertion) the image in the order the map ranks them, and the target's
  probability is traced; a faithful map makes it fall fast (low deletion AUC) and rise fast
  (high insertion AUC). Every step of every image is one input, and the inputs are pooled
  into full forward batches.
* Pointing game (Zhang et al. 2016), hit rate and IoU of the thresholded map against a
  lesion mask; share of map mass inside a region (the lung fields).
* Model randomisation (Adebayo et al. 2018): a map that does not change when the top
  layers are re-initialised does not explain what the model learned.

All functions take maps already at the input resolution, in [0, 1], as
:class:`~pneumoscope.explanation.cam.Explanation` gives them.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..runtime import autocast


def _pixel_ranks(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(N, H*W) rank of each pixel, 0 = most important; ties (flat zero regions) broken at random."""
    flat = maps.flatten(1).float()
    jitter = torch.rand(flat.shape, generator=generator).to(flat.device) * 1e-6
    order = torch.argsort(flat + jitter, dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def _blur(x: torch.Tensor) -> torch.Tensor:
    """A heavy Gaussian blur: insertion's starting canvas keeps the layout, not the detail."""
    sigma = max(1.0, x.shape[-1] / 16)
    radius = min(int(2 * sigma), (min(x.shape[-2:]) - 1) // 2)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # separable: rows,
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # then columns


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int = 16,
    batch_size: int = 64,
    precision: str = "fp32",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion AUC per image.

    Deletion replaces pixels, most important first, by 0 (the normalisation mean); insertion
    copies them, most important first, onto a blurred version of the image. The AUC is the
    mean target probability over ``steps + 1`` evenly spaced fractions (trapezoid rule).

    Args:
        model: the classifier, in eval mode; x: (N, 3, H, W) on its device.
        maps: (N, H, W) explanation maps; targets: (N,) the explained classes.

    Returns:
        (deletion AUC, insertion AUC), each (N,) on the CPU.
    """
    if steps < 1:
        raise ConfigError(f"steps must be at least 1, got {steps}")
    n, _, h, w = x.shape
    gen = torch.Generator().manual_seed(seed)
    ranks = _pixel_ranks(maps.to(x.device), gen).view(n, 1, h, w)
    canvas = _blur(x)
    fractions = torch.linspace(0, 1, steps + 1, device=x.device)
    probs = torch.empty((2, n, steps + 1), device=x.device)
    pairs = n * (steps + 1)
    for start in range(0, 2 * pairs, batch_size):
        flat = torch.arange(start, min(2 * pairs, start + batch_size), device=x.device)
        mode, rest = flat // pairs, flat % pairs
        img, step = rest // (steps + 1), rest % (steps + 1)
        chosen = (ranks[img] < (fractions[step] * h * w)[:, None, None, None])
        deleted = torch.where(chosen, torch.zeros_like(x[img]), x[img])
        inserted = torch.where(chosen, x[img], canvas[img])
        batch = torch.where((mode == 0)[:, None, None, None], deleted, inserted)
        with autocast(x.device, precision):
            logits = model(batch)
        probs[mode, img, step] = logits.float().softmax(dim=1).gather(1, targets[img, None]).squeeze(1)
    auc = torch.trapezoid(probs, dx=1.0 / steps, dim=2)
    return auc[0].cpu(), auc[1].cpu()


def random_maps(n: int, coarse: tuple[int, int], size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Uniform noise at the explanation layer's resolution, upsampled like a CAM: the chance
    baseline for every measure here, with the same spatial smoothness as the real maps."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand((n, 1, *coarse), generator=gen)
    up = F.interpolate(noise, size=size, mode="bilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).min(1).values[:, None, None]
    hi = up.flatten(1).max(1).values[:, None, None]
    return (up - lo) / (hi - lo).clamp_min(1e-12)


def pointing_hits(maps: np.ndarray, masks: np.ndarray, tolerance: int = 2) -> np.ndarray:
    """Pointing game: is each map's maximum inside its mask grown by ``tolerance`` pixels?

    A map with no maximum (all zero) misses.
    """
    from scipy.ndimage import binary_dilation

    hits = np.zeros(len(maps), dtype=bool)
    for i, (m, mask) in enumerate(zip(maps, masks)):
        if m.max() <= 0:
            continue
        grown = binary_dilation(mask, iterations=tolerance) if tolerance > 0 else mask
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        hits[i] = bool(grown[y, x])
    return hits


def overlap_scores(maps: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(hit, IoU) of the map thresholded at ``threshold`` against each mask.

    ``hit``: the thresholded region touches the mask at all; ``IoU``: intersection over union.
    """
    region = maps >= threshold
    inter = (region & masks).sum(axis=(1, 2))
    union = (region | masks).sum(axis=(1, 2))
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return inter > 0, iou


def mass_inside(maps: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """Share of each map's total mass that lies inside its region (NaN for an all-zero map)."""
    total = maps.sum(axis=(1, 2))
    inside = (maps * regions).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def rank_correlation(a: torch.Tensor, b: torch.Tensor, side: int = 32) -> np.ndarray:
    """Spearman rank correlation per image between two (N, H, W) map batches.

    Maps are area-averaged to at most ``side`` x ``side`` first, so interpolation detail does
    not count. A flat map has no ranking and gives NaN.
    """
    from scipy.stats import spearmanr

    s = (min(side, a.shape[-2]), min(side, a.shape[-1]))
    pa = F.adaptive_avg_pool2d(a.float()[:, None].cpu(), s).flatten(1).numpy()
    pb = F.adaptive_avg_pool2d(b.float()[:, None].cpu(), s).flatten(1).numpy()
    out = np.full(len(pa), np.nan)
    for i in range(len(pa)):
        if np.ptp(pa[i]) > 0 and np.ptp(pb[i]) > 0:
            out[i] = spearmanr(pa[i], pb[i]).statistic
    return out


def randomized_top_layers(model: nn.Module, layer: str, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose head and layers from ``layer``'s block up are re-initialised.

    For a :class:`~pneumoscope.models.base.Classifier` that is the head plus every child of
    ``features`` from the one that computes ``layer`` (for a VGG ReLU, the conv before it)
    to the end: the cascading randomisation of Adebayo et al., stopped at the explained layer.
    """
    from ..models.base import Classifier

    if not isinstance(model, Classifier):
        raise ConfigError("model randomisation needs a pneumoscope Classifier (from create_model)")
    path = model.module_path(layer)
    parts = path.split(".")
    if parts[0] != "features" or len(parts) < 2 or not parts[1].isdigit():
        raise ConfigError(f"layer {layer!r} is not inside the backbone's features")
    rand = copy.deepcopy(model)
    children = list(rand.features.children())
    start = int(parts[1])
    while start > 0 and not any(True for _ in children[start].parameters()):
        start -= 1  # a ReLU or pool has no weights: re-initialise the conv that feeds it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for child in [*children[start:], rand.head]:
            for mod in child.modules():
                reset = getattr(mod, "reset_parameters", None)
                if callable(reset) and any(True for _ in mod.parameters(recurse=False)):
                    reset()
    return rand
