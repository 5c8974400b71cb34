"""Radiograph → model tensor, and the seed's training augmentation as one batched op."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing contract stored in every checkpoint.

    A greyscale radiograph in [0, 1] is resized (bilinear, antialiased) to
    ``image_size`` x ``image_size`` and quantised to 8 bits; ``intensity`` then optionally
    standardises its grey levels (``equalize``: histogram equalisation, so every image uses
    the full range with a flat histogram whatever the exposure, detector or windowing of the
    site that made it); finally it is copied to three channels and normalised with
    ``mean``/``std``.
    """

    image_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    intensity: str = "none"  # none | equalize

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ConfigError(f"intensity must be one of {', '.join(INTENSITY_MODES)}, not {self.intensity!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        # Checkpoints written before ``intensity`` existed used none.
        return cls(int(d["image_size"]), tuple(d["mean"]), tuple(d["std"]), str(d.get("intensity", "none")))  # type: ignore[arg-type]

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
        img = self.resize(gray).mul_(255.0).round_().to(torch.uint8)
        if self.intensity == "equalize":
            img = equalize_histogram(img)
        return img

    def __call__(self, gray: np.ndarray) -> torch.Tensor:
        """One image (H, W) in [0, 1] → (3, S, S) model input."""
        return self.normalize(self.to_uint8(gray)[None])[0]


INTENSITY_MODES = ("none", "equalize")


def equalize_histogram(img: torch.Tensor) -> torch.Tensor:
    """Histogram-equalise one uint8 image (any shape): grey levels mapped through their CDF.

    The darkest level present maps to 0 and the brightest to 255; a constant image is
    returned unchanged (there is no contrast to spread).
    """
    flat = img.reshape(-1).long()
    hist = torch.bincount(flat, minlength=256)
    cdf = hist.cumsum(0)
    lo = cdf[hist.nonzero()[0, 0]]
    span = cdf[-1] - lo
    if span <= 0:
        return img.clone()
    lut = ((cdf - lo).clamp(min=0).double() * 255.0 / span.double()).round().to(torch.uint8)
    return lut[flat].reshape(img.shape)


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    # Drawn on the CPU so a seeded generator gives the same augmentation on every device.
    return torch.rand(n, generator=generator, device="cpu")


def random_flip_rotate_zoom(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The geometric part of the augmentation on a batch (N, C, H, W), as one ``grid_sample``.

    Each image gets its own horizontal flip (p = 0.5), rotation in ±``rotation_deg``, zoom
    (``zoom`` about the centre, or log-uniform in ``zoom_range``), aspect stretch
    (``aspect``), crop position (``random_crop``: a zoomed-in view from anywhere in the image)
    and shift (``translate``). Batched on the model's device, it keeps the 2-core CPU free and
    costs nothing on a GPU.
    """
    n = x.shape[0]
    dev = x.device
    u = [_uniform(n, generator) for _ in range(6)]
    angle = (u[0] * 2 - 1) * math.radians(cfg.rotation_deg)
    lo, hi = cfg.zoom_range
    if (lo, hi) != (0.0, 0.0):
        scale = torch.exp(math.log(lo) + u[1] * (math.log(hi) - math.log(lo)))  # >1 zooms in
    else:
        scale = 1.0 + (u[1] * 2 - 1) * cfg.zoom
    stretch = torch.exp((u[5] * 2 - 1) * math.log1p(cfg.aspect)).sqrt()
    sx, sy = scale * stretch, scale / stretch
    flip = torch.where((u[2] < 0.5) & torch.tensor(cfg.hflip), -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos / sx * flip
    theta[:, 0, 1] = -sin / sy
    theta[:, 1, 0] = sin / sx * flip
    theta[:, 1, 1] = cos / sy
    # affine_grid works in [-1, 1] coordinates: a shift of 2 * f is a fraction f of the image.
    # A view zoomed in by s spans 2 / s of that range, so it can move 1 - 1/s and stay inside.
    room_x = 2 * cfg.translate + ((1 - 1 / sx).clamp(min=0) if cfg.random_crop else 0.0)
    room_y = 2 * cfg.translate + ((1 - 1 / sy).clamp(min=0) if cfg.random_crop else 0.0)
    theta[:, 0, 2] = (u[3] * 2 - 1) * room_x
    theta[:, 1, 2] = (u[4] * 2 - 1) * room_y
    theta = theta.to(device=dev, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=cfg.padding_mode, align_corners=False)


_BINOMIAL5 = (1.0, 4.0, 6.0, 4.0, 1.0)


def random_intensity(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """The photometric part on a batch (N, C, H, W) in [0, 1]; returns values in [0, 1].

    In order: gamma (exposure curve), contrast about each image's mean and brightness (detector
    and windowing), unsharp masking or blur (``sharpness``), and Gaussian noise. Each image
    draws its own parameters; a zero setting skips its step entirely.
    """
    n = x.shape[0]
    dev, dt = x.device, x.dtype

    def draw(width: float) -> torch.Tensor:  # uniform in [-width, width], shape (N, 1, 1, 1)
        return ((_uniform(n, generator) * 2 - 1) * width).view(n, 1, 1, 1).to(device=dev, dtype=dt)

    if cfg.gamma > 0:
        gamma = torch.exp(draw(math.log1p(cfg.gamma)))
        x = x.clamp(min=1e-4) ** gamma
    if cfg.contrast > 0 or cfg.brightness > 0:
        mean = x.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * (1 + draw(cfg.contrast)) + mean + draw(cfg.brightness)
        x = x.clamp(0.0, 1.0)
    if cfg.sharpness > 0:
        k1 = torch.tensor(_BINOMIAL5, device=dev, dtype=dt)
        k = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
        c = x.shape[1]
        blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k.expand(c, 1, 5, 5), groups=c)
        x = (x + draw(cfg.sharpness) * (x - blurred)).clamp(0.0, 1.0)
    if cfg.noise > 0:
        std = ((_uniform(n, generator) * cfg.noise).view(n, 1, 1, 1)).to(device=dev, dtype=dt)
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(device=dev, dtype=dt)
        x = (x + noise * std).clamp(0.0, 1.0)
    return x


ERASE_AREA = (0.02, 0.25)  # fraction of the image one erased rectangle covers
ERASE_ASPECT = (1 / 3, 3.0)  # its height / width


def random_erase(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p`` per image, fill one random rectangle with a flat random grey.

    The rectangle covers a share of the image drawn uniformly in :data:`ERASE_AREA`, at an
    aspect drawn log-uniformly in :data:`ERASE_ASPECT`, placed wholly inside the image; the
    grey is uniform in [0, 1]. Batch (N, C, H, W) in [0, 1].
    """
    n, _, h, w = x.shape
    if p <= 0 or n == 0:
        return x
    u = _uniform(5 * n, generator).view(5, n)
    area = (ERASE_AREA[0] + u[0] * (ERASE_AREA[1] - ERASE_AREA[0])) * h * w
    lo, hi = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
    aspect = torch.exp(lo + u[1] * (hi - lo))
    eh = torch.sqrt(area * aspect).clamp(1, h)
    ew = torch.sqrt(area / aspect).clamp(1, w)
    top = u[2] * (h - eh)
    left = u[3] * (w - ew)
    on = _uniform(n, generator) < p
    dev, dt = x.device, x.dtype
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1)) & on.view(n, 1, 1))
    fill = u[4].view(n, 1, 1, 1).to(device=dev, dtype=dt)
    return torch.where(inside[:, None].to(dev), fill, x)


