"""Diagnostic figures: confusion matrix, ROC curve and precision-recall curve.

Figures are built with :class:`matplotlib.figure.Figure` and rendered by
:class:`matplotlib.backends.backend_agg.FigureCanvasAgg` directly instead of through
``pyplot``: that never selects a GUI backend, never opens a window, keeps no global
figure registry (so nothing leaks in long runs) and is safe to call from several
threads. No ``rcParams`` are changed, so other users of matplotlib are unaffected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_curve,
)

from ..fileio import atomic_path
from .metrics import (
    DEFAULT_CLASS_NAMES,
    check_binary_inputs,
    predict_labels,
)

__all__ = ["plot_confusion_matrix", "plot_pr", "plot_reliability", "plot_roc", "save_evaluation_plots"]

_DPI = 120
_OPERATING_POINT_COLOUR = "#d62728"


def _new_figure(width_in: float, height_in: float) -> Figure:
    """Create a figure with its own Agg canvas (no pyplot, no global state)."""
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (creating the parent directory); return the path."""
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return target


def _undefined_plot(path: str | os.PathLike[str], title: str, reason: str) -> Path:
    """Write a placeholder figure explaining why a curve cannot be drawn."""
    fig = _new_figure(5.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, fontsize=10, transform=ax.transAxes)
    fig.tight_layout()
    return _save(fig, path)


def _single_class_reason(y: np.ndarray, curve: str, class_names: Sequence[str]) -> str | None:
    """Return why ``curve`` is undefined for ``y``, or None when both classes are present."""
    present = np.unique(y)
    if present.size == 2:
        return None
    only = class_names[int(present[0])]
    return f"{curve} undefined:\nthe labels contain only {only} cases\n(n={y.size}); both classes are needed."


