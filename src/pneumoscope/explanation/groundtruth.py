"""Where the evidence should be: lesion masks, RSNA-style boxes and lung-field masks.

Ground truth is matched to images by file stem (``synth-00042.png`` ↔ ``masks/…/synth-00042.png``,
``patientId`` ↔ ``<patientId>.dcm``), so masks may sit in any folder layout. Everything is
returned at the model's input size, the grid the explanation maps live on.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError

RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")


def index_masks(folder: str | Path) -> dict[str, Path]:
    """``stem → path`` for every PNG under ``folder``; a stem found twice is an error."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: no such mask folder; expected a folder of PNG masks named like the images")
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*.png")):
        if p.stem in found:
            raise DataError(f"{root}: two masks for {p.stem!r} ({found[p.stem]} and {p}); mask names must be unique")
        found[p.stem] = p
    if not found:
        raise DataError(f"{root}: no PNG masks found")
    return found


def beside_mask(root: Path, image: Path, kind: str = "masks") -> Path | None:
    """The mask a dataset laid out like ``pneumoscope synth``'s keeps for ``image``:
    ``root/<split>/<class>/x.png`` → ``root/<kind>/<split>/<class>/x.png`` (``kind``: ``masks``
    for lesions, ``lungs`` for lung fields), or None where there is none."""
    root = Path(root).resolve()
    try:
        mask = root / kind / Path(image).resolve().relative_to(root)
    except ValueError:
        return None
    return mask if mask.is_file() else None


def read_mask(path: Path, size: int) -> np.ndarray:
    """A mask PNG (non-zero = inside) as a (size, size) bool array, nearest-neighbour resized."""
    try:
        with Image.open(path) as im:
            m = im.convert("L").resize((size, size), Image.NEAREST)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable mask image ({exc})") from exc
    return np.asarray(m) > 127


def read_rsna_boxes(path: str | Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """Boxes by patientId from an RSNA Pneumonia Challenge CSV (``patientId,x,y,width,height,Target``).

    Rows with ``Target`` 0 (no opacity, empty box) are kept as patients without boxes.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such boxes file; expected a CSV with columns {','.join(RSNA_COLUMNS)}")
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in RSNA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{p}: missing column(s) {', '.join(missing)}; expected {','.join(RSNA_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            pid = (row["patientId"] or "").strip()
            if not pid:
                raise DataError(f"{p}: line {line}: empty patientId")
            entry = boxes.setdefault(pid, [])
            if (row["Target"] or "").strip() in ("0", ""):
                continue
            try:
                x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
            except (TypeError, ValueError):
                raise DataError(f"{p}: line {line}: x, y, width and height must be numbers for Target 1") from None
            if w <= 0 or h <= 0:
                raise DataError(f"{p}: line {line}: width and height must be positive")
            entry.append((x, y, w, h))
    return boxes


def boxes_to_mask(boxes: list[tuple[float, float, float, float]], original: tuple[int, int], size: int) -> np.ndarray:
    """Boxes in original-image pixels → a (size, size) mask on the model's (plainly resized) grid."""
    h0, w0 = original
    mask = np.zeros((size, size), dtype=bool)
    for x, y, w, h in boxes:
        x0, x1 = int(np.floor(x * size / w0)), int(np.ceil((x + w) * size / w0))
        y0, y1 = int(np.floor(y * size / h0)), int(np.ceil((y + h) * size / h0))
        mask[max(0, y0) : min(size, y1), max(0, x0) : min(size, x1)] = True
    return mask


def folder_masks(samples: Sequence[Any], folder: str | Path, size: int) -> list[np.ndarray | None]:
    """The mask of each sample at ``size`` from a folder of PNGs named like the images
    (:func:`index_masks`), None where the folder has none."""
    index = index_masks(folder)
    return [read_mask(index[s.path.stem], size) if s.path.stem in index else None for s in samples]


def lesion_ground_truth(
    samples: Sequence[Any], size: int, *, masks: str | Path | None = None, boxes: str | Path | None = None,
) -> list[np.ndarray | None]:
    """Lesion masks at ``size`` for ``samples`` (None where an image has none).

    From ``masks``, a folder of PNG masks named like the images (:func:`index_masks`), or from
    ``boxes``, an RSNA-format CSV (:func:`read_rsna_boxes`; boxes are in the original image's
    pixels, so each image with boxes is read for its size). Neither: all None.

    Raises:
        DataError: If the folder or CSV is unusable, or no patientId in ``boxes`` names an image.
    """
    from ..data.io import read_image

    if masks is not None:
        return folder_masks(samples, masks, size)
    lesion: list[np.ndarray | None] = [None] * len(samples)
    if boxes is not None:
        table = read_rsna_boxes(boxes)
        for i, s in enumerate(samples):
            if s.path.stem in table:
                lesion[i] = boxes_to_mask(table[s.path.stem], read_image(s.path).shape, size)
        if not any(m is not None for m in lesion):
            raise DataError(f"{boxes}: no patientId matches an image name in the data")
    return lesion
