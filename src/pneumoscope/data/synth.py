"""Procedurally drawn chest-radiograph phantoms.

The phantoms let the demo and the tests run end to end without shipping patient data.
Each image is a PA chest radiograph drawn from simple shapes: body outline, two lung
fields (the right one slightly larger, the left one with the cardiac notch), heart and
mediastinum, posterior and anterior ribs, clavicles, diaphragm domes, spine, hilar
vessels and, in some images of both classes, ECG electrodes. PNEUMONIA images add 1-3
patchy consolidations inside a lung field; these are the only signal that separates the
classes, so a classifier has to find them and Grad-CAM should light them up.

Everything is computed in an "attenuation" picture (higher = more tissue in the beam),
which is then mapped to display brightness the way a radiograph shows it: bone and soft
tissue bright, air dark.

Coordinates: images are drawn on a grid normalised to [-1, 1] in both axes, x to the
right and y downwards. The view is PA, so the patient's right lung is on the image left.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from pneumoscope.errors import ConfigError, DataError

__all__ = ["CLASS_NAMES", "SPLITS", "Phantom", "SynthSummary", "make_phantom", "shortcut_marker_box", "synth_dataset"]

CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
"""Class names; the index is the integer label."""

SPLITS: tuple[str, str, str] = ("train", "val", "test")
"""Split folder names, in the order of ``synth_dataset``'s ``splits`` argument."""

_MIN_SIZE = 32  # below this the ribs and lesions are sub-pixel and the phantom is meaningless
_MAX_LESION_TRIES = 20  # a lesion can land mostly behind the heart; retry rather than emit an empty mask


@dataclass(frozen=True)
class Phantom:
    """One synthetic chest radiograph with its ground truth.

    Attributes:
        image: ``(H, W)`` uint8 radiograph, bright tissue on a dark background.
        lesion_mask: ``(H, W)`` bool, the planted consolidations; all False for NORMAL.
        lung_mask: ``(H, W)`` bool, the aerated lung fields (heart and mediastinum excluded).
        label: 0 for NORMAL, 1 for PNEUMONIA.
    """

    image: np.ndarray
    lesion_mask: np.ndarray
    lung_mask: np.ndarray
    label: int


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`synth_dataset` wrote.

    Attributes:
        root: The dataset folder.
        counts: Number of images per split and class, e.g. ``counts["train"]["NORMAL"]``.
        seconds: Wall-clock time the generation took.
    """

    root: Path
    counts: dict[str, dict[str, int]]
    seconds: float


# --------------------------------------------------------------------------- helpers


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function via tanh, which cannot overflow for large ``|z|``."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _lerp(a: float, b: float, t: float) -> float:
    """Linear interpolation from ``a`` (t=0) to ``b`` (t=1)."""
    return a + (b - a) * t


@lru_cache(maxsize=64)
def _bspline_taps(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights of a cubic B-spline from ``cells + 4`` coarse samples to ``size`` points.

    Pixel centres are mapped into the coarse grid with a 1.5-cell margin, so every pixel
    has all four spline neighbours and the image edges are as random as the middle.

    Returns:
        ``(index, weight)``, both ``(4, size)``: output ``i`` is
        ``sum_k weight[k, i] * coarse[index[k, i]]``.
    """
    pos = (np.arange(size) + 0.5) / size * cells + 1.5
    base = np.floor(pos).astype(int)
    t = pos - base
    weight = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]) / 6.0
    index = np.stack([base - 1, base, base + 1, base + 2])
    index.setflags(write=False)
    weight.setflags(write=False)
    return index, weight


