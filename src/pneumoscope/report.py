"""Human-readable evaluation report: case gallery and a single self-contained HTML file.

* :func:`select_gallery` picks which test cases to show, grouped the way the seed
  paper did (correct NORMAL, correct PNEUMONIA, false PNEUMONIA, missed PNEUMONIA).
* :func:`render_gallery` draws those cases (typically Grad-CAM overlays) as one PNG.
* :func:`write_report` assembles metrics, plots, gallery and run information into one
  ``report.html`` with every image embedded as a base64 data URI, so the report can be
  e-mailed or archived as a single file and opened without a server or JavaScript.

Rendering uses :class:`matplotlib.figure.Figure` with an Agg canvas, never ``pyplot``,
so it is thread-safe, opens no window and leaves matplotlib's global state alone.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from numpy.typing import ArrayLike

from pneumoscope.evaluation.metrics import (
    DEFAULT_CLASS_NAMES,
    check_binary_inputs,
    predict_labels,
)

from .fileio import atomic_write_text

__all__ = [
    "DISCLAIMER",
    "GALLERY_CELL_PX",
    "GALLERY_DPI",
    "GALLERY_HEADER_PX",
    "GROUPS",
    "GROUP_COLOURS",
    "GROUP_DISPLAY_NAMES",
    "GalleryTile",
    "assign_groups",
    "group_display_names",
    "render_gallery",
    "select_gallery",
    "write_report",
]

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

#: Shown prominently at the top of every report.
DISCLAIMER = (
    "Research tool only. This is not a diagnosis and not a medical device: its output must "
    "not be used for clinical decisions. Results on this test set do not guarantee performance "
    "on other hospitals, scanners or patient populations, and heat maps show what influenced the "
    "model, not where disease is."
)

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
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png", dpi=GALLERY_DPI, facecolor="white")
    return target


# --------------------------------------------------------------------------- HTML report

_IMAGE_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

_PLOT_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "roc": "ROC curve",
    "pr": "Precision-recall curve",
}

_CSS = """
body { font-family: "DejaVu Sans", Arial, Helvetica, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.3em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.disclaimer { background: #fff3cd; border: 2px solid #d39e00; border-radius: 6px; padding: 0.8em 1em;
              font-weight: bold; }
.warnings { background: #fdecea; border-left: 4px solid #c00000; padding: 0.5em 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-family: "DejaVu Sans Mono", monospace; }
.plots { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
.credit { margin-top: 2em; font-size: 0.9em; color: #555; }
"""

_HEADLINE = (
    ("accuracy", "Accuracy"),
    ("sensitivity", "Sensitivity (recall, {pos})"),
    ("specificity", "Specificity"),
    ("precision", "Precision (PPV, {pos})"),
    ("f1", "F1 ({pos})"),
    ("roc_auc", "ROC AUC"),
    ("pr_auc", "PR AUC (average precision)"),
    ("threshold", "Decision threshold (P ≥ threshold → {pos})"),
    ("n", "Cases (n)"),
)


def _esc(value: Any) -> str:
    """HTML-escape any value (quotes included, so it is safe inside attributes too)."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """Format a metric value for display: floats to 4 decimals, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def _data_uri(path: Path) -> str:
    """Read an image file and return it as a base64 ``data:`` URI."""
    mime = _IMAGE_MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: unsupported image type for the report (expected one of {sorted(_IMAGE_MIME)})")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"{path}: image file is empty")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure(path: str | os.PathLike[str], caption: str) -> str:
    """An embedded ``<figure>`` for an image file, captioned (escaped) with ``caption``."""
    p = Path(path)
    return (
        f'<figure><img src="{_data_uri(p)}" alt="{_esc(caption)}">'
        f"<figcaption>{_esc(caption)} <small>({_esc(p.name)})</small></figcaption></figure>"
    )


def _class_names_from(metrics: Mapping[str, Any]) -> tuple[str, str]:
    """Class names as used in ``metrics['per_class']``, falling back to the defaults."""
    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and len(per_class) == 2:
        neg, pos = (str(k) for k in per_class)
        return neg, pos
    return DEFAULT_CLASS_NAMES


def _metrics_html(metrics: Mapping[str, Any], class_names: tuple[str, str]) -> str:
    """Headline metric table, warnings, per-class table and confusion matrix table."""
    neg, pos = class_names
    rows = []
    for key, label in _HEADLINE:
        value = _fmt(metrics.get(key))
        if key == "n" and "n_positive" in metrics and "n_negative" in metrics:
            value += f" ({_fmt(metrics['n_positive'])} {pos} / {_fmt(metrics['n_negative'])} {neg})"
        rows.append(f'<tr><th>{_esc(label.format(pos=pos))}</th><td class="num">{_esc(value)}</td></tr>')
    parts = ['<h2>Headline metrics</h2>', f"<table>{''.join(rows)}</table>"]

    warnings = metrics.get("warnings") or []
    if warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
        parts.append(f'<div class="warnings"><strong>Warnings</strong><ul>{items}</ul></div>')

    per_class = metrics.get("per_class")
    if isinstance(per_class, Mapping) and per_class:
        body = "".join(
            f"<tr><th>{_esc(name)}</th>"
            + "".join(f'<td class="num">{_esc(_fmt(vals.get(k)))}</td>' for k in ("precision", "recall", "f1", "support"))
            + "</tr>"
            for name, vals in per_class.items()
            if isinstance(vals, Mapping)
        )
        for avg in ("macro", "weighted"):
            vals = metrics.get(avg)
            if isinstance(vals, Mapping):
                body += (
                    f"<tr><th>{avg} average</th>"
                    + "".join(f'<td class="num">{_esc(_fmt(vals.get(k)))}</td>' for k in ("precision", "recall", "f1"))
                    + "<td></td></tr>"
                )
        parts.append(
            "<h3>Per class</h3><table><tr><th>class</th><th>precision</th><th>recall</th>"
            f"<th>F1</th><th>support</th></tr>{body}</table>"
        )
    return "\n".join(parts)


def _confusion_table(metrics: Mapping[str, Any], class_names: tuple[str, str]) -> str:
    """The confusion matrix as a text table (readable without images, copyable)."""
    cm = metrics.get("confusion_matrix")
    try:
        (tn, fp), (fn, tp) = cm  # type: ignore[misc]
    except (TypeError, ValueError):
        return ""
    neg, pos = (_esc(c) for c in class_names)
    return (
        f"<table><tr><th>true \\ predicted</th><th>{neg}</th><th>{pos}</th></tr>"
        f'<tr><th>{neg}</th><td class="num">{_esc(tn)}</td><td class="num">{_esc(fp)}</td></tr>'
        f'<tr><th>{pos}</th><td class="num">{_esc(fn)}</td><td class="num">{_esc(tp)}</td></tr></table>'
    )


def _info_value(value: Any) -> str:
    """Render a run-info value as text: containers as JSON, everything else via str()."""
    if isinstance(value, (Mapping, list, tuple)):
        try:
            return json.dumps(value, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    title: str,
    metrics: dict[str, Any],
    plots: dict[str, Path],
    gallery: Path | None = None,
    sections: list[tuple[str, str]] | None = None,
    run_info: dict[str, Any] | None = None,
    credit: str | None = None,
) -> Path:
    """Write ``out_dir/report.html``: one self-contained file with all images embedded.

    Layout: title, disclaimer (:data:`DISCLAIMER`), headline metrics, any metric
    warnings, per-class table, confusion matrix (table and image), ROC and PR curves
    (then any other entries of ``plots``), the gallery, the extra ``sections`` in order,
    a run-information table and the credit line. Every string that comes from the
    caller or the data (title, names, keys, values, file names, credit) is
    HTML-escaped; only the bodies of ``sections`` are inserted as-is.

    Args:
        out_dir: Directory for ``report.html`` (created if missing).
        title: Report title.
        metrics: Dict from :func:`pneumoscope.evaluation.metrics.compute_metrics`;
            missing entries are shown as n/a.
        plots: ``{name: image path}``, typically from
            :func:`pneumoscope.evaluation.plots.save_evaluation_plots`.
        gallery: Optional gallery image from :func:`render_gallery`.
        sections: Extra ``(heading, HTML fragment)`` sections. The heading is escaped;
            the fragment is trusted HTML and must come from code, not from data.
        run_info: Key/value pairs (checkpoint, data folder, seed, versions, ...).
        credit: Optional credit/attribution line.

    Returns:
        Path of the written ``report.html``.

    Raises:
        FileNotFoundError: If a plot or gallery image does not exist.
        ValueError: If an image is empty or of an unsupported type.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = _class_names_from(metrics)

    body: list[str] = [
        f"<h1>{_esc(title)}</h1>",
        f'<div class="disclaimer" role="note">⚠ {_esc(DISCLAIMER)}</div>',
        _metrics_html(metrics, class_names),
    ]

    # Known plots first in a fixed order, then any extra ones in the caller's order.
    ordered = [k for k in _PLOT_TITLES if k in plots] + [k for k in plots if k not in _PLOT_TITLES]
    cm_table = _confusion_table(metrics, class_names)
    if cm_table or "confusion_matrix" in plots:
        body.append("<h2>Confusion matrix</h2>")
        body.append(cm_table)
        if "confusion_matrix" in plots:
            body.append(_figure(plots["confusion_matrix"], "Confusion matrix (rows: true class)"))
    curves = [k for k in ordered if k != "confusion_matrix"]
    if curves:
        body.append("<h2>Curves</h2>")
        figs = "".join(_figure(plots[k], _PLOT_TITLES.get(k, k)) for k in curves)
        body.append(f'<div class="plots">{figs}</div>')

    if gallery is not None:
        names = ", ".join(group_display_names(class_names).values())
        body.append("<h2>Case gallery</h2>")
        body.append(
            f"<p>Selected test cases grouped as {_esc(names)}; the border colour shows the group "
            f"and the title the prediction, P({_esc(class_names[1])}) and confidence.</p>"
        )
        body.append(_figure(gallery, "Case gallery"))

    for heading, fragment in sections or []:
        body.append(f"<h2>{_esc(heading)}</h2>\n{fragment}")

    if run_info:
        rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_info_value(v))}</td></tr>" for k, v in run_info.items())
        body.append(f"<h2>Run information</h2><table>{rows}</table>")

    if credit:
        body.append(f'<p class="credit">{_esc(credit)}</p>')

    document = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body>\n</html>\n"
    )
    target = out / "report.html"
    atomic_write_text(target, document)
    return target