MARKER_TEXTS = ("R", "L")  # the lead laterality markers burned into radiographs
MARKER_HEIGHT = (0.05, 0.15)  # a marker's cap height, as a fraction of the image side
MARKER_BAND = 0.3  # markers sit within this fraction of the side from a corner


@functools.lru_cache(maxsize=128)
def _glyph(text: str, px: int) -> torch.Tensor:
    """``text`` in Pillow's bundled font at ``px`` points: an alpha mask (h, w) in [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=px)
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    im = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(im).text((1 - left, 1 - top), text, fill=255, font=font)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)


def random_markers(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability ``p`` per image, burn in a bright "R" or "L" marker near a random corner.

    Radiographs carry lead laterality markers whose size, style and place depend on the site and
    the period; where they differ between the classes of a training set they are a shortcut
    (in the Kaggle train split a large marker at the top left is several times as common on
    PNEUMONIA images). Drawing them on images of both classes at random takes that cue away.
    The marker's cap height is drawn in :data:`MARKER_HEIGHT` of the side, its place within
    :data:`MARKER_BAND` of one of the four corners, its grey in [0.85, 1]. Batch (N, C, H, W) in [0, 1].
    """
    n, _, h, w = x.shape
    if p <= 0 or n == 0:
        return x
    u = _uniform(7 * n, generator).view(7, n).tolist()
    out = x.clone()
    for i in range(n):
        if u[0][i] >= p:
            continue
        text = MARKER_TEXTS[min(int(u[1][i] * len(MARKER_TEXTS)), len(MARKER_TEXTS) - 1)]
        cap = h * (MARKER_HEIGHT[0] + u[2][i] * (MARKER_HEIGHT[1] - MARKER_HEIGHT[0]))
        glyph = _glyph(text, max(6, round(cap / 0.72)))  # the font's cap height is ~0.72 of its size
        gh, gw = glyph.shape
        if gh >= h or gw >= w:
            continue
        corner = min(int(u[3][i] * 4), 3)
        y0 = int(u[4][i] * max(0, int(MARKER_BAND * h) - gh))
        x0 = int(u[5][i] * max(0, int(MARKER_BAND * w) - gw))
        if corner >= 2:
            y0 = h - gh - y0
        if corner % 2:
            x0 = w - gw - x0
        alpha = glyph.to(device=x.device, dtype=x.dtype)
        grey = 0.85 + 0.15 * u[6][i]
        patch = out[i, :, y0:y0 + gh, x0:x0 + gw]
        out[i, :, y0:y0 + gh, x0:x0 + gw] = patch * (1 - alpha) + grey * alpha
    return out


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Geometric then photometric augmentation of a batch (N, C, H, W) in [0, 1], then erasing
    and markers."""
    x = random_intensity(random_flip_rotate_zoom(x, cfg, generator), cfg, generator)
    if cfg.erase > 0:
        x = random_erase(x, cfg.erase, generator)
    return random_markers(x, cfg.markers, generator) if cfg.markers > 0 else x
