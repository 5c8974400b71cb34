"""Radiograph → model tensor, and the seed's training augmentation as one batched op."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing contract stored in every checkpoint.

    A greyscale radiograph in [0, 1] is resized (bilinear, antialiased) to
    ``image_size`` x ``image_size``, copied to three channels and normalised with ``mean``/``std``.
    """

    image_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]))  # type: ignore[arg-type]

    def resize(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) float in [0,1] → (S, S) float32 tensor."""
        t = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
        s = self.image_size
        if t.shape[-2:] != (s, s):
            t = F.interpolate(t, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return t[0, 0].clamp_(0.0, 1.0)

    def normalize(self, gray: torch.Tensor) -> torch.Tensor:
        """(N, S, S) or (N, 1, S, S) in [0, 1] (any float/uint8 dtype) → (N, 3, S, S) normalised."""
        if gray.dtype == torch.uint8:
            gray = gray.float().div_(255.0)
        if gray.dim() == 3:
            gray = gray[:, None]
        mean = torch.tensor(self.mean, device=gray.device, dtype=gray.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=gray.device, dtype=gray.dtype).view(1, 3, 1, 1)
        return (gray.expand(-1, 3, -1, -1) - mean) / std

    def to_uint8(self, gray: np.ndarray) -> torch.Tensor:
        """(H, W) in [0, 1] → (S, S) uint8: the stored form of every model input.

        Training caches images in this form, so prediction goes through it too: the same file
        then gets exactly the same probability from ``train``, ``evaluate`` and ``predict``.
        """
        return self.resize(gray).mul_(255.0).round_().to(torch.uint8)

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        """One image (H, W) in [0, 1] → (3, S, S) model input."""
        return self.normalize(self.to_uint8(gray)[None])[0]


def random_flip_rotate_zoom(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Apply the seed's augmentation to a batch (N, C, H, W) with one ``grid_sample``.

    Each image gets its own horizontal flip (p = 0.5), rotation in ±``rotation_deg`` and zoom
    in [1 - zoom, 1 + zoom]. Doing it batched on the model's device keeps the 2-core CPU free
    and costs nothing on a GPU.
    """
    n = x.shape[0]
    dev = x.device
    u = torch.rand(n, 3, generator=generator, device="cpu").to(dev)
    angle = (u[:, 0] * 2 - 1) * math.radians(cfg.rotation_deg)
    scale = 1.0 + (u[:, 1] * 2 - 1) * cfg.zoom  # >1 zooms in
    flip = torch.where((u[:, 2] < 0.5) & torch.tensor(cfg.hflip, device=dev), -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3, device=dev, dtype=x.dtype)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=cfg.padding_mode, align_corners=False)
