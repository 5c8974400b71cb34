"""Calibration: temperature scaling and the expected calibration error.

A network trained with cross-entropy is usually over-confident: of the cases it calls 95%
PNEUMONIA, fewer than 95% are. Temperature scaling (Guo et al., 2017) divides the logits by one
number T > 0 fitted on validation data; it changes no ranking and, for two classes, no argmax,
only how far the probabilities sit from 0.5.

The calibration error here is that of P(PNEUMONIA), the probability the decision threshold acts
on: cases are put into ``n_bins`` equal-width bins of P(PNEUMONIA) and in each bin the mean
predicted probability is compared with the fraction that really is PNEUMONIA.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import DataError
from .metrics import check_binary_inputs

__all__ = [
    "T_BOUNDS",
    "CalibrationBins",
    "apply_temperature",
    "calibration_bins",
    "calibration_summary",
    "fit_temperature",
]

#: Search range of the temperature; a fit at a bound means the data could not pin T down.
T_BOUNDS = (0.05, 20.0)


def _check_logits(logits: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"logits must be (N, C) with C >= 2, got shape {z.shape}")
    if y.ndim != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"labels must be 1-D with one label per row of logits, got {y.shape} for {z.shape}")
    if z.shape[0] == 0:
        raise DataError("no validation images to fit the temperature on")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    if y.dtype.kind not in "iub" or y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {z.shape[1] - 1}]")
    return z, y.astype(np.int64)


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """Softmax of ``logits / temperature``, (N, C) float64."""
    from scipy.special import softmax

    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature), axis=1)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    from scipy.special import log_softmax

    return float(-log_softmax(logits / temperature, axis=1)[np.arange(labels.size), labels].mean())


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """The temperature T > 0 minimising the mean negative log-likelihood of ``labels``.

    The NLL is convex in 1/T, so it has one minimum; a bounded Brent search on log T finds it
    deterministically (no random start, no learning rate). Searched within :data:`T_BOUNDS`.

    Args:
        logits: (N, C) raw logits of the validation images.
        labels: (N,) class indices.

    Returns:
        T, rounded to 4 significant digits (more would be noise from a few hundred images).
        A UserWarning is emitted when T sits at a bound of the search, which happens when the
        validation images are perfectly separated (the NLL keeps falling as T → 0).

    Raises:
        DataError: No images.
        ValueError: Malformed logits or labels.
    """
    from scipy.optimize import minimize_scalar

    z, y = _check_logits(logits, labels)
    lo, hi = math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])
    res = minimize_scalar(lambda s: _nll(z, y, math.exp(s)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    t = float(f"{math.exp(float(res.x)):.4g}")
    if not (T_BOUNDS[0] * 1.01 < t < T_BOUNDS[1] / 1.01):
        warnings.warn(
            f"temperature fit reached the bound {t:g} of [{T_BOUNDS[0]:g}, {T_BOUNDS[1]:g}]: the validation "
            "set is too small or too easy (perfectly separated) to calibrate on",
            stacklevel=2,
        )
    return t


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width bins of P(PNEUMONIA).

    Attributes:
        edges: ``n_bins + 1`` bin edges from 0 to 1 (the last bin includes 1).
        count: Cases per bin.
        mean_prob: Mean P(PNEUMONIA) per bin (NaN for empty bins).
        frac_positive: Fraction of PNEUMONIA cases per bin (NaN for empty bins).
    """

    edges: np.ndarray
    count: np.ndarray
    mean_prob: np.ndarray
    frac_positive: np.ndarray

    @property
    def gaps(self) -> np.ndarray:
        """|frac_positive - mean_prob| per bin (NaN for empty bins)."""
        return np.abs(self.frac_positive - self.mean_prob)

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean gap."""
        filled = self.count > 0
        return float(np.sum(self.count[filled] * self.gaps[filled]) / np.sum(self.count))

    @property
    def mce(self) -> float:
        """Maximum calibration error: the largest gap over non-empty bins."""
        return float(np.max(self.gaps[self.count > 0]))


def calibration_bins(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 15) -> CalibrationBins:
    """Bin P(PNEUMONIA) into ``n_bins`` equal-width bins on [0, 1].

    Bin ``b`` holds ``b/n <= p < (b+1)/n``; p = 1 goes to the last bin.

    Raises:
        ValueError: Invalid labels/probabilities or ``n_bins < 1``.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    y, p, _ = check_binary_inputs(y_true, prob)
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(idx, weights=p, minlength=n_bins) / count
        frac_pos = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins) / count
    return CalibrationBins(np.linspace(0.0, 1.0, n_bins + 1), count, mean_prob, frac_pos)


def calibration_summary(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 15) -> dict[str, Any]:
    """``{ece, mce, n_bins, brier}`` for metrics.json (plain floats)."""
    bins = calibration_bins(y_true, prob, n_bins)
    y, p, _ = check_binary_inputs(y_true, prob)
    return {"ece": bins.ece, "mce": bins.mce, "n_bins": int(n_bins), "brier": float(np.mean((p - y) ** 2))}
