"""Binary classification metrics for NORMAL (0) vs PNEUMONIA (1).

The decision rule lives in one place, :func:`predict_labels`: a case is called
PNEUMONIA when ``prob >= threshold``. Everything that turns probabilities into
labels (metrics, plots, the report gallery, the CLI) must go through it so that a
case sitting exactly on the threshold is classified the same way everywhere.

:func:`compute_metrics` returns plain Python types only, so its result can be written
with :func:`json.dumps` without a custom encoder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from ..fileio import atomic_write_text

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "check_binary_inputs",
    "compute_metrics",
    "predict_labels",
    "write_metrics_json",
]

#: Index 0 is the negative class, index 1 the positive class.
DEFAULT_CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")


def _check_threshold(threshold: float) -> float:
    """Return ``threshold`` as a float, raising ValueError unless it is finite and in [0, 1]."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


def _check_prob(prob: ArrayLike) -> np.ndarray:
    """Return ``prob`` as a 1-D float64 array of values in [0, 1]."""
    arr = np.asarray(prob)
    if arr.ndim != 1:
        raise ValueError(f"prob must be 1-D (one P(PNEUMONIA) per case), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("prob is empty: need at least one case")
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating)
        or np.issubdtype(arr.dtype, np.integer)
        or arr.dtype == np.bool_
    ):
        raise ValueError(f"prob must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"prob must contain probabilities in [0, 1]; {int(bad.sum())} value(s) are not, "
            f"first at index {first}: {arr[first]!r}"
        )
    return arr


def predict_labels(prob: ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """Turn P(PNEUMONIA) into hard labels with the project's single decision rule.

    A case is PNEUMONIA (1) when ``prob >= threshold`` and NORMAL (0) otherwise, so a
    probability exactly equal to the threshold counts as positive. With threshold 0
    every case is positive; with threshold 1 only cases with ``prob == 1`` are.

    Args:
        prob: 1-D array of P(PNEUMONIA) values in [0, 1].
        threshold: Operating threshold in [0, 1].

    Returns:
        1-D ``int64`` array of 0/1 labels, same length as ``prob``.

    Raises:
        ValueError: If ``prob`` is not a non-empty 1-D array of probabilities or the
            threshold is outside [0, 1].
    """
    t = _check_threshold(threshold)
    p = _check_prob(prob)
    return (p >= t).astype(np.int64)


def check_binary_inputs(
    y_true: ArrayLike, prob: ArrayLike, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray, float]:
    """Validate and normalise the (labels, probabilities, threshold) triple.

    Shared by the metrics, the plots and the report gallery so they reject bad input
    with the same messages.

    Args:
        y_true: 1-D true labels, each 0 (NORMAL) or 1 (PNEUMONIA); bools and integral
            floats are accepted.
        prob: 1-D P(PNEUMONIA), same length as ``y_true``, values in [0, 1].
        threshold: Operating threshold in [0, 1].

    Returns:
        ``(y_true as int64, prob as float64, threshold as float)``.

    Raises:
        ValueError: On empty, mismatched, non-1-D, out-of-range or non-binary input.
    """
    t = _check_threshold(threshold)
    p = _check_prob(prob)
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.size != p.size:
        raise ValueError(
            f"y_true and prob must have the same length, got {y.size} labels and {p.size} probabilities"
        )
    if y.dtype == object or not (
        np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating) or y.dtype == np.bool_
    ):
        raise ValueError(f"y_true must contain integer labels 0/1, got dtype {y.dtype}")
    # Compare as float so that 1.0 is accepted but 0.5 or NaN are not.
    yf = y.astype(np.float64)
    bad = ~np.isin(yf, (0.0, 1.0))
    if bad.any():
        values = sorted({repr(v) for v in yf[bad][:5].tolist()})
        raise ValueError(
            "y_true must contain only 0 (NORMAL) and 1 (PNEUMONIA); "
            f"found {int(bad.sum())} other value(s), e.g. {', '.join(values)}"
        )
    return yf.astype(np.int64), p, t


def _ratio(num: int, den: int) -> float:
    """``num / den`` as a float, or 0.0 when the denominator is zero (sklearn's zero_division=0)."""
    return float(num) / float(den) if den else 0.0


