"""The demo's localisation figures: the pointing game and its interval."""

from __future__ import annotations

import numpy as np
import pytest


def _case(hit: bool) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((32, 32), dtype=bool)
    mask[8:16, 8:16] = True
    raw = np.zeros((4, 4), dtype=np.float32)  # an 8 px grid, as Grad-CAM's at 1/8 of the input
    raw[1, 1 if hit else 3] = 1.0
    return raw, mask


def test_pointing_counts_hits_and_gives_a_wilson_interval():
    from pneumoscope.demo import localisation_scores

    cases = [_case(True)] * 8 + [_case(False)] * 2
    loc = localisation_scores([c[0] for c in cases], [c[1] for c in cases])
    assert loc["n"] == 10 and loc["pointing"] == pytest.approx(0.8)
    lo, hi = loc["pointing_ci95"]
    # Wilson's interval for 8 of 10 (not the Wald interval, which would reach past 1).
    assert lo == pytest.approx(0.490, abs=0.002) and hi == pytest.approx(0.943, abs=0.002)


def test_interval_narrows_with_more_lesions():
    from pneumoscope.demo import localisation_scores

    small = localisation_scores(*zip(*([_case(True)] * 9 + [_case(False)])))
    large = localisation_scores(*zip(*([_case(True)] * 90 + [_case(False)] * 10)))
    assert small["pointing"] == large["pointing"] == pytest.approx(0.9)
    assert np.diff(large["pointing_ci95"])[0] < np.diff(small["pointing_ci95"])[0] / 2.5
