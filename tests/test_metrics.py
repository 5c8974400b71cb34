"""Tests for pneumoscope.evaluation.metrics."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from pneumoscope.evaluation.metrics import (
    compute_metrics,
    predict_labels,
    write_metrics_json,
)


def _seed_case() -> tuple[np.ndarray, np.ndarray]:
    """Labels/probabilities reproducing the seed paper's test-set confusion matrix.

    NORMAL: 167 correct, 67 called PNEUMONIA; PNEUMONIA: 381 correct, 9 missed (n=624).
    """
    y = np.array([0] * 234 + [1] * 390)
    prob = np.concatenate(
        [
            np.full(167, 0.2),  # TN
            np.full(67, 0.8),  # FP
            np.full(9, 0.3),  # FN
            np.full(381, 0.9),  # TP
        ]
    )
    return y, prob


def test_seed_anchor() -> None:
    y, prob = _seed_case()
    m = compute_metrics(y, prob, threshold=0.5)
    assert m["confusion_matrix"] == [[167, 67], [9, 381]]
    assert m["n"] == 624 and m["n_positive"] == 390 and m["n_negative"] == 234
    assert round(m["accuracy"], 4) == 0.8782
    assert round(m["macro"]["precision"], 4) == 0.8997
    assert round(m["macro"]["recall"], 4) == 0.8453
    assert round(m["macro"]["f1"], 4) == 0.8620
    assert m["sensitivity"] == m["recall"] == pytest.approx(381 / 390)
    assert m["specificity"] == pytest.approx(167 / 234)
    assert m["npv"] == pytest.approx(167 / 176)
    assert m["precision"] == pytest.approx(381 / 448)
    assert m["balanced_accuracy"] == pytest.approx((381 / 390 + 167 / 234) / 2)
    assert m["per_class"]["NORMAL"]["support"] == 234
    assert m["per_class"]["PNEUMONIA"]["recall"] == pytest.approx(381 / 390)
    assert m["warnings"] == []
    for key in ("accuracy", "f1", "roc_auc", "pr_auc", "log_loss", "brier", "weighted"):
        assert key in m


def test_perfect_classifier() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    prob = np.array([0.0, 0.1, 0.2, 0.7, 0.9, 1.0])
    m = compute_metrics(y, prob)
    assert m["roc_auc"] == 1.0 and m["pr_auc"] == 1.0
    assert m["confusion_matrix"] == [[3, 0], [0, 3]]
    assert m["accuracy"] == m["f1"] == m["specificity"] == 1.0
    assert np.isfinite(m["log_loss"])  # probabilities of exactly 0/1 are clipped


def test_threshold_is_inclusive_and_moves_cm() -> None:
    y = np.array([0, 0, 1, 1])
    prob = np.array([0.2, 0.6, 0.4, 0.9])
    assert predict_labels(prob, 0.6).tolist() == [0, 1, 0, 1]  # p == threshold is positive
    assert compute_metrics(y, prob, 0.5)["confusion_matrix"] == [[1, 1], [1, 1]]
    assert compute_metrics(y, prob, 0.3)["confusion_matrix"] == [[1, 1], [0, 2]]
    assert compute_metrics(y, prob, 0.95)["confusion_matrix"] == [[2, 0], [2, 0]]
    # Threshold-free metrics do not depend on the threshold.
    assert compute_metrics(y, prob, 0.3)["roc_auc"] == compute_metrics(y, prob, 0.95)["roc_auc"]


@pytest.mark.parametrize("label", [0, 1])
def test_single_class_gives_none_aucs_and_warning(label: int) -> None:
    y = np.full(5, label)
    prob = np.array([0.1, 0.4, 0.5, 0.6, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn warning spam
        m = compute_metrics(y, prob)
    assert m["roc_auc"] is None and m["pr_auc"] is None
    assert any("only" in w and "AUC" in w for w in m["warnings"])
    json.dumps(m, allow_nan=False)


def test_zero_division_gives_zero_without_warnings() -> None:
    y = np.array([0, 1, 0, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.4])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = compute_metrics(y, prob, threshold=0.9)
    assert m["precision"] == 0.0 and m["f1"] == 0.0
    assert any("no case was predicted PNEUMONIA" in w for w in m["warnings"])


def test_json_round_trip_plain_types(tmp_path: Path) -> None:
    y, prob = _seed_case()
    m = compute_metrics(y, prob.astype(np.float32), class_names=("neg", "pos"))

    def walk(obj: object) -> None:
        assert not isinstance(obj, np.generic | np.ndarray), type(obj)
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(m)
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert set(m["per_class"]) == {"neg", "pos"}

    out = tmp_path / "sub" / "metrics.json"
    write_metrics_json(m, out)
    text = out.read_text(encoding="utf-8")
    assert json.loads(text) == m
    assert text.startswith('{\n  "threshold"')  # indent 2, insertion order kept
    assert list(out.parent.iterdir()) == [out]  # no temp file left behind


def test_write_metrics_json_rejects_nan_and_keeps_old_file(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    write_metrics_json({"a": np.float64(1.5), "b": np.arange(2)}, out)
    assert json.loads(out.read_text()) == {"a": 1.5, "b": [0, 1]}
    with pytest.raises(ValueError):
        write_metrics_json({"a": float("nan")}, out)
    assert json.loads(out.read_text()) == {"a": 1.5, "b": [0, 1]}
    assert list(tmp_path.iterdir()) == [out]


@pytest.mark.parametrize(
    ("y", "prob", "threshold", "match"),
    [
        ([0, 1], [0.5], 0.5, "same length"),
        ([], [], 0.5, "empty"),
        ([0, 1], [0.5, 1.2], 0.5, r"\[0, 1\]"),
        ([0, 1], [0.5, float("nan")], 0.5, r"\[0, 1\]"),
        ([0, 2], [0.5, 0.5], 0.5, "only 0"),
        ([0, 0.5], [0.5, 0.5], 0.5, "only 0"),
        ([0, 1], [0.5, 0.5], 1.5, "threshold"),
        ([[0, 1]], [[0.5, 0.5]], 0.5, "1-D"),
        (["a", "b"], [0.5, 0.5], 0.5, "y_true"),
    ],
)
def test_bad_input_raises_value_error(y: list, prob: list, threshold: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compute_metrics(y, prob, threshold)


def test_bad_class_names() -> None:
    with pytest.raises(ValueError, match="class_names"):
        compute_metrics([0, 1], [0.2, 0.8], class_names=("A", "A"))
