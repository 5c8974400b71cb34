"""Drawing explanations on radiographs: the seed's red top-5% hotspot and a jet heatmap."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

STYLES = ("hotspot", "heatmap")


def normalize_p99(raw: np.ndarray) -> np.ndarray:
    """The seed's normalisation: divide by the 99th percentile (else the max) and clip to [0, 1].

    A flat or all-zero map gives zeros, which draws as the plain grey image.
    """
    raw = np.asarray(raw, dtype=np.float32)
    ref = float(np.percentile(raw, 99))
    if ref <= 0:
        ref = float(raw.max())
    if ref <= 0:
        return np.zeros_like(raw)
    return np.clip(raw / ref, 0.0, 1.0)


def resize_map(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a map to ``shape`` (float32), as every overlay and score does it."""
    if m.shape == shape:
        return m.astype(np.float32)
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def _gray3(gray: np.ndarray) -> np.ndarray:
    g = np.clip(np.asarray(gray, dtype=np.float32), 0.0, 1.0)
    return np.repeat(g[..., None], 3, axis=2)


def hotspot_activation(raw: np.ndarray, shape: tuple[int, int], sigma: float = 1.5) -> np.ndarray:
    """The seed's hotspot: p99-normalise, resize, keep the top 5 %, rescale to [0,1], blur."""
    m = resize_map(normalize_p99(raw), shape)
    thr = float(np.percentile(m, 95))
    top = float(m.max())
    if top <= thr:
        return np.zeros(shape, dtype=np.float32)
    hot = np.where(m > thr, (m - thr) / (top - thr), 0.0).astype(np.float32)
    return gaussian_filter(hot, sigma=sigma).astype(np.float32)


def hotspot_overlay(gray: np.ndarray, raw: np.ndarray, alpha: float = 0.18, sigma: float = 1.5) -> np.ndarray:
    """Blend pure red into a grey copy of ``gray`` with alpha = ``alpha`` x hotspot activation.

    Args:
        gray: (H, W) image in [0, 1].
        raw: the raw CAM (any resolution; resized bilinearly to the image).
    Returns:
        (H, W, 3) uint8 RGB.
    """
    base = _gray3(gray)
    a = (alpha * hotspot_activation(raw, base.shape[:2], sigma))[..., None]
    red = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    out = base * (1.0 - a) + red * a
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def heatmap_overlay(gray: np.ndarray, raw: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """A jet heatmap of the min-max normalised map over the image, (H, W, 3) uint8."""
    from matplotlib import colormaps

    base = _gray3(gray)
    m = resize_map(np.asarray(raw, dtype=np.float32), base.shape[:2])
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    colour = colormaps["jet"](m)[..., :3].astype(np.float32)
    out = base * (1.0 - alpha) + colour * alpha
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def render_overlay(gray: np.ndarray, raw: np.ndarray, style: str = "hotspot") -> np.ndarray:
    if style == "hotspot":
        return hotspot_overlay(gray, raw)
    if style == "heatmap":
        return heatmap_overlay(gray, raw)
    from ..errors import ConfigError

    raise ConfigError(f"unknown overlay style {style!r}; expected one of {', '.join(STYLES)}")


#: The opacity each style blends its colour layer with (what :func:`render_overlay` draws).
DEFAULT_OPACITY = {"hotspot": 0.18, "heatmap": 0.4}


def heat_layer(raw: np.ndarray, shape: tuple[int, int], style: str = "hotspot") -> np.ndarray:
    """The colour layer of an overlay as (H, W, 4) uint8 RGBA, for blending in a viewer.

    Drawn over the grey image with opacity :data:`DEFAULT_OPACITY` ``[style]`` it gives
    :func:`render_overlay`'s picture (up to rounding); a viewer can vary the opacity instead.
    ``hotspot`` is pure red with alpha = the hotspot activation; ``heatmap`` is opaque jet.
    """
    if style == "hotspot":
        a = hotspot_activation(raw, shape)
        out = np.zeros((*shape, 4), dtype=np.uint8)
        out[..., 0] = 255
        out[..., 3] = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
        return out
    if style == "heatmap":
        from matplotlib import colormaps

        m = resize_map(np.asarray(raw, dtype=np.float32), shape)
        lo, hi = float(m.min()), float(m.max())
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        colour = np.round(colormaps["jet"](m)[..., :3] * 255).astype(np.uint8)
        return np.concatenate([colour, np.full((*shape, 1), 255, dtype=np.uint8)], axis=2)
    from ..errors import ConfigError

    raise ConfigError(f"unknown overlay style {style!r}; expected one of {', '.join(STYLES)}")
