"""Helpers shared by the Pillow reader (:mod:`.io`) and the DICOM reader (:mod:`.dicom`).

User-facing error wording, the size check done before any pixel is decoded, luminance
weights, and the mapping of decoded values onto the final ``[0, 1]`` ``float32`` image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pneumoscope.errors import ImageReadError, ImageTooLargeError

_EXPECTED = "expected a JPEG, PNG, BMP, TIFF or DICOM image"

# ITU-R BT.601 luma weights: what Pillow's convert("L") and JPEG's YCbCr use, so a colour
# export of a grey radiograph comes back to the same grey values.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _one_line(exc: BaseException) -> str:
    """First line of an exception message, bounded, for a one-line user-facing error."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _check_dimensions(p: Path | str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(
            p, f"image has a zero dimension ({width}x{height} pixels); expected a non-empty image"
        )
    if width * height > max_pixels:
        raise ImageTooLargeError(
            p,
            f"image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,} (max_pixels); refusing to decode it (possible decompression bomb)",
        )


def _target_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """``(width, height)`` shrunk so the longer side is ``max_side``; None when it already fits.

    Sides are rounded like the overlay's display size, so shrinking to the display size
    here and again later is a no-op the second time.
    """
    if max_side is None or max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _shrink_array(values: np.ndarray, target: tuple[int, int], band_pixels: int = 1 << 22) -> np.ndarray:
    """Resize a 2-D numeric array to ``target`` = (width, height), as ``float32``.

    Antialiased bilinear (Pillow's BILINEAR on mode ``F``, the filter of the model's
    preprocessing), done as two separable passes: the width is shrunk in bands of rows,
    each converted to float on its own, then the height. The source is never copied to
    float at full size; the extra memory is one band plus the (height x new width)
    intermediate.
    """
    from PIL import Image

    height, width = values.shape
    new_w, new_h = target
    band = max(1, band_pixels // max(width, 1))
    rows = []
    for y in range(0, height, band):
        part = np.ascontiguousarray(values[y : y + band], dtype=np.float32)
        img = Image.fromarray(part, mode="F") if new_w == width else Image.fromarray(part, mode="F").resize(
            (new_w, part.shape[0]), Image.Resampling.BILINEAR
        )
        rows.append(np.asarray(img, dtype=np.float32))
    narrow = np.concatenate(rows, axis=0)
    if new_h == height:
        return np.ascontiguousarray(narrow)
    out = Image.fromarray(narrow, mode="F").resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.float32).copy()


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((np.asarray(values, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(
        np.float32
    )


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretch the finite range of ``values`` onto [0, 1]; a flat image maps to 0."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    return _scale(values, float(finite.min()), float(finite.max()))


def _finish(gray: np.ndarray) -> np.ndarray:
    """Final contract: (H, W) C-contiguous float32, finite, within [0, 1]."""
    gray = np.nan_to_num(np.asarray(gray, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    # Float rounding (e.g. luma weights summing to 1 +- eps) can step just outside [0, 1].
    return np.ascontiguousarray(np.clip(gray, 0.0, 1.0))
