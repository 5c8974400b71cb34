"""``pneumoscope evaluate``: a checkpoint on a labelled split → metrics.json, plots, predictions."""

from __future__ import annotations

from collections.abc import Callable

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..config import check_seed
from ..data.dataset import CLASS_NAMES, Sample, decode_images
from ..data.source import open_eval_data
from ..errors import ConfigError
from ..fileio import atomic_path, check_output_folder
from ..inference import Predictor
from .bootstrap import bootstrap_ci
from .calibration import calibration_summary
from .metrics import compute_metrics, write_metrics_json
from .operating_point import METHODS
from .plots import plot_reliability, save_evaluation_plots


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    samples: list[Sample]
    probs: np.ndarray
    labels: np.ndarray
    out_dir: Path
    images: torch.Tensor  # (N, S, S) uint8, model-size, reused by the report gallery


def image_logits(
    predictor: Predictor,
    images: torch.Tensor,
    progress: bool = True,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Raw logits (N, C) for decoded model-size uint8 images (N, S, S), batch by batch.

    ``transform``, when given, maps each batch as (B, 1, S, S) floats in [0, 1] before
    normalisation (e.g. the training augmentation).
    """
    from tqdm.auto import tqdm

    prep = predictor.ckpt.preprocessing
    out = []
    bs = predictor.batch_size
    for i in tqdm(range(0, len(images), bs), desc="evaluating", unit="batch", disable=not progress, leave=False):
        batch = images[i : i + bs]
        if transform is not None:
            batch = transform(batch.float().div_(255.0)[:, None])
        out.append(predictor.logits(prep.normalize(batch)))
    return torch.cat(out)


def predict_samples(predictor: Predictor, samples: list[Sample], progress: bool = True) -> tuple[np.ndarray, torch.Tensor]:
    """Calibrated P(PNEUMONIA) for labelled samples, plus their decoded model-size images."""
    images = decode_images([s.path for s in samples], predictor.ckpt.preprocessing, progress, desc="decoding")
    probs = predictor.calibrated(image_logits(predictor, images, progress))
    return probs.numpy().astype(np.float64), images


def parse_threshold(value: str | float | None) -> float | None:
    """A ``--threshold`` value: a number in (0, 1), or None for the checkpoint's.

    Names of data-driven methods are refused: choosing the threshold on the data being
    evaluated would report the best case, not what the model does on new patients.

    Raises:
        ConfigError: Not a number in (0, 1).
    """
    if value is None:
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        if str(value).lower() in METHODS:
            raise ConfigError(
                f"--threshold {value}: a threshold chosen on the evaluation data would make its figures "
                "optimistic; choose it on validation data with `pneumoscope calibrate --method "
                f"{str(value).lower()}` and evaluate the new checkpoint"
            ) from None
        raise ConfigError(f"--threshold {value!r}: expected a number in (0, 1)") from None
    if not 0.0 < t < 1.0:
        raise ConfigError(f"--threshold {value}: expected a number in (0, 1)")
    return t


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    threshold: float | None = None,
    bootstrap: int = 2000,
    ci_seed: int = 0,
    n_bins: int = 15,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> EvalResult:
    """Evaluate at the checkpoint's stored operating point; write ``metrics.json``, plots and ``predictions.csv``.

    Args:
        checkpoint: A checkpoint from ``pneumoscope train``.
        data: Split folder, dataset root (its ``test/``), CSV manifest, or a store from
            ``pneumoscope prepare`` (its ``test`` subset, read as stored).
        out: Output folder.
        threshold: Override the stored threshold (recorded as ``threshold_source: flag``).
        bootstrap: Resamples for the 95% intervals in ``ci95``; 0 skips them.
        ci_seed: Seed of the bootstrap.
        n_bins: Bins of the calibration error and the reliability diagram.
        batch_size, device, precision, progress: Inference settings.
    """
    if bootstrap and bootstrap < 100:
        raise ConfigError(f"--bootstrap {bootstrap}: use 0 (no intervals) or at least 100 resamples")
    if n_bins < 1:
        raise ConfigError(f"--bins {n_bins}: must be positive")
    check_seed(ci_seed, "--ci-seed")
    # A bad --out fails now, not after the model ran, and creates nothing.
    check_output_folder(out, "a folder for metrics.json, plots and predictions.csv")
    predictor = Predictor(load_checkpoint(checkpoint), device=device, precision=precision, batch_size=batch_size)
    test, source = open_eval_data(data, predictor.ckpt.preprocessing, progress)
    samples, images = test.samples(), test.decoded(progress)
    probs = predictor.calibrated(image_logits(predictor, images, progress)).numpy().astype(np.float64)
    labels = np.array([s.label for s in samples])
    t = predictor.threshold if threshold is None else float(threshold)
    metrics = compute_metrics(labels, probs, threshold=t, class_names=CLASS_NAMES)
    metrics["threshold_source"] = "checkpoint" if threshold is None else "flag"
    metrics["operating_point"] = predictor.ckpt.operating_point
    metrics["temperature"] = predictor.temperature
    metrics["calibration"] = calibration_summary(labels, probs, n_bins)
    if bootstrap:
        ci, how = bootstrap_ci(labels, probs, t, [s.patient_id for s in samples], n_resamples=bootstrap, seed=ci_seed)
        metrics["ci95"], metrics["ci_method"] = ci, how
    metrics["checkpoint"] = str(checkpoint)
    metrics["architecture"] = predictor.ckpt.architecture
    metrics["data"] = str(source)
    metrics["compute_precision"] = predictor.precision  # not "precision": that key is PPV
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_evaluation_plots(labels, probs, t, out, class_names=CLASS_NAMES)
    plot_reliability(labels, probs, out / "reliability.png", n_bins=n_bins, temperature=predictor.temperature,
                     class_names=CLASS_NAMES)
    _write_predictions(out / "predictions.csv", samples, probs, t)
    write_metrics_json(metrics, out / "metrics.json")
    return EvalResult(metrics, samples, probs, labels, out, images)


def _write_predictions(path: Path, samples: list[Sample], probs: np.ndarray, threshold: float) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient_id", "true_label", "label", "prob_pneumonia", "threshold"])
        for s, p in zip(samples, probs):
            w.writerow([s.path, s.patient_id, CLASS_NAMES[s.label], CLASS_NAMES[int(p >= threshold)], f"{p:.6f}", threshold])
