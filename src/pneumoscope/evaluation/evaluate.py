"""``pneumoscope evaluate``: a checkpoint on a labelled split → metrics.json, plots, predictions."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint
from ..data.dataset import CLASS_NAMES, Sample, decode_images, resolve_eval_samples
from ..fileio import atomic_path
from ..inference import Predictor
from .metrics import compute_metrics, write_metrics_json
from .plots import save_evaluation_plots


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    samples: list[Sample]
    probs: np.ndarray
    labels: np.ndarray
    out_dir: Path
    images: torch.Tensor  # (N, S, S) uint8, model-size, reused by the report gallery


def predict_samples(predictor: Predictor, samples: list[Sample], progress: bool = True) -> tuple[np.ndarray, torch.Tensor]:
    """P(PNEUMONIA) for labelled samples, plus their decoded model-size images."""
    from tqdm.auto import tqdm

    prep = predictor.ckpt.preprocessing
    images = decode_images([s.path for s in samples], prep, progress, desc="decoding")
    probs = []
    bs = predictor.batch_size
    for i in tqdm(range(0, len(images), bs), desc="evaluating", unit="batch", disable=not progress, leave=False):
        probs.append(predictor.probabilities(prep.normalize(images[i : i + bs])))
    return torch.cat(probs).numpy().astype(np.float64), images


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> EvalResult:
    """Evaluate at the checkpoint's stored threshold; write ``metrics.json``, plots and ``predictions.csv``."""
    predictor = Predictor(load_checkpoint(checkpoint), device=device, precision=precision, batch_size=batch_size)
    samples, source = resolve_eval_samples(data)
    probs, images = predict_samples(predictor, samples, progress)
    labels = np.array([s.label for s in samples])
    metrics = compute_metrics(labels, probs, threshold=predictor.threshold, class_names=CLASS_NAMES)
    metrics["checkpoint"] = str(checkpoint)
    metrics["architecture"] = predictor.ckpt.architecture
    metrics["data"] = str(source)
    metrics["compute_precision"] = predictor.precision  # not "precision": that key is PPV
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_evaluation_plots(labels, probs, predictor.threshold, out, class_names=CLASS_NAMES)
    _write_predictions(out / "predictions.csv", samples, probs, predictor.threshold)
    write_metrics_json(metrics, out / "metrics.json")
    return EvalResult(metrics, samples, probs, labels, out, images)


def _write_predictions(path: Path, samples: list[Sample], probs: np.ndarray, threshold: float) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient_id", "true_label", "label", "prob_pneumonia", "threshold"])
        for s, p in zip(samples, probs):
            w.writerow([s.path, s.patient_id, CLASS_NAMES[s.label], CLASS_NAMES[int(p >= threshold)], f"{p:.6f}", threshold])
