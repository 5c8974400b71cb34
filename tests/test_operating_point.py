"""Threshold selection on validation data: exact thresholds on constructed scores."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscope.errors import ConfigError, DataError
from pneumoscope.evaluation.operating_point import (
    OperatingPoint,
    choose_operating_point,
)

# Cuts (p >= t) at the distinct scores, from the top: J = .25 .5 .75 .5 .75 .5 .25 0.
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
P = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])


def test_youden_takes_the_most_sensitive_of_tied_cuts_and_the_midpoint_below_it() -> None:
    op = choose_operating_point(Y, P, "youden")
    # J = 0.75 at cut 0.7 (sens .75, spec 1) and at cut 0.4 (sens 1, spec .75): the latter;
    # then halfway to the next lower score, 0.3.
    assert op.threshold == pytest.approx(0.35)
    assert (op.sensitivity, op.specificity) == (1.0, 0.75)
    assert (op.n, op.n_positive, op.n_negative, op.method, op.target_sensitivity) == (8, 4, 4, "youden", None)


@pytest.mark.parametrize(
    ("target", "margin", "threshold", "sens", "spec"),
    [
        (0.75, 0.0, 0.65, 0.75, 1.0),  # 3 of 4 positives: cut at 0.7, midpoint to 0.6
        (0.5, 0.0, 0.75, 0.5, 1.0),  # highest cut with 2 positives is 0.8, midpoint to 0.7
        (0.95, 0.0, 0.35, 1.0, 0.75),  # needs all 4: cut at 0.4
        (0.75, 0.1, 0.35, 1.0, 0.75),  # margin lifts 0.75 to 0.85: needs all 4
    ],
)
def test_sensitivity_target_gives_the_highest_threshold_reaching_it(target, margin, threshold, sens, spec) -> None:
    op = choose_operating_point(Y, P, "sensitivity", target_sensitivity=target, margin=margin)
    assert op.threshold == pytest.approx(threshold)
    assert op.sensitivity == sens and op.specificity == spec
    assert op.sensitivity >= target
    assert op.target_sensitivity == target and op.margin == margin


def test_sensitivity_target_counts_cases_exactly() -> None:
    # 0.95 * 20 is 19.000000000000004 in floating point: 19 positives must be enough.
    y = np.array([1] * 20 + [0] * 5)
    p = np.concatenate([np.linspace(0.99, 0.60, 20), np.linspace(0.5, 0.1, 5)])
    op = choose_operating_point(y, p, "sensitivity", target_sensitivity=0.95)
    assert op.sensitivity == 0.95
    assert op.threshold == pytest.approx((p[18] + p[19]) / 2)


def test_cut_at_the_lowest_score_goes_halfway_to_zero() -> None:
    op = choose_operating_point([1, 1, 0], [0.2, 0.5, 0.8], "sensitivity", target_sensitivity=1.0)
    assert op.threshold == pytest.approx(0.1) and op.sensitivity == 1.0 and op.specificity == 0.0


def test_fixed_reports_validation_rates_and_round_trips() -> None:
    op = choose_operating_point(Y, P, "fixed", threshold=0.5)
    assert op.threshold == 0.5 and (op.sensitivity, op.specificity) == (0.75, 0.75)
    assert OperatingPoint.from_dict(op.to_dict()) == op


def test_ties_in_scores_are_decided_by_the_inclusive_rule() -> None:
    # Two cases share 0.6; a cut there calls both positive.
    op = choose_operating_point([0, 1, 1, 0], [0.2, 0.6, 0.6, 0.6], "youden")
    assert op.threshold == pytest.approx(0.4)
    assert (op.sensitivity, op.specificity) == (1.0, 0.5)


@pytest.mark.parametrize(
    ("y", "p", "kwargs", "error", "match"),
    [
        ([1, 1, 1], [0.2, 0.5, 0.8], {}, DataError, "no NORMAL"),
        ([0, 0], [0.2, 0.5], {}, DataError, "no PNEUMONIA"),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], {}, DataError, "do not separate"),
        ([0, 1], [0.9, 0.1], {}, DataError, "do not separate"),  # worse than chance
        ([0, 1], [0.1, 0.9], {"method": "best"}, ConfigError, "unknown operating point method"),
        ([0, 1], [0.1, 0.9], {"method": "sensitivity", "target_sensitivity": 0.0}, ConfigError, "target"),
        ([0, 1], [0.1, 0.9], {"method": "sensitivity", "target_sensitivity": 1.5}, ConfigError, "target"),
        ([0, 1], [0.1, 0.9], {"method": "fixed", "threshold": 1.0}, ConfigError, "fixed threshold"),
        ([0, 1], [0.1, 1.9], {}, ValueError, "probabilities"),
    ],
)
def test_degenerate_input_fails_clearly(y, p, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        choose_operating_point(y, p, **kwargs)