def plot_confusion_matrix(
    cm: ArrayLike,
    class_names: Sequence[str],
    path: str | os.PathLike[str],
    title: str = "Confusion matrix",
) -> Path:
    """Plot a confusion matrix with counts and row percentages in each cell.

    Rows are the true class and columns the predicted class (scikit-learn's layout,
    ``[[tn, fp], [fn, tp]]`` for binary). Cells are shaded by row percentage so a
    minority class is as readable as a majority one.

    Args:
        cm: Square matrix of non-negative counts, one row/column per class.
        class_names: Class names, in label order.
        path: Output PNG path.
        title: Figure title.

    Returns:
        The path written.

    Raises:
        ValueError: If ``cm`` is not square, has negative entries, or does not match
            ``class_names``.
    """
    mat = np.asarray(cm)
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {mat.shape}")
    if mat.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix is {mat.shape[0]}x{mat.shape[1]} but {len(class_names)} class names given")
    if (mat < 0).any():
        raise ValueError("confusion matrix must not contain negative counts")
    counts = mat.astype(np.int64)
    row_tot = counts.sum(axis=1, keepdims=True)
    # A class absent from the true labels has an all-zero row: show "–" rather than NaN%.
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(row_tot > 0, counts / np.maximum(row_tot, 1), np.nan)

    k = counts.shape[0]
    fig = _new_figure(1.6 * k + 2.2, 1.4 * k + 1.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.nan_to_num(frac, nan=0.0), cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            pct = "–" if np.isnan(frac[i, j]) else f"{100.0 * frac[i, j]:.1f}%"
            dark = not np.isnan(frac[i, j]) and frac[i, j] > 0.5
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{pct}",
                ha="center",
                va="center",
                fontsize=11,
                color="white" if dark else "black",
            )
    ax.set_xticks(range(k), labels=list(class_names))
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"{title}\n(n={int(counts.sum())}; % of true class)")
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(
    y_true: ArrayLike,
    prob: ArrayLike,
    threshold: float,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    title: str = "ROC curve",
) -> Path:
    """Plot the ROC curve with its AUC and mark the operating point at ``threshold``.

    The operating point is computed with :func:`predict_labels` (``prob >= threshold``)
    rather than read off the curve, so it matches the reported sensitivity and
    specificity exactly. Single-class input writes a figure that says the curve is
    undefined instead of failing.

    Args:
        y_true: 1-D true labels (0/1).
        prob: 1-D P(PNEUMONIA).
        threshold: Operating threshold in [0, 1].
        path: Output PNG path.
        class_names: Names of class 0 and 1 (for messages).
        title: Figure title.

    Returns:
        The path written.
    """
    y, p, t = check_binary_inputs(y_true, prob, threshold)
    reason = _single_class_reason(y, "ROC curve", class_names)
    if reason is not None:
        return _undefined_plot(path, title, reason)

    fpr, tpr, _ = roc_curve(y, p, pos_label=1)
    roc_auc = auc(fpr, tpr)
    pred = predict_labels(p, t)
    op_tpr = float(np.mean(pred[y == 1] == 1))
    op_fpr = float(np.mean(pred[y == 0] == 1))

    fig = _new_figure(5.0, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(fpr, tpr, lw=2, label=f"ROC (AUC = {roc_auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
    ax.plot(
        [op_fpr],
        [op_tpr],
        marker="o",
        ms=8,
        ls="none",
        color=_OPERATING_POINT_COLOUR,
        label=f"threshold {t:.3g}: sens {op_tpr:.3f}, spec {1.0 - op_fpr:.3f}",
    )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel(f"True positive rate (sensitivity, {class_names[1]})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_pr(
    y_true: ArrayLike,
    prob: ArrayLike,
    threshold: float,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    title: str = "Precision-recall curve",
) -> Path:
    """Plot the precision-recall curve with average precision and the operating point.

    The curve is drawn as a step function, matching how average precision integrates
    it. The prevalence of the positive class is shown as the no-skill baseline. When no
    case is predicted positive at ``threshold`` precision is undefined and the
    operating point is omitted (the legend says so).

    Args:
        y_true: 1-D true labels (0/1).
        prob: 1-D P(PNEUMONIA).
        threshold: Operating threshold in [0, 1].
        path: Output PNG path.
        class_names: Names of class 0 and 1 (for labels and messages).
        title: Figure title.

    Returns:
        The path written.
    """
    y, p, t = check_binary_inputs(y_true, prob, threshold)
    reason = _single_class_reason(y, "Precision-recall curve", class_names)
    if reason is not None:
        return _undefined_plot(path, title, reason)

    precision, recall, _ = precision_recall_curve(y, p, pos_label=1)
    ap = average_precision_score(y, p, pos_label=1)
    prevalence = float(np.mean(y == 1))
    pred = predict_labels(p, t)
    tp = int(np.sum((pred == 1) & (y == 1)))
    n_pred_pos = int(np.sum(pred == 1))

    fig = _new_figure(5.0, 4.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(recall, precision, lw=2, drawstyle="steps-post", label=f"PR (AP = {ap:.3f})")
    ax.axhline(prevalence, ls="--", lw=1, color="grey", label=f"no skill (prevalence {prevalence:.3f})")
    if n_pred_pos:
        op_rec = tp / int(np.sum(y == 1))
        op_prec = tp / n_pred_pos
        ax.plot(
            [op_rec],
            [op_prec],
            marker="o",
            ms=8,
            ls="none",
            color=_OPERATING_POINT_COLOUR,
            label=f"threshold {t:.3g}: recall {op_rec:.3f}, precision {op_prec:.3f}",
        )
    else:
        # Invisible entry so the legend still explains the missing marker.
        ax.plot([], [], ls="none", label=f"threshold {t:.3g}: no positive predictions")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(f"Recall (sensitivity, {class_names[1]})")
    ax.set_ylabel("Precision (PPV)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(
    y_true: ArrayLike,
    prob: ArrayLike,
    path: str | os.PathLike[str],
    *,
    n_bins: int = 15,
    temperature: float | None = None,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    title: str = "Reliability diagram",
) -> Path:
    """Plot observed frequency against predicted P(positive) per equal-width bin.

    A calibrated model's points lie on the diagonal; points below it mean over-confidence in
    the positive class. Bars in the lower panel count the cases per bin, since a bin of three
    cases says little. The title carries the ECE and MCE of
    :func:`pneumoscope.evaluation.calibration.calibration_bins`.

    Args:
        y_true: 1-D true labels (0/1).
        prob: 1-D P(positive class).
        path: Output PNG path.
        n_bins: Equal-width bins on [0, 1].
        temperature: Shown in the title when given (the temperature ``prob`` was scaled with).
        class_names: Names of class 0 and 1 (for the axis labels).
        title: Figure title.

    Returns:
        The path written.
    """
    from .calibration import calibration_bins

    bins = calibration_bins(y_true, prob, n_bins)
    filled = bins.count > 0
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2.0
    width = 1.0 / n_bins

    fig = _new_figure(5.0, 5.6)
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(gs[0])
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="perfect calibration")
    ax.vlines(bins.mean_prob[filled], bins.mean_prob[filled], bins.frac_positive[filled],
              color=_OPERATING_POINT_COLOUR, lw=3, alpha=0.35, label="gap (calibration error)")
    ax.plot(bins.mean_prob[filled], bins.frac_positive[filled], marker="o", lw=1.5, label="model")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(-0.01, 1.01)
    ax.set_ylabel(f"Observed fraction {class_names[1]}")
    ax.tick_params(labelbottom=False)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    t = "" if temperature is None else f", T = {temperature:.3g}"
    ax.set_title(f"{title}\nECE {bins.ece:.3f}, MCE {bins.mce:.3f} ({n_bins} bins{t})")
    hist = fig.add_subplot(gs[1], sharex=ax)
    hist.bar(centres, bins.count, width=width * 0.9, color="grey")
    hist.set_xlabel(f"Predicted P({class_names[1]})")
    hist.set_ylabel("cases")
    fig.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.1)
    return _save(fig, path)


def save_evaluation_plots(
    y_true: ArrayLike,
    prob: ArrayLike,
    threshold: float,
    out_dir: str | os.PathLike[str],
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> dict[str, Path]:
    """Write the confusion matrix, ROC and PR figures for one evaluation.

    Args:
        y_true: 1-D true labels (0/1).
        prob: 1-D P(PNEUMONIA).
        threshold: Operating threshold in [0, 1].
        out_dir: Directory to write into (created if missing).
        class_names: Names of class 0 and 1.

    Returns:
        ``{"confusion_matrix": out_dir/confusion_matrix.png, "roc": out_dir/roc.png,
        "pr": out_dir/pr.png}``.

    Raises:
        ValueError: On invalid input (see
            :func:`pneumoscope.evaluation.metrics.check_binary_inputs`).
    """
    y, p, t = check_binary_inputs(y_true, prob, threshold)
    if len(class_names) != 2:
        raise ValueError(f"class_names must name exactly two classes, got {class_names!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cm = confusion_matrix(y, predict_labels(p, t), labels=[0, 1])
    return {
        "confusion_matrix": plot_confusion_matrix(
            cm, class_names, out / "confusion_matrix.png", title=f"Confusion matrix at threshold {t:.3g}"
        ),
        "roc": plot_roc(y, p, t, out / "roc.png", class_names=class_names),
        "pr": plot_pr(y, p, t, out / "pr.png", class_names=class_names),
    }
