"""Temperature scaling, calibration error and bootstrap intervals on constructed data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

from pneumoscope.evaluation.bootstrap import CI_METRICS, _weighted_metrics, bootstrap_ci
from pneumoscope.evaluation.calibration import (
    apply_temperature,
    calibration_bins,
    calibration_summary,
    fit_temperature,
)
from pneumoscope.evaluation.metrics import compute_metrics


def _sampled(t_true: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / t_true): the right temperature is t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, size=(n, 2))
    y = (rng.random(n) < softmax(z / t_true, axis=1)[:, 1]).astype(np.int64)
    return z, y


@pytest.mark.parametrize("t_true", [0.5, 1.0, 2.5])
def test_temperature_recovers_a_known_temperature(t_true: float) -> None:
    z, y = _sampled(t_true)
    t = fit_temperature(z, y)
    assert t == pytest.approx(t_true, rel=0.1)
    assert fit_temperature(z, y) == t  # deterministic
    # Scaling by the fitted T calibrates: ECE falls well below that of the raw softmax.
    raw = calibration_summary(y, softmax(z, axis=1)[:, 1])["ece"]
    fitted = calibration_summary(y, apply_temperature(z, t)[:, 1])["ece"]
    assert fitted < 0.03 and (t_true == 1.0 or fitted < raw)


def test_temperature_warns_at_the_search_bound_on_separable_data() -> None:
    z = np.array([[0.0, 1.0], [1.0, 0.0]] * 5)
    y = np.array([1, 0] * 5)
    with pytest.warns(UserWarning, match="bound"):
        t = fit_temperature(z, y)
    assert t == pytest.approx(0.05)


def test_temperature_rejects_malformed_logits() -> None:
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(np.zeros(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[0.0, np.nan]]), [0])
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(np.zeros((2, 2)), [0, 2])


def test_ece_and_mce_on_constructed_bins() -> None:
    # 10 cases at 0.1 with 1 PNEUMONIA (gap 0) and 10 at 0.9 with 5 (gap 0.4).
    p = np.array([0.1] * 10 + [0.9] * 10)
    y = np.array([1] + [0] * 9 + [1] * 5 + [0] * 5)
    s = calibration_summary(y, p, n_bins=15)
    assert s["ece"] == pytest.approx(0.2) and s["mce"] == pytest.approx(0.4) and s["n_bins"] == 15
    assert s["brier"] == pytest.approx(np.mean((p - y) ** 2))
    bins = calibration_bins(y, p, 10)
    assert bins.count.tolist() == [0, 10, 0, 0, 0, 0, 0, 0, 0, 10]
    assert np.isnan(bins.mean_prob[0]) and bins.frac_positive[9] == pytest.approx(0.5)


def test_ece_is_zero_when_calibrated_and_p_one_lands_in_the_last_bin() -> None:
    p = np.array([0.25] * 4 + [1.0] * 3)
    y = np.array([1, 0, 0, 0, 1, 1, 1])
    bins = calibration_bins(y, p, 4)
    assert bins.count.tolist() == [0, 4, 0, 3]
    assert bins.ece == pytest.approx(0.0) and bins.mce == pytest.approx(0.0)
    with pytest.raises(ValueError, match="n_bins"):
        calibration_bins(y, p, 0)


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.25 + 0.5 * y + rng.normal(0, 0.2, n), 0, 1)
    return y, p


def test_weighted_auc_matches_scikit_learn_with_ties() -> None:
    y, p = _scores(200, 1)
    p = np.round(p, 1)  # many ties
    order = np.argsort(p, kind="stable")
    sp = p[order]
    parts = (order, np.searchsorted(sp, sp, "left"), np.searchsorted(sp, sp, "right"))
    w = np.random.default_rng(2).integers(0, 3, size=(1, 200)).astype(float)
    auc = _weighted_metrics(w, y, (p >= 0.5).astype(int), parts)["roc_auc"][0]
    assert auc == pytest.approx(roc_auc_score(y, p, sample_weight=w[0]))


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (100, 1600):
        y, p = _scores(n, 0)
        point = compute_metrics(y, p, 0.5)
        ci, how = bootstrap_ci(y, p, 0.5, n_resamples=500, seed=0)
        assert set(ci) == set(CI_METRICS)
        for k in CI_METRICS:
            lo, hi = ci[k]
            assert lo <= point[k] <= hi, (k, lo, point[k], hi)
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
        assert how == {"kind": "percentile bootstrap", "unit": "image", "n_units": n, "n_resamples": 500,
                       "seed": 0, "level": 0.95}
    assert widths[1] < widths[0] / 2  # ~1/sqrt(16) in theory
    y, p = _scores(100, 0)
    assert bootstrap_ci(y, p, 0.5, n_resamples=200, seed=3) == bootstrap_ci(y, p, 0.5, n_resamples=200, seed=3)


def test_bootstrap_resamples_patients_when_they_share_images() -> None:
    y, p = _scores(60, 0)
    groups = [f"person{i // 3}" for i in range(60)]
    _, how = bootstrap_ci(y, p, 0.5, groups, n_resamples=200)
    assert how["unit"] == "patient" and how["n_units"] == 20
    _, how = bootstrap_ci(y, p, 0.5, [str(i) for i in range(60)], n_resamples=200)
    assert how["unit"] == "image"


def test_bootstrap_single_class_has_no_auc_interval() -> None:
    y = np.ones(30, dtype=int)
    p = np.linspace(0.2, 0.9, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warnings from empty denominators
        ci, _ = bootstrap_ci(y, p, 0.5, n_resamples=200)
    assert ci["roc_auc"] is None and ci["specificity"] is None and ci["sensitivity"] is not None
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(y, p, 0.5, n_resamples=10)
