"""Case gallery: which test cases to show, and drawing them as one PNG.

* :func:`assign_groups` labels every case TN/TP/FP/FN (:data:`GROUPS`).
* :func:`select_gallery` picks which test cases to show, grouped the way the seed
  paper did (correct NORMAL, correct PNEUMONIA, false PNEUMONIA, missed PNEUMONIA).
* :func:`render_gallery` draws those cases (:class:`GalleryTile`, typically Grad-CAM
  overlays) as one PNG.

Rendering uses :class:`matplotlib.figure.Figure` with an Agg canvas, never ``pyplot``,
so it is thread-safe, opens no window and leaves matplotlib's global state alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from numpy.typing import ArrayLike

from ..evaluation.metrics import (
    DEFAULT_CLASS_NAMES,
    check_binary_inputs,
    predict_labels,
)
from ..fileio import atomic_path

#: Outcome groups in display order: true negatives, true positives, false positives,
#: false negatives (PNEUMONIA is the positive class).
GROUPS: tuple[str, str, str, str] = ("TN", "TP", "FP", "FN")

#: Display names for :data:`GROUPS` with the default class names (the seed's wording).
GROUP_DISPLAY_NAMES: dict[str, str] = {
    "TN": "correct NORMAL",
    "TP": "correct PNEUMONIA",
    "FP": "false PNEUMONIA",
    "FN": "missed PNEUMONIA",
}

#: Tile border colour per group (colour-blind-friendly tab10 hues).
GROUP_COLOURS: dict[str, str] = {
    "TN": "#2ca02c",
    "TP": "#1f77b4",
    "FP": "#ff7f0e",
    "FN": "#d62728",
}

#: Gallery PNGs are rendered at this resolution; with the sizes below the output size in
#: pixels is exact: width = ncols * cell width, height = header + nrows * cell height.
GALLERY_DPI = 100
#: (width, height) in pixels of one gallery cell: title (two lines), image, file name.
GALLERY_CELL_PX: tuple[int, int] = (180, 216)
#: Height in pixels of the legend strip at the top of a gallery.
GALLERY_HEADER_PX = 48

# Pixel layout inside one cell (bottom-up): file-name strip, square image, title strip.
_NAME_STRIP_PX = 16
_IMAGE_PX = 150


def group_display_names(class_names: Sequence[str] = DEFAULT_CLASS_NAMES) -> dict[str, str]:
    """Return ``{group: display name}`` for the given negative/positive class names.

    Args:
        class_names: Names of class 0 (negative) and class 1 (positive).

    Returns:
        E.g. ``{"TN": "correct NORMAL", "TP": "correct PNEUMONIA",
        "FP": "false PNEUMONIA", "FN": "missed PNEUMONIA"}`` for the defaults.
    """
    neg, pos = class_names[0], class_names[1]
    return {"TN": f"correct {neg}", "TP": f"correct {pos}", "FP": f"false {pos}", "FN": f"missed {pos}"}


def assign_groups(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> np.ndarray:
    """Label every case TN/TP/FP/FN using :func:`predict_labels` (``prob >= threshold``).

    Args:
        y_true: 1-D true labels (0 NORMAL, 1 PNEUMONIA).
        prob: 1-D P(PNEUMONIA).
        threshold: Operating threshold in [0, 1].

    Returns:
        1-D array of group codes (``"TN"``, ``"TP"``, ``"FP"``, ``"FN"``).

    Raises:
        ValueError: On invalid input.
    """
    y, p, t = check_binary_inputs(y_true, prob, threshold)
    pred = predict_labels(p, t)
    # Index = 2 * true + predicted, matching the layout [[TN, FP], [FN, TP]].
    lookup = np.array(["TN", "FP", "FN", "TP"])
    return lookup[2 * y + pred]


def select_gallery(
    y_true: ArrayLike,
    prob: ArrayLike,
    threshold: float,
    per_group: int = 16,
    total: int = 64,
) -> list[tuple[str, int]]:
    """Choose which cases to show in the gallery, deterministically.

    Each group in :data:`GROUPS` contributes up to ``per_group`` cases, ranked so the
    most telling come first: for TN/TP the most confident (lowest/highest P), for
    FP/FN the most confidently wrong (highest P for FP, lowest P for FN). If the groups
    together give fewer than ``total`` cases (a group is small, e.g. few missed
    PNEUMONIA), the remaining slots go to not-yet-chosen cases nearest P = threshold
    (the borderline ones), each labelled with its own group. If they give more than
    ``total``, cases are taken round-robin by rank across groups so every group stays
    represented. Ties are broken by index, so the result depends only on the input.

    Args:
        y_true: 1-D true labels (0 NORMAL, 1 PNEUMONIA).
        prob: 1-D P(PNEUMONIA).
        threshold: Operating threshold in [0, 1].
        per_group: Most cases taken from each group by the ranking rule.
        total: Gallery size to aim for (and the most returned).

    Returns:
        ``(group, index)`` pairs ordered by group (TN, TP, FP, FN); within a group the
        ranked picks come first, then borderline fill-ins nearest the threshold first.

    Raises:
        ValueError: On invalid input or negative ``per_group``/``total``.
    """
    y, p, t = check_binary_inputs(y_true, prob, threshold)
    if int(per_group) != per_group or per_group < 0:
        raise ValueError(f"per_group must be a non-negative integer, got {per_group!r}")
    if int(total) != total or total < 0:
        raise ValueError(f"total must be a non-negative integer, got {total!r}")
    per_group, total = int(per_group), int(total)
    groups = assign_groups(y, p, t)
    idx = np.arange(p.size)

    # Sort key per group: smaller = shown first. np.lexsort sorts by the last key
    # first, so (idx, key) means "by key, ties by index".
    rank_key = {"TN": p, "TP": -p, "FP": -p, "FN": p}
    ranked: dict[str, list[int]] = {}
    for g in GROUPS:
        members = idx[groups == g]
        order = np.lexsort((members, rank_key[g][members]))
        ranked[g] = [int(i) for i in members[order][:per_group]]

    picked: dict[str, list[int]] = {g: [] for g in GROUPS}
    n_ranked = sum(len(v) for v in ranked.values())
    if n_ranked <= total:
        picked = ranked
    else:
        # Round-robin by rank: rank 0 of every group, then rank 1, ... until full.
        taken = 0
        for r in range(per_group):
            for g in GROUPS:
                if taken < total and r < len(ranked[g]):
                    picked[g].append(ranked[g][r])
                    taken += 1

    fill: dict[str, list[int]] = {g: [] for g in GROUPS}
    n_missing = total - sum(len(v) for v in picked.values())
    if n_missing > 0:
        chosen = np.zeros(p.size, dtype=bool)
        for members in picked.values():
            chosen[members] = True
        rest = idx[~chosen]
        order = np.lexsort((rest, np.abs(p[rest] - t)))
        for i in rest[order][:n_missing]:
            fill[str(groups[i])].append(int(i))

    return [(g, i) for g in GROUPS for i in (*picked[g], *fill[g])]


@dataclass
class GalleryTile:
    """One case to draw in the gallery.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB image, e.g. a Grad-CAM overlay. ``(H, W)`` or
            ``(H, W, 1)`` grayscale is accepted and shown as gray.
        true_label: 0 (NORMAL) or 1 (PNEUMONIA).
        prob: P(PNEUMONIA) in [0, 1].
        threshold: Decision threshold used to call the case.
        group: One of :data:`GROUPS`; sets the border colour.
        name: Optional caption (e.g. file name), shown under the image, shortened.
        contour: Optional ``(H, W)`` bool mask (e.g. a planted lesion) whose outline is
            drawn as a thin cyan line.
    """

    image: np.ndarray
    true_label: int
    prob: float
    threshold: float
    group: str
    name: str = ""
    contour: np.ndarray | None = None

    def __post_init__(self) -> None:
        """Validate fields early so a bad tile names itself instead of failing mid-render."""
        img = np.asarray(self.image)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(
                f"gallery tile {self.name!r}: image must be an (H, W, 3) uint8 array, "
                f"got shape {np.shape(self.image)} dtype {np.asarray(self.image).dtype}"
            )
        self.image = img
        if self.group not in GROUPS:
            raise ValueError(f"gallery tile {self.name!r}: group must be one of {GROUPS}, got {self.group!r}")
        if self.true_label not in (0, 1):
            raise ValueError(f"gallery tile {self.name!r}: true_label must be 0 or 1, got {self.true_label!r}")
        # Reuse the shared validation for prob/threshold ranges.
        check_binary_inputs([int(self.true_label)], [self.prob], self.threshold)
        if self.contour is not None:
            mask = np.asarray(self.contour).astype(bool)
            if mask.shape != img.shape[:2]:
                raise ValueError(
                    f"gallery tile {self.name!r}: contour shape {mask.shape} does not match image {img.shape[:2]}"
                )
            self.contour = mask


def _shorten(text: str, limit: int = 26) -> str:
    """Shorten ``text`` to ``limit`` characters, keeping its end (file names differ there)."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def render_gallery(
    tiles: Sequence[GalleryTile],
    path: str | os.PathLike[str],
    ncols: int = 8,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> Path:
    """Render tiles as a grid PNG with a colour legend for the groups.

    Each tile is titled ``"✓ PNEUMONIA (true PNEUMONIA)\\nP=0.97 conf 0.97"``: a tick
    or cross (green/red) for right/wrong, the predicted and the true class, P(PNEUMONIA)
    and the confidence of the call, ``max(P, 1 - P)``. The border colour shows the
    group (:data:`GROUP_COLOURS`). The output size is exact: ``ncols' *
    GALLERY_CELL_PX[0]`` by ``GALLERY_HEADER_PX + nrows * GALLERY_CELL_PX[1]`` pixels,
    with ``ncols' = min(ncols, len(tiles))``.

    Args:
        tiles: Cases to draw, in order (row-major).
        path: Output PNG path (parent created if missing).
        ncols: Tiles per row.
        class_names: Names of class 0 and 1.

    Returns:
        The path written.

    Raises:
        ValueError: If ``tiles`` is empty or ``ncols < 1``.
    """
    if not tiles:
        raise ValueError("render_gallery needs at least one tile")
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    ncols = min(int(ncols), len(tiles))
    nrows = -(-len(tiles) // ncols)
    cell_w, cell_h = GALLERY_CELL_PX
    width_px = ncols * cell_w
    height_px = GALLERY_HEADER_PX + nrows * cell_h
    fig = Figure(figsize=(width_px / GALLERY_DPI, height_px / GALLERY_DPI), dpi=GALLERY_DPI)
    FigureCanvasAgg(fig)
    display = group_display_names(class_names)

    # Axes are placed in absolute pixel positions (converted to figure fractions)
    # instead of a layout engine: faster for 64 tiles and gives an exact, testable size.
    for k, tile in enumerate(tiles):
        row, col = divmod(k, ncols)
        left = col * cell_w + (cell_w - _IMAGE_PX) / 2
        bottom = height_px - GALLERY_HEADER_PX - (row + 1) * cell_h + _NAME_STRIP_PX
        ax = fig.add_axes((left / width_px, bottom / height_px, _IMAGE_PX / width_px, _IMAGE_PX / height_px))
        ax.imshow(tile.image, interpolation="antialiased")
        if tile.contour is not None and tile.contour.any() and not tile.contour.all():
            # Pad with False so lesions touching the border still get a closed outline.
            padded = np.pad(tile.contour, 1).astype(np.float32)
            h, w = tile.contour.shape
            ax.contour(np.arange(-1, w + 1), np.arange(-1, h + 1), padded, levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
        colour = GROUP_COLOURS[tile.group]
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)

        pred = int(predict_labels([tile.prob], tile.threshold)[0])
        correct = pred == tile.true_label
        conf = max(tile.prob, 1.0 - tile.prob)
        ax.set_title(
            f"{'✓' if correct else '✗'} {class_names[pred]} (true {class_names[tile.true_label]})\n"
            f"P={tile.prob:.2f} conf {conf:.2f}",
            fontsize=7.5,
            fontfamily="DejaVu Sans",
            color="#1a7f1a" if correct else "#c00000",
            pad=3,
        )
        if tile.name:
            fig.text(
                (col * cell_w + cell_w / 2) / width_px,
                (bottom - 3) / height_px,
                _shorten(tile.name),
                ha="center",
                va="top",
                fontsize=6.5,
                fontfamily="DejaVu Sans",
                color="#444444",
            )

    counts = {g: sum(1 for t in tiles if t.group == g) for g in GROUPS}
    handles = [Patch(facecolor="white", edgecolor=GROUP_COLOURS[g], linewidth=3) for g in GROUPS if counts[g]]
    labels = [f"{display[g]} ({counts[g]})" for g in GROUPS if counts[g]]
    fig.legend(
        handles,
        labels,
        loc="center",
        bbox_to_anchor=(0.5, 1.0 - (GALLERY_HEADER_PX / 2) / height_px),
        ncol=len(handles),
        frameon=False,
        prop={"family": "DejaVu Sans", "size": 9},
        handlelength=1.2,
        columnspacing=1.5,
    )

    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=GALLERY_DPI, facecolor="white")
    return target
