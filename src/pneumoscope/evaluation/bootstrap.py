"""Bootstrap 95% confidence intervals for the headline metrics.

A test set of 624 images gives an accuracy that would move by a few points on another 624
images from the same hospital; the interval says by how much. Resampling is by patient when
images share patients (a child's several radiographs are not independent evidence), by image
otherwise. Intervals are percentile intervals of ``n_resamples`` resamples drawn from a fixed
seed, so the same predictions always give the same interval.

Each resample is represented by a weight per image (how many times its patient was drawn), so
all metrics of all resamples are computed with array arithmetic, AUC included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .metrics import check_binary_inputs, predict_labels

__all__ = ["CI_METRICS", "bootstrap_ci"]

CI_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "npv", "balanced_accuracy", "f1", "roc_auc")
_CHUNK = 250  # resamples per block: bounds memory at ~_CHUNK x N x 8 bytes per array


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _weighted_metrics(w: np.ndarray, y: np.ndarray, pred: np.ndarray, auc_parts: tuple) -> dict[str, np.ndarray]:
    """Metrics for each row of weights ``w`` (B, N); undefined values are NaN."""
    pos, neg = y == 1, y == 0
    tp = w[:, pos & (pred == 1)].sum(1)
    fn = w[:, pos & (pred == 0)].sum(1)
    fp = w[:, neg & (pred == 1)].sum(1)
    tn = w[:, neg & (pred == 0)].sum(1)
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    prec = _div(tp, tp + fp)
    out = {
        "accuracy": _div(tp + tn, tp + tn + fp + fn),
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "npv": _div(tn, tn + fn),
        "balanced_accuracy": (sens + spec) / 2.0,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
    }
    # AUC = P(score of a positive > score of a negative), ties counting half. With items sorted
    # by score, the negatives below item i are a prefix sum up to its tie group's start.
    order, start, end = auc_parts
    ws = w[:, order]
    negw = ws * neg[order]
    cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(negw, axis=1)], axis=1)
    below = cum[:, start]
    tied = cum[:, end] - below
    posw = ws * pos[order]
    pairs = posw.sum(1) * negw.sum(1)
    out["roc_auc"] = _div((posw * (below + 0.5 * tied)).sum(1), pairs)
    return out


def bootstrap_ci(
    y_true: ArrayLike,
    prob: ArrayLike,
    threshold: float,
    groups: Sequence[str] | None = None,
    *,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[dict[str, list[float] | None], dict[str, Any]]:
    """Percentile bootstrap intervals of :data:`CI_METRICS` at ``threshold``.

    Args:
        y_true: Labels 0/1.
        prob: P(PNEUMONIA).
        threshold: The operating threshold the point estimates use.
        groups: One patient id per case; resampling draws patients when some share images.
            ``None`` or all-distinct ids resample images.
        n_resamples: Bootstrap resamples (>= 100 for a 95% interval to mean anything).
        seed: Seed of the resampling.
        level: Coverage, e.g. 0.95.

    Returns:
        ``(intervals, method)``: ``{metric: [lo, hi] or None}`` (None when the metric is
        undefined in most resamples, e.g. AUC on a one-class test set), and a description
        ``{kind, unit, n_units, n_resamples, seed, level}`` for metrics.json.

    Raises:
        ValueError: Invalid inputs, ``n_resamples < 100``, ``level`` outside (0, 1), or
            ``groups`` of the wrong length.
    """
    y, p, t = check_binary_inputs(y_true, prob, threshold)
    if n_resamples < 100:
        raise ValueError(f"n_resamples must be at least 100, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if groups is not None and len(groups) != y.size:
        raise ValueError(f"groups has {len(groups)} entries for {y.size} cases")
    unit_ids = np.arange(y.size)
    unit = "image"
    if groups is not None:
        _, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
        if inverse.max() + 1 < y.size:
            unit_ids, unit = inverse, "patient"
    n_units = int(unit_ids.max()) + 1
    pred = predict_labels(p, t)
    order = np.argsort(p, kind="stable")
    sp = p[order]
    first = np.searchsorted(sp, sp, side="left")
    last = np.searchsorted(sp, sp, side="right")
    auc_parts = (order, first, last)

    rng = np.random.default_rng(seed)
    collected: dict[str, list[np.ndarray]] = {k: [] for k in CI_METRICS}
    done = 0
    while done < n_resamples:
        b = min(_CHUNK, n_resamples - done)
        counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=b).astype(np.float64)
        for k, v in _weighted_metrics(counts[:, unit_ids], y, pred, auc_parts).items():
            collected[k].append(v)
        done += b

    alpha = (1.0 - level) / 2.0
    intervals: dict[str, list[float] | None] = {}
    for k in CI_METRICS:
        vals = np.concatenate(collected[k])
        vals = vals[~np.isnan(vals)]
        # Fewer than half the resamples defined: the interval would describe a different population.
        if vals.size < n_resamples / 2:
            intervals[k] = None
        else:
            lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
            intervals[k] = [float(lo), float(hi)]
    method = {
        "kind": "percentile bootstrap",
        "unit": unit,
        "n_units": n_units,
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "level": float(level),
    }
    return intervals, method