def compute_metrics(
    y_true: ArrayLike,
    prob: ArrayLike,
    threshold: float = 0.5,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
) -> dict[str, Any]:
    """Compute threshold-dependent and threshold-free metrics for a binary classifier.

    PNEUMONIA (1) is the positive class. Labels are predicted with
    :func:`predict_labels` (positive when ``prob >= threshold``).

    Metrics that are undefined because a denominator is zero (e.g. precision when no
    case is called positive) are reported as 0.0, like scikit-learn's
    ``zero_division=0``, and an entry is added to ``warnings``. When ``y_true`` holds a
    single class, ``roc_auc`` and ``pr_auc`` are ``None`` (not NaN, which is not valid
    JSON) and ``warnings`` says why. ``balanced_accuracy`` follows scikit-learn: the
    mean recall over the classes present in ``y_true``.

    Args:
        y_true: 1-D true labels (0 NORMAL, 1 PNEUMONIA).
        prob: 1-D P(PNEUMONIA) in [0, 1], same length.
        threshold: Operating threshold in [0, 1].
        class_names: Names of class 0 and class 1, used as keys of ``per_class``.

    Returns:
        A JSON-serialisable dict (plain ``int``/``float``/``list``/``dict``/``None``) with
        keys ``threshold, n, n_positive, n_negative, accuracy, precision, recall,
        sensitivity, specificity, npv, f1, balanced_accuracy, roc_auc, pr_auc, log_loss,
        brier, confusion_matrix`` (``[[tn, fp], [fn, tp]]``, rows = true class),
        ``per_class`` (``{name: {precision, recall, f1, support}}``), ``macro`` and
        ``weighted`` (``{precision, recall, f1}``) and ``warnings`` (list of str).

    Raises:
        ValueError: On invalid input (see :func:`check_binary_inputs`) or when
            ``class_names`` is not two distinct strings.
    """
    y, p, t = check_binary_inputs(y_true, prob, threshold)
    names = tuple(class_names)
    if len(names) != 2 or len(set(names)) != 2 or not all(isinstance(n, str) for n in names):
        raise ValueError(f"class_names must be two distinct strings, got {class_names!r}")
    pred = predict_labels(p, t)
    warnings: list[str] = []

    # labels=[0, 1] keeps the matrix 2x2 even when a class is absent from y_true or pred.
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    n_pos, n_neg = tp + fn, tn + fp

    # zero_division=0.0 both fixes the value and silences UndefinedMetricWarning.
    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=[0, 1], average=None, zero_division=0.0
    )
    averaged: dict[str, dict[str, float]] = {}
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(
            y, pred, labels=[0, 1], average=avg, zero_division=0.0
        )
        averaged[avg] = {"precision": float(ap), "recall": float(ar), "f1": float(af)}

    if tp + fp == 0:
        warnings.append(f"no case was predicted {names[1]}: precision and F1 of {names[1]} set to 0.0")
    if tn + fn == 0:
        warnings.append(f"no case was predicted {names[0]}: npv set to 0.0")

    single_class = n_pos == 0 or n_neg == 0
    if single_class:
        present = names[1] if n_neg == 0 else names[0]
        missing = names[0] if n_neg == 0 else names[1]
        warnings.append(
            f"y_true contains only {present} cases (no {missing}): ROC AUC and PR AUC are "
            f"undefined and reported as null; {'specificity' if n_neg == 0 else 'sensitivity/recall'} "
            "set to 0.0"
        )
        roc_auc: float | None = None
        pr_auc: float | None = None
        # sklearn's balanced_accuracy_score warns when y_pred has a class absent from
        # y_true; its value is the mean recall over the classes present, computed here.
        balanced = float(np.mean(rec[support > 0]))
    else:
        roc_auc = float(roc_auc_score(y, p))
        pr_auc = float(average_precision_score(y, p, pos_label=1))
        balanced = float(balanced_accuracy_score(y, pred))

    metrics: dict[str, Any] = {
        "threshold": t,
        "n": int(y.size),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(prec[1]),
        "recall": float(rec[1]),
        "sensitivity": float(rec[1]),
        "specificity": _ratio(tn, tn + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": float(f1[1]),
        "balanced_accuracy": balanced,
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        # labels=[0, 1] lets log_loss work on single-class y_true; sklearn clips
        # probabilities of exactly 0/1 so the loss stays finite.
        "log_loss": float(log_loss(y, np.column_stack([1.0 - p, p]), labels=[0, 1])),
        # Brier score computed directly: sklearn's brier_score_loss only accepts
        # single-class y_true via a `labels` argument added in 1.7, and this is its definition.
        "brier": float(np.mean((p - y) ** 2)),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "per_class": {
            names[i]: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in (0, 1)
        },
        "macro": averaged["macro"],
        "weighted": averaged["weighted"],
        "warnings": warnings,
    }
    return metrics


def _json_default(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths that callers may have added to a metrics dict."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def write_metrics_json(metrics: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``metrics`` as indented JSON, atomically.

    The JSON is written to a temporary file in the destination directory and moved
    into place with :func:`os.replace`, so a reader never sees a half-written file and
    an interrupted run never leaves a truncated one. Keys keep their insertion order.
    NaN/Infinity are rejected because they are not valid JSON.

    Args:
        metrics: Dict as returned by :func:`compute_metrics` (numpy scalars/arrays and
            paths added by callers are converted).
        path: Destination file; its parent directory is created if missing.

    Raises:
        ValueError: If the dict contains NaN or infinite floats.
        TypeError: If it contains values that cannot be represented in JSON.
    """
    target = Path(path)
    # Serialise first so that an unserialisable dict never touches the file system.
    text = json.dumps(metrics, indent=2, sort_keys=False, allow_nan=False, default=_json_default) + "\n"
    atomic_write_text(target, text)