def _smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Smooth, roughly unit-variance noise with features about ``cell`` wide.

    White noise is drawn on a coarse grid and smoothed up to full size with a separable
    cubic B-spline. This costs a fraction of what a large-sigma Gaussian filter on the
    full image would, and keeps the feature scale independent of the pixel size. The
    spline is applied as four weighted gathers per axis rather than as matrix products:
    tiny BLAS calls hand work to OpenBLAS threads, which was 3x slower on a busy machine.

    Args:
        rng: Random source.
        size: Output side length in pixels.
        cell: Feature size in normalised units (the image spans 2.0).

    Returns:
        ``(size, size)`` float array.
    """
    cells = max(2, int(np.ceil(2.0 / cell)))
    coarse = rng.standard_normal((cells + 4, cells + 4))
    index, weight = _bspline_taps(size, cells)
    rows = sum(weight[k][:, None] * coarse[index[k], :] for k in range(4))
    fine = sum(weight[k][None, :] * rows[:, index[k]] for k in range(4))
    std = float(fine.std())
    return fine / std if std > 0 else fine


def _band(distance: np.ndarray, half_width: float) -> np.ndarray:
    """A soft-edged band profile: ~1 where ``|distance| < half_width``, falling off smoothly."""
    return _sigmoid((half_width - np.abs(distance)) / (0.25 * half_width + 1e-6))


# --------------------------------------------------------------------------- phantom


def _check_difficulty(difficulty: float) -> float:
    """Validate ``difficulty``; raises ConfigError unless it is a number in [0, 1]."""
    try:
        value = float(difficulty)
    except (TypeError, ValueError):
        raise ConfigError(f"difficulty must be a number in [0, 1], got {difficulty!r}") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise ConfigError(f"difficulty must be in [0, 1], got {difficulty!r}")
    return value


def shortcut_marker_box(size: int) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the shortcut marker (top-left corner) in a ``size`` px phantom."""
    side = max(3, size // 14)
    off = max(2, size // 32)
    return off, off + side, off, off + side


def make_phantom(
    rng: np.random.Generator,
    *,
    size: int = 128,
    label: int,
    difficulty: float = 0.5,
    shortcut: bool = False,
) -> Phantom:
    """Draw one synthetic PA chest radiograph.

    Args:
        rng: Random source; the phantom is a deterministic function of its state.
        size: Side length of the square image in pixels (at least 32).
        label: 0 (NORMAL) or 1 (PNEUMONIA, adds 1-3 consolidations inside the lungs).
        difficulty: In [0, 1]; higher gives fainter, smaller lesions and more noise.
        shortcut: If True, PNEUMONIA images get a small bright square in the top-left
            corner (a spurious cue for explanation-quality checks). NORMAL images are
            unaffected. It draws no random numbers, so the rest of the image is the same
            with or without it.

    Returns:
        The :class:`Phantom`.

    Raises:
        ConfigError: If ``label``, ``size`` or ``difficulty`` is invalid.
    """
    d = _check_difficulty(difficulty)
    if label not in (0, 1) or isinstance(label, bool):
        raise ConfigError(f"label must be 0 (NORMAL) or 1 (PNEUMONIA), got {label!r}")
    if not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ConfigError(f"size must be an integer >= {_MIN_SIZE}, got {size!r}")
    size = int(size)

    # Image grid in normalised units, then the patient's pose: the anatomy is drawn in
    # "body" coordinates (x, y) that are rotated, scaled and shifted against the detector.
    g = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    gy, gx = np.meshgrid(g, g, indexing="ij")
    angle = np.deg2rad(rng.uniform(-4.0, 4.0))
    scale = rng.uniform(0.88, 1.04)
    tx, ty = rng.uniform(-0.06, 0.06, size=2)
    aspect = rng.uniform(0.92, 1.06)  # broad vs slim build
    c, s = np.cos(angle), np.sin(angle)
    x = (c * (gx - tx) + s * (gy - ty)) / (scale * aspect)
    y = (-s * (gx - tx) + c * (gy - ty)) / scale
    ax_ = np.abs(x)
    px = 2.0 / size / scale  # one pixel in body units, for edge softness

    # Body: a squarish superellipse (shoulders) running off the bottom of the image, plus
    # the neck. Projected thickness grows towards the midline, as through a cylinder.
    body_a, body_b, body_cy = 0.90, 1.25, 0.34
    # The top edge drops laterally: sloping shoulders rather than a box.
    body_f = (ax_ / body_a) ** 3.5 + (np.abs(y - body_cy - 0.18 * x**2) / body_b) ** 4
    body = np.maximum(_sigmoid((1.0 - body_f) / 0.04), _band(x, 0.22) * _sigmoid((-0.55 - y) / px))
    thickness = body * (0.55 + 0.45 * np.sqrt(np.clip(1.0 - (x / body_a) ** 2, 0.0, 1.0)))
    att = 0.50 * thickness

    # Shoulders: humeral heads at the top corners, partly off the image.
    for side in (-1.0, 1.0):
        r = np.hypot(x - side * 0.97, y + 0.60)
        att += 0.12 * _sigmoid((0.13 - r) / px) * body

    # Lungs. Each is an egg (narrow apex, broad base) with a straighter medial border,
    # perturbed by smooth noise, cut off below by its diaphragm dome. The patient's right
    # lung (image left, side=-1) is larger and its hemidiaphragm sits higher.
    shape_noise = _smooth_noise(rng, size, 0.45)
    lungs = np.zeros((size, size))
    domes: list[tuple[float, float, float, float]] = []
    for side in (-1.0, 1.0):
        big = 1.06 if side < 0 else 1.0
        cx = side * rng.uniform(0.37, 0.42)
        cy = rng.uniform(-0.06, 0.02)
        lax = 0.33 * big * rng.uniform(0.90, 1.08)
        lay = 0.72 * big * rng.uniform(0.92, 1.06)
        u = (x - cx) / lax
        v = (y - cy) / lay
        u = u / (0.45 + 0.55 * np.sqrt(np.clip((v + 1.0) / 2.0, 0.0, 1.0)))
        exponent = np.where(u * side < 0, 3.2, 2.2)  # medial side flatter
        # Rounded apex, broad base (the base is then cut off by the diaphragm).
        f = np.abs(u) ** exponent + np.abs(v) ** np.where(v < 0, 2.2, 3.5) + 0.10 * shape_noise
        dome_top = cy + lay * (rng.uniform(0.52, 0.62) if side < 0 else rng.uniform(0.58, 0.68))
        dome_cx = cx + side * rng.uniform(-0.02, 0.05)
        dome_w = lax * rng.uniform(1.0, 1.3)
        dome_y = dome_top + 0.28 * ((x - dome_cx) / dome_w) ** 2
        domes.append((dome_top, dome_cx, dome_w, side))
        lung = _sigmoid((1.0 - f) / 0.08) * _sigmoid((dome_y - y) / px)
        lungs = np.maximum(lungs, lung)

    # Heart: a tilted ellipse, shifted to the patient's left (image right); where it
    # overlaps the left lung it carves the cardiac notch. Mediastinum and aortic knob above.
    # It sits on the left hemidiaphragm, so its lower border merges into the dome.
    hx, hy = rng.uniform(0.08, 0.14), domes[1][0] + rng.uniform(-0.10, -0.04)
    hax, hay = rng.uniform(0.28, 0.34), rng.uniform(0.22, 0.27)
    tilt = np.deg2rad(rng.uniform(-30.0, -15.0))
    hu = np.cos(tilt) * (x - hx) + np.sin(tilt) * (y - hy)
    hv = -np.sin(tilt) * (x - hx) + np.cos(tilt) * (y - hy)
    heart = _sigmoid((1.0 - (hu / hax) ** 2 - (hv / hay) ** 2) / 0.06)
    mw = rng.uniform(0.08, 0.11)
    mediastinum = _band(x - 0.02, mw) * _sigmoid((hy - y) / 0.05) * _sigmoid((y + 0.95) / px)
    knob = _sigmoid((0.065 - np.hypot(x - 0.10, y + 0.22)) / px)
    central = np.maximum(np.maximum(heart, mediastinum), knob)

    air = lungs * (1.0 - central)
    lung_mask = air > 0.5
    att -= 0.34 * air
    att += 0.015 * heart  # the heart is a bit denser than the abdomen it merges into
    # Trachea: a dark air column down the upper mediastinum.
    att -= 0.07 * _band(x - 0.01, 0.035) * _sigmoid((-0.25 - y) / 0.05) * body

    # Thoracic cage envelope: where ribs are drawn.
    cage = _sigmoid((0.84 - ax_) / 0.03) * _sigmoid((y + 0.86) / 0.03)
    cage = cage * _sigmoid((max(t for t, _, _, _ in domes) + 0.12 - y) / 0.04) * body

    # Posterior ribs: from the spine they run laterally, rising a little, then curve down
    # along the chest wall. A periodic profile along the rib "phase" gives all of them at
    # once; the phase is warped so that the lower ribs are further apart.
    rib_y0 = rng.uniform(-0.95, -0.88)
    n_ribs = rng.uniform(9.0, 10.5)
    curve = -0.30 * ax_ + 1.05 * ax_**2
    t = np.clip((y - curve - rib_y0) / 1.6, 0.0, None)
    phase = (t**0.85) * n_ribs
    frac = phase - np.floor(phase)
    posterior = _band(frac - 0.5, 0.19) * _sigmoid((ax_ - 0.06) / 0.02)
    # Anterior ribs: fainter and broader, descending from the lateral wall towards the
    # sternum; they stop at the costochondral junction, so they fade medially.
    ant_phase = (y + 0.55 * ax_ - rib_y0 + 0.2) / rng.uniform(0.16, 0.19) + rng.uniform(0.0, 1.0)
    ant_frac = ant_phase - np.floor(ant_phase)
    anterior = _band(ant_frac - 0.5, 0.17) * _sigmoid((ax_ - 0.22) / 0.05)
    att += cage * (0.065 * posterior + 0.03 * anterior)

    # Clavicles: S-shaped bands from the sternal notch out and up to the shoulders.
    clav_y = rng.uniform(-0.72, -0.64)
    clav_center = clav_y - 0.20 * (ax_ - 0.08) + 0.35 * (ax_ - 0.35) ** 2
    clav_span = _sigmoid((ax_ - 0.07) / 0.02) * _sigmoid((0.70 - ax_) / 0.03)
    att += 0.16 * _band(y - clav_center, 0.032) * clav_span * body

    # Spine: a bright column with faint vertebral banding, seen through the mediastinum.
    vert = 0.5 + 0.5 * np.cos(2.0 * np.pi * (y - rng.uniform(0.0, 0.12)) / 0.12)
    att += (0.06 + 0.03 * vert) * _band(x, 0.06) * body

    # Hilar vessels: radial streaks branching out of each hilum, made of noise that varies
    # fast with angle and slowly with radius. They put bright structure inside the lungs
    # of every image, so that "something bright in the lung" alone is not the class cue.
    for side in (-1.0, 1.0):
        hil_x, hil_y = side * rng.uniform(0.13, 0.17), rng.uniform(-0.06, 0.02)
        r = np.hypot(x - hil_x, y - hil_y)
        theta = np.arctan2(y - hil_y, x - hil_x)
        n_th, n_r = 80, 10
        polar = ndimage.gaussian_filter(rng.standard_normal((n_th, n_r)), (0.6, 1.2), mode="wrap")
        coords = np.stack([(theta + np.pi) / (2 * np.pi) * n_th, np.clip(r / 0.9, 0, 1) * (n_r - 1)])
        streak = ndimage.map_coordinates(polar / polar.std(), coords, order=1, mode="grid-wrap")
        vessels = np.clip(streak - 0.6, 0.0, None) * np.exp(-r / 0.28)
        att += 0.07 * vessels * air + 0.10 * np.exp(-((r / 0.07) ** 2)) * body

    # Distractor present in both classes alike: ECG electrodes (small bright rings).
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 5))):
            ex, ey = rng.uniform(-0.7, 0.7), rng.uniform(-0.7, 0.5)
            rr = np.hypot(x - ex, y - ey)
            att += 0.25 * _band(rr - 0.028, 0.008) * body + 0.10 * _sigmoid((0.012 - rr) / px) * body

    # Consolidations (PNEUMONIA only): thresholded smooth noise inside a random ellipse,
    # softened at the edges and filling in the aerated lung only.
    lesion_mask = np.zeros((size, size), dtype=bool)
    if label == 1:
        att, lesion_mask = _add_lesions(rng, att, air, lung_mask, size, d)

    # Display mapping. A saturating characteristic curve (like film, or a detector's
    # default LUT) keeps the contrast high in the dark lungs and compresses it in dense
    # tissue, so ribs stand out over the lungs and less over the abdomen. Exposure,
    # contrast and gamma then vary between "machines".
    img = (1.0 - np.exp(-2.5 * np.clip(att, 0.0, None))) / (1.0 - np.exp(-2.5 * 0.72))
    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-0.06, 0.06)
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.75, 1.3)
    # Detector blur, then low-frequency non-uniformity (heel effect, scatter) and
    # quantum-like noise that grows with difficulty.
    img = ndimage.gaussian_filter(img, 0.35 * size / 128.0 + 0.2)
    img = img + 0.035 * _smooth_noise(rng, size, 0.8) + rng.uniform(-0.04, 0.04) * gy
    noise_sd = _lerp(0.012, 0.05, d) * rng.uniform(0.8, 1.25)
    img = img + noise_sd * rng.standard_normal((size, size))
    image = np.clip(np.rint(np.clip(img, 0.0, 1.0) * 255.0), 0, 255).astype(np.uint8)

    if shortcut and label == 1:
        # Like a lead "R" marker, but only on PNEUMONIA images: a pure spurious cue.
        y0, y1, x0, x1 = shortcut_marker_box(size)
        image[y0:y1, x0:x1] = 250

    return Phantom(image=image, lesion_mask=lesion_mask, lung_mask=lung_mask, label=int(label))


