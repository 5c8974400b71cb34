"""Operating points: the decision threshold, chosen on validation data and never on test data.

Three methods:

* ``youden`` -- the threshold that maximises Youden's J = sensitivity + specificity - 1.
* ``sensitivity`` -- the highest threshold whose validation sensitivity is at least a target
  (clinical screening: miss few pneumonias, then be as specific as that allows). An optional
  ``margin`` raises the target, because a threshold tuned to exactly 95% on a few hundred
  validation images reaches 95% on new data only about half of the time.
* ``fixed`` -- a given threshold (the seed's 0.5); only reports how it does on validation.

A threshold ``t`` calls a case PNEUMONIA when ``prob >= t`` (see
:func:`pneumoscope.evaluation.metrics.predict_labels`). Among the thresholds that give the
same validation confusion matrix, the data-driven methods return the midpoint between the
lowest score called positive and the next lower validation score: the validation figures are
those of the exact cut, but a new case scoring like the boundary validation case is not decided
by which side of a floating-point tie it lands on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import ConfigError, DataError
from .metrics import check_binary_inputs

__all__ = ["METHODS", "OperatingPoint", "choose_operating_point"]

METHODS = ("youden", "sensitivity", "fixed")


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what it did on the validation data it was chosen on.

    Attributes:
        method: ``youden``, ``sensitivity`` or ``fixed``.
        threshold: P(PNEUMONIA) >= threshold → PNEUMONIA.
        target_sensitivity: The requested sensitivity (``sensitivity`` only, else None).
        margin: Added to the target before choosing (``sensitivity`` only, else 0).
        sensitivity: Validation sensitivity at ``threshold``.
        specificity: Validation specificity at ``threshold``.
        n: Validation images; ``n_positive``/``n_negative`` per class.
    """

    method: str
    threshold: float
    target_sensitivity: float | None
    margin: float
    sensitivity: float
    specificity: float
    n: int
    n_positive: int
    n_negative: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OperatingPoint:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]


def _rates(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    pred = p >= t
    return float(pred[y == 1].mean()), float((~pred[y == 0]).mean())


def _midpoint_below(scores_desc: np.ndarray, k: int) -> float:
    """Halfway between distinct score ``k`` (descending order) and the next lower one (or 0)."""
    lower = float(scores_desc[k + 1]) if k + 1 < scores_desc.size else 0.0
    mid = (float(scores_desc[k]) + lower) / 2.0
    # Adjacent floats have no midpoint; the exact cut keeps the validation figures right.
    return mid if mid > lower else float(scores_desc[k])


def choose_operating_point(
    y_true: ArrayLike,
    prob: ArrayLike,
    method: str = "youden",
    *,
    target_sensitivity: float = 0.95,
    margin: float = 0.0,
    threshold: float = 0.5,
) -> OperatingPoint:
    """Choose a decision threshold on validation labels and P(PNEUMONIA).

    Args:
        y_true: Validation labels, 0 NORMAL / 1 PNEUMONIA; both classes must be present.
        prob: Validation P(PNEUMONIA), calibrated if the model will be used calibrated.
        method: ``youden``, ``sensitivity`` or ``fixed``.
        target_sensitivity: For ``sensitivity``: the sensitivity to reach, in (0, 1].
        margin: For ``sensitivity``: chosen for ``min(1, target + margin)`` instead.
        threshold: For ``fixed``: the threshold, in (0, 1).

    Returns:
        The :class:`OperatingPoint`. Youden ties go to the higher sensitivity (the lower
        threshold): for pneumonia screening a miss costs more than a false alarm.

    Raises:
        ConfigError: Unknown method, or a target/margin/threshold out of range.
        DataError: Validation data with one class only, or (``youden``) scores that do not
            separate the classes at all.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown operating point method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "sensitivity" and not (0.0 < target_sensitivity <= 1.0):
        raise ConfigError(f"target sensitivity must be in (0, 1], not {target_sensitivity}")
    if method == "sensitivity" and not (0.0 <= margin < 1.0):
        raise ConfigError(f"sensitivity margin must be in [0, 1), not {margin}")
    if method == "fixed" and not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise ConfigError(f"fixed threshold must be in (0, 1), not {threshold}")
    y, p, _ = check_binary_inputs(y_true, prob)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        missing = "PNEUMONIA" if n_pos == 0 else "NORMAL"
        raise DataError(
            f"validation data has no {missing} images ({y.size} images); an operating point needs both classes"
        )

    target: float | None = None
    if method == "fixed":
        t = float(threshold)
    else:
        scores = np.unique(p)[::-1]  # distinct scores, descending
        # Cutting at scores[k] calls every case with p >= scores[k] positive.
        pos_sorted, neg_sorted = np.sort(p[y == 1]), np.sort(p[y == 0])
        tp = n_pos - np.searchsorted(pos_sorted, scores, side="left")
        fp = n_neg - np.searchsorted(neg_sorted, scores, side="left")
        sens, spec = tp / n_pos, 1.0 - fp / n_neg
        if method == "youden":
            j = sens + spec - 1.0
            if j.max() <= 0.0:
                raise DataError(
                    "validation scores do not separate the classes (Youden's J <= 0 at every threshold); "
                    "the model has not learnt anything usable, or the labels are swapped"
                )
            k = int(np.flatnonzero(j == j.max())[-1])  # ties: the lowest cut, most sensitive
        else:
            target = float(target_sensitivity)
            goal = min(1.0, target + float(margin))
            # Integer count, so 0.95 * 20 = 19.000000000000004 does not ask for 20 cases.
            need = min(n_pos, math.ceil(round(goal * n_pos, 9)))
            k = int(np.flatnonzero(tp >= need)[0])  # sens rises as the cut falls: first is highest
        t = _midpoint_below(scores, k)
    sens_t, spec_t = _rates(y, p, t)
    return OperatingPoint(
        method=method,
        threshold=t,
        target_sensitivity=target,
        margin=float(margin) if method == "sensitivity" else 0.0,
        sensitivity=sens_t,
        specificity=spec_t,
        n=int(y.size),
        n_positive=n_pos,
        n_negative=n_neg,
    )
