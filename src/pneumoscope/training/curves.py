"""``curves.png``: loss, validation AUC (and pointing) and learning rate per epoch, one colour band per stage.

Drawn from the run's ``metrics.csv`` once training ends, so a resumed run's figure covers
every epoch, including those of an earlier process. Like the evaluation plots, the figure
is rendered through the Agg canvas directly (no pyplot, no global state).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..fileio import atomic_path

__all__ = ["plot_training_curves", "read_metrics"]

_DPI = 110
_STAGE_SHADES = ("#f2f2f2", "#ffffff")


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_metrics(path: str | Path) -> list[dict[str, float | str]]:
    """Rows of ``metrics.csv`` with numbers parsed (missing or unparsable values are NaN)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [
        {"stage": r.get("stage", ""), **{k: _number(r.get(k)) for k in
                                         ("epoch", "train_loss", "val_loss", "val_auc", "val_pointing", "lr",
                                          "seconds")}}
        for r in rows
    ]


def plot_training_curves(metrics_csv: str | Path, out: str | Path, kept_epoch: int | None = None) -> Path | None:
    """Draw ``out`` (PNG) from ``metrics_csv``; returns None (and writes nothing) if it has no rows.

    Three panels share the epoch axis: training and validation loss, validation ROC AUC (with
    the validation pointing game where the run scored it, ``train.select: pointing``), and
    the learning rate at the end of each epoch (log scale). Stages are shaded alternately and
    named at the top, so a two-stage run shows where fine-tuning began. ``kept_epoch`` (the
    epoch ``best.ckpt`` holds) is marked by a dashed line in every panel.
    """
    rows = read_metrics(metrics_csv)
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10.0, 3.2), dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    validation: tuple[tuple[str, str, str], ...] = (("val_auc", "ROC AUC", "#2ca02c"),)
    if any(not math.isnan(float(r["val_pointing"])) for r in rows):
        validation += (("val_pointing", "pointing game", "#9467bd"),)
    panels = (
        ("loss", (("train_loss", "train", "#1f77b4"), ("val_loss", "validation", "#d62728"))),
        ("validation ROC AUC" + (" and pointing" if len(validation) > 1 else ""), validation),
        ("learning rate", (("lr", "lr", "#7f7f7f"),)),
    )
    # Stage spans as (name, first epoch, last epoch), in order of appearance.
    spans: list[tuple[str, float, float]] = []
    for r in rows:
        if spans and spans[-1][0] == r["stage"]:
            spans[-1] = (spans[-1][0], spans[-1][1], float(r["epoch"]))
        else:
            spans.append((str(r["stage"]), float(r["epoch"]), float(r["epoch"])))
    for ax, (title, series) in zip(axes, panels):
        for i, (_, lo, hi) in enumerate(spans):
            ax.axvspan(lo - 0.5, hi + 0.5, color=_STAGE_SHADES[i % 2], zorder=0)
        for key, label, colour in series:
            ys = [r[key] for r in rows]
            ax.plot(epochs, ys, marker="o", markersize=3, linewidth=1.4, color=colour, label=label)
        if kept_epoch:
            ax.axvline(kept_epoch, color="#555", linestyle="--", linewidth=1.0, zorder=1,
                       label="kept" if len(series) > 1 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        lrs = [float(r["lr"]) for r in rows]
        # A log scale shows a schedule that spans decades; a single drop reads better linearly.
        if title == "learning rate" and min(lrs) > 0 and max(lrs) / min(lrs) > 20:
            ax.set_yscale("log")
        if len(series) > 1:
            ax.legend(fontsize=8)
    if len(spans) > 1 or spans[0][0]:
        for lo_name, lo, hi in spans:
            axes[0].annotate(lo_name, xy=((lo + hi) / 2, 1.0), xycoords=("data", "axes fraction"),
                             xytext=(0, -10), textcoords="offset points", ha="center", fontsize=8, color="#555")
    fig.tight_layout()
    target = Path(out)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
    return target