def _add_lesions(
    rng: np.random.Generator,
    att: np.ndarray,
    air: np.ndarray,
    lung_mask: np.ndarray,
    size: int,
    difficulty: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Plant 1-3 consolidations in the lungs.

    Args:
        rng: Random source.
        att: Attenuation picture; not modified.
        air: Soft aerated-lung map in [0, 1]; a lesion replaces air, so it only shows there.
        lung_mask: Boolean lung mask, used to pick centres and to clip the lesion mask.
        size: Image side in pixels.
        difficulty: In [0, 1]; higher = fainter and smaller.

    Returns:
        The new attenuation picture and the boolean lesion mask (never empty).
    """
    rows = np.arange(size, dtype=float)[:, None]
    cols = np.arange(size, dtype=float)[None, :]
    # Lesion centres are drawn from the lung's interior, so that most of each lesion is
    # inside the lung rather than hidden behind the heart or below the diaphragm.
    depth = ndimage.distance_transform_edt(lung_mask)
    n_lesions = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
    amp_base = 0.34 * _lerp(0.85, 0.35, difficulty)  # fraction of the air attenuation refilled
    radius_base = _lerp(0.13, 0.08, difficulty) * size
    added = np.zeros_like(att)
    lesion_mask = np.zeros((size, size), dtype=bool)
    placed = 0
    for _ in range(_MAX_LESION_TRIES):
        if placed >= n_lesions:
            break
        radius = radius_base * rng.uniform(0.75, 1.3)
        candidates = np.flatnonzero(depth >= min(0.6 * radius, 0.8 * depth.max()))
        centre = int(rng.choice(candidates))
        r0, c0 = divmod(centre, size)
        a, b = radius * rng.uniform(0.75, 1.25), radius * rng.uniform(0.6, 1.0)
        phi = rng.uniform(0.0, np.pi)
        du = np.cos(phi) * (cols - c0) + np.sin(phi) * (rows - r0)
        dv = -np.sin(phi) * (cols - c0) + np.cos(phi) * (rows - r0)
        core = 1.0 - (du / a) ** 2 - (dv / b) ** 2
        texture = _smooth_noise(rng, size, 0.09)
        # Patchy: noise decides which parts of the ellipse are filled; the core bias makes
        # the centre mostly solid and the margin ragged.
        patch = _sigmoid((core + 0.45 * texture - 0.25) / 0.08)
        patch = ndimage.gaussian_filter(patch, 0.012 * size + 0.3)  # blurred margins
        patch = patch * (0.75 + 0.25 * _smooth_noise(rng, size, 0.05).clip(-1, 1))  # mottling
        mask = (patch > 0.4) & lung_mask
        if mask.sum() < 0.15 * np.pi * a * b:  # mostly outside the lung or noise ate it
            continue
        added = np.maximum(added, patch * rng.uniform(0.85, 1.15))
        lesion_mask |= mask
        placed += 1
    if placed == 0:
        # Pathological geometry (tiny lungs): fall back to a disc at the deepest lung point.
        r0, c0 = np.unravel_index(int(np.argmax(depth)), depth.shape)
        disc = np.hypot(rows - r0, cols - c0) <= max(2.0, 0.5 * radius_base)
        added = ndimage.gaussian_filter(disc.astype(float), 1.0)
        lesion_mask = (added > 0.4) & lung_mask
        if not lesion_mask.any():
            lesion_mask[r0, c0] = True
    return att + amp_base * added * air, lesion_mask


# --------------------------------------------------------------------------- dataset


def _split_counts(n: int, splits: tuple[float, float, float], pneumonia_fraction: float) -> dict[str, dict[str, int]]:
    """Per split and class image counts: sum to ``n``, each split with both classes."""
    fracs = np.asarray(splits, dtype=float)
    raw = fracs * n
    sizes = np.floor(raw).astype(int)
    # Largest remainder, ties to the earlier split, so the total is exactly n.
    for i in np.argsort(-(raw - sizes), kind="stable")[: n - int(sizes.sum())]:
        sizes[i] += 1
    # Every split needs two images (one per class); take them from the largest split.
    for i in range(3):
        while sizes[i] < 2:
            j = int(np.argmax(sizes))
            sizes[j] -= 1
            sizes[i] += 1
    counts: dict[str, dict[str, int]] = {}
    for name, k in zip(SPLITS, sizes):
        pneu = int(np.clip(round(int(k) * pneumonia_fraction), 1, int(k) - 1))
        counts[name] = {CLASS_NAMES[0]: int(k) - pneu, CLASS_NAMES[1]: pneu}
    return counts


def _check_dataset_args(
    n: int, size: int, difficulty: float, splits: tuple[float, float, float], pneumonia_fraction: float
) -> None:
    """Raise ConfigError for any invalid :func:`synth_dataset` argument."""
    _check_difficulty(difficulty)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 6:
        raise ConfigError(
            f"n must be an integer >= 6 (each of the 3 splits needs one NORMAL and one PNEUMONIA image), got {n!r}"
        )
    if not isinstance(size, (int, np.integer)) or size < _MIN_SIZE:
        raise ConfigError(f"size must be an integer >= {_MIN_SIZE}, got {size!r}")
    if len(splits) != 3 or any(not np.isfinite(f) or f <= 0 for f in splits) or abs(sum(splits) - 1.0) > 1e-6:
        raise ConfigError(f"splits must be three positive fractions (train, val, test) summing to 1, got {splits!r}")
    if not 0.0 < float(pneumonia_fraction) < 1.0:
        raise ConfigError(f"pneumonia_fraction must be strictly between 0 and 1, got {pneumonia_fraction!r}")


def _save_png(array: np.ndarray, path: Path) -> None:
    """Write an 8-bit greyscale PNG (bool arrays become 0/255)."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode="L").save(path, format="PNG")


def _synth_workers(workers: int | None, n: int) -> int:
    """Processes for ``n`` images: as asked, or one per available core for enough work."""
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, not {workers}")
        return min(workers, max(1, n))
    from ..runtime import available_cores

    # A process costs about as much to start as drawing a few dozen small phantoms.
    return max(1, min(available_cores(), 8, n // 64))


def _draw_and_save(job: tuple) -> dict[str, str]:
    """Draw image ``index`` of a dataset and write its PNGs under ``tmp``; its manifest row."""
    tmp, index, split, label, child_seed, size, difficulty, shortcut = job
    cls = CLASS_NAMES[label]
    name = f"synth-{index:05d}"
    ph = make_phantom(np.random.default_rng(child_seed), size=size, label=label, difficulty=difficulty, shortcut=shortcut)
    rel = f"{split}/{cls}/{name}.png"
    _save_png(ph.image, tmp / rel)
    _save_png(ph.lung_mask, tmp / "lungs" / rel)
    mask_rel = ""
    if label == 1:
        mask_rel = f"masks/{rel}"
        _save_png(ph.lesion_mask, tmp / mask_rel)
    return {"path": rel, "label": cls, "patient_id": name, "split": split, "mask_path": mask_rel}


def synth_dataset(
    out: str | Path,
    *,
    n: int = 600,
    size: int = 128,
    seed: int = 0,
    difficulty: float = 0.5,
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    pneumonia_fraction: float = 0.5,
    shortcut: bool = False,
    progress: bool = False,
    workers: int | None = None,
    only: tuple[str, ...] | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> SynthSummary:
    """Write a synthetic dataset in the Kaggle chest-X-ray folder layout.

    Layout under ``out``::

        {train,val,test}/{NORMAL,PNEUMONIA}/synth-00042.png   radiographs
        masks/<split>/PNEUMONIA/synth-00042.png                 lesion masks (0/255)
        lungs/<split>/<CLASS>/synth-00042.png                   lung masks (0/255)
        manifest.csv   path,label,patient_id,split,mask_path (paths relative to out)

    Each image is its own patient (``synth-<index:05d>``), so no patient spans splits.
    The output is generated in a temporary sibling folder and renamed into place at the
    end, so an error or Ctrl-C never leaves a half-written dataset.

    Args:
        out: Dataset folder to create; must not exist, or be empty.
        n: Total number of images over all splits (at least 6).
        size: Image side in pixels.
        seed: Seed; the same seed gives byte-identical files.
        difficulty: Lesion difficulty in [0, 1], see :func:`make_phantom`.
        splits: Fractions for train, val and test; positive, summing to 1.
        pneumonia_fraction: Fraction of PNEUMONIA images, strictly between 0 and 1.
            Each split gets at least one image of each class regardless.
        shortcut: Draw the spurious corner marker on PNEUMONIA images.
        progress: Show a tqdm progress bar.
        workers: Processes that draw and write images; None: one per CPU core available
            (at most 8), fewer for small datasets. The files do not depend on it.
        only: Draw only these splits (e.g. ``("test",)``); their images are byte-identical
            to the same split of a full draw, and the manifest lists only them. ``counts``
            still describes the full dataset.
        meanwhile: Called once in this process while the worker processes draw (before
            drawing when there is one worker), for work that can overlap with it: the demo
            imports its training stack there.

    Returns:
        A :class:`SynthSummary`.

    Raises:
        ConfigError: If an argument is invalid.
        DataError: If ``out`` exists and is not an empty folder.
    """
    from ..config import check_seed
    from ..fileio import check_output_folder

    start = time.perf_counter()
    _check_dataset_args(n, size, difficulty, splits, pneumonia_fraction)
    check_seed(seed)
    out = Path(out)
    check_output_folder(out, "a folder for the dataset (--out)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output folder {out} already exists and is not empty; choose another or remove it")
    counts = _split_counts(int(n), splits, float(pneumonia_fraction))
    if only is not None and (not only or any(split not in SPLITS for split in only)):
        raise ConfigError(f"only must name some of the splits {', '.join(SPLITS)}, got {only!r}")

    # One (split, label) slot per image, shuffled so that patient numbers interleave the
    # splits like a real export would; every image then gets its own child seed, so an
    # image depends only on (seed, index).
    slots = [(split, label) for split in SPLITS for label in (0, 1) for _ in range(counts[split][CLASS_NAMES[label]])]
    order = np.random.default_rng(seed).permutation(len(slots))
    children = np.random.SeedSequence(seed).spawn(len(slots))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the dataset should be readable like any folder
        jobs = [
            (tmp, index, *slots[int(slot)], children[index], int(size), difficulty, shortcut)
            for index, slot in enumerate(order)
            if only is None or slots[int(slot)][0] in only
        ]
        workers = _synth_workers(workers, len(jobs))
        with tqdm(total=len(jobs), desc="synth", unit="img", disable=not progress) as bar, ExitStack() as stack:
            results: Iterator[dict[str, str]] = map(_draw_and_save, jobs)
            if workers > 1:
                # Every image depends only on (seed, index), so the files are the same whatever
                # the number of processes; each process writes its own images into tmp.
                pool = stack.enter_context(ProcessPoolExecutor(max_workers=workers))
                results = pool.map(_draw_and_save, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
            if meanwhile is not None:
                meanwhile()  # the jobs are queued and (with a pool) being drawn
            rows = []
            for row in results:
                rows.append(row)
                bar.update(1)
        with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["path", "label", "patient_id", "split", "mask_path"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        if out.exists():
            out.rmdir()  # checked empty above; rename cannot replace a folder on every OS
        os.rename(tmp, out)
    except BaseException:
        # BaseException: Ctrl-C must clean up too.
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SynthSummary(root=out, counts=counts, seconds=time.perf_counter() - start)
