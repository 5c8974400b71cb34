"""The seed's hotspot overlay and the heatmap style."""

from __future__ import annotations

import numpy as np
import pytest

from pneumoscope.errors import ConfigError
from pneumoscope.explanation.overlay import (
    heatmap_overlay,
    hotspot_activation,
    hotspot_overlay,
    normalize_p99,
    render_overlay,
)


def test_p99_normalisation_and_flat_fallbacks():
    raw = np.arange(1000, dtype=np.float32)
    n = normalize_p99(raw)
    assert n.max() == 1.0 and np.isclose(n[500], 500 / np.percentile(raw, 99))
    spike = np.zeros(1000, dtype=np.float32)
    spike[0] = 5.0  # p99 is 0 → falls back to the max
    assert normalize_p99(spike)[0] == 1.0
    assert not normalize_p99(np.zeros((4, 4))).any()


def test_hotspot_marks_only_the_top_five_percent_in_red():
    gray = np.full((64, 64), 0.5, dtype=np.float32)
    raw = np.zeros((8, 8), dtype=np.float32)
    raw[1, 6] = 1.0  # one hot cell, top right
    out = hotspot_overlay(gray, raw)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    red_excess = out[..., 0].astype(int) - out[..., 1].astype(int)
    ys, xs = np.nonzero(red_excess > 0)
    assert ys.mean() < 20 and xs.mean() > 44  # the red lies where the map is hot
    # alpha 0.18 at most: red channel never exceeds 0.5 + 0.18 * 0.5
    assert out[..., 0].max() <= round((0.5 * 0.82 + 0.18) * 255) + 1
    # Visibly red pixels: the top 5 % plus the sigma-1.5 blur halo, nowhere near the whole image.
    assert 0.02 <= (red_excess > 3).mean() <= 0.10
    act = hotspot_activation(raw, (64, 64))
    assert act.max() <= 1.0 and act.min() >= 0.0


def test_flat_map_gives_the_plain_grey_image():
    gray = np.random.default_rng(0).random((32, 40)).astype(np.float32)
    out = hotspot_overlay(gray, np.zeros((4, 5)))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.allclose(out[..., 0] / 255.0, gray, atol=1 / 255)


def test_heatmap_style_and_unknown_style():
    gray = np.zeros((16, 16), dtype=np.float32)
    raw = np.linspace(0, 1, 16, dtype=np.float32)[None].repeat(16, 0)
    out = heatmap_overlay(gray, raw)
    assert out[:, -1, 0].mean() > out[:, 0, 0].mean()  # jet: high = red
    assert out[:, 0, 2].mean() > out[:, -1, 2].mean()  # low = blue
    assert render_overlay(gray, raw, "heatmap").shape == (16, 16, 3)
    with pytest.raises(ConfigError, match="hotspot"):
        render_overlay(gray, raw, "rainbow")
