"""After training: fit the temperature and choose the threshold on validation, store both.

:func:`calibrate_checkpoint` is what ``train`` runs after its last stage and what
``pneumoscope calibrate`` runs on an existing checkpoint. It only ever sees validation images
(the patient-level split of train, or the dataset's ``val/``), never the test split, so test
figures computed at the stored threshold stay honest.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_checkpoint, update_checkpoint
from ..config import Config
from ..data.dataset import Sample, decode_images
from ..evaluation.calibration import calibration_summary, fit_temperature
from ..evaluation.operating_point import OperatingPoint, choose_operating_point

log = logging.getLogger(__name__)

#: Below this many validation images of either class the chosen threshold is mostly noise.
MIN_PER_CLASS = 50


@dataclass
class CalibrationResult:
    """What :func:`calibrate_checkpoint` stored and how it looked on validation."""

    checkpoint: Path
    temperature: float
    operating_point: OperatingPoint
    val_source: str
    val_calibration_raw: dict[str, Any]  # ECE etc. at T = 1
    val_calibration: dict[str, Any]  # at the fitted temperature
    augment_draws: int = 0  # > 0: threshold chosen on that many augmented passes over validation

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "operating_point": self.operating_point.to_dict(),
            "val_source": self.val_source,
            "val_calibration_raw": self.val_calibration_raw,
            "val_calibration": self.val_calibration,
            "augment_draws": self.augment_draws,
        }

    def summary_line(self) -> str:
        op = self.operating_point
        target = f" (target {op.target_sensitivity:g}+{op.margin:g})" if op.method == "sensitivity" else ""
        if self.augment_draws:
            target += f" on {self.augment_draws} augmented passes"
        return (
            f"operating point {op.method}{target}: threshold {op.threshold:.4f}, validation sensitivity "
            f"{op.sensitivity:.3f}, specificity {op.specificity:.3f} (n={op.n}); temperature "
            f"{self.temperature:.4g}, validation ECE {self.val_calibration_raw['ece']:.3f} → "
            f"{self.val_calibration['ece']:.3f}"
        )


def calibrate_checkpoint(
    ckpt_path: str | Path,
    samples: Sequence[Sample],
    cfg: Config,
    precision: str = "auto",
    device: str | torch.device = "auto",
    *,
    out: str | Path | None = None,
    images: torch.Tensor | None = None,
    val_source: str = "split",
    batch_size: int = 64,
    progress: bool = False,
) -> CalibrationResult:
    """Fit T and choose the threshold on ``samples``; rewrite the checkpoint with both.

    Args:
        ckpt_path: The checkpoint (weights are not changed).
        samples: Validation samples, with labels. Never the test split.
        cfg: Uses ``cfg.calibration`` (temperature on/off, bins), ``cfg.operating_point``
            (method, target sensitivity, margin) and ``cfg.train.threshold`` (method fixed).
        precision: ``auto``/``fp32``/``bf16``.
        device: ``auto``/``cpu``/``cuda[:N]``.
        out: Where to write; default: ``ckpt_path`` itself, replaced atomically.
        images: The samples already decoded at the checkpoint's size (N, S, S) uint8, to skip
            decoding (``train`` has them in memory).
        val_source: Recorded with the operating point (``split`` or ``val``).
        batch_size: Inference batch size.
        progress: Progress bars.

    Raises:
        DataError: Validation images of one class only, or scores that separate nothing
            (method youden); the checkpoint is then left as it was.
    """
    from ..evaluation.evaluate import image_logits
    from ..inference import Predictor

    predictor = Predictor(load_checkpoint(ckpt_path), device=str(device), precision=precision, batch_size=batch_size)
    if images is None:
        images = decode_images([s.path for s in samples], predictor.ckpt.preprocessing, progress, desc="decoding val")
    logits = image_logits(predictor, images, progress)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    aug_logits = None
    if cfg.operating_point.augment_draws > 0 and cfg.operating_point.method != "fixed":
        aug_logits = augmented_logits(predictor, images, cfg, cfg.operating_point.augment_draws, progress)
    return calibrate_logits(ckpt_path, logits, labels, cfg, out=out, val_source=val_source, aug_logits=aug_logits,
                            positive_index=predictor.ckpt.positive_index)


def calibrate_logits(
    ckpt_path: str | Path,
    logits: torch.Tensor,
    labels: np.ndarray,
    cfg: Config,
    *,
    out: str | Path | None = None,
    val_source: str = "split",
    aug_logits: torch.Tensor | None = None,
    positive_index: int = 1,
) -> CalibrationResult:
    """Fit T and choose the threshold from validation logits already computed; store both.

    This is the part of :func:`calibrate_checkpoint` after inference. ``train`` calls it with the
    logits of every validation image gathered from all its processes, so the temperature and
    the operating point are the same whatever the number of processes.

    Args:
        ckpt_path: The checkpoint whose logits these are.
        logits: (N, C) raw logits of the validation images.
        labels: (N,) their labels.
        cfg: As for :func:`calibrate_checkpoint`.
        out: Where to write; default: ``ckpt_path`` itself, replaced atomically.
        val_source: Recorded with the operating point.
        aug_logits: (draws x N, C) logits of augmented passes, draw by draw
            (``operating_point.augment_draws``), or None.
        positive_index: Index of the PNEUMONIA class.

    Raises:
        DataError: As for :func:`calibrate_checkpoint`.
    """
    logits = logits.float().cpu()
    labels = np.asarray(labels, dtype=np.int64)
    pos = positive_index
    raw_prob = logits.softmax(1)[:, pos].numpy().astype(np.float64)
    n_bins = cfg.calibration.n_bins
    before = calibration_summary(labels, raw_prob, n_bins)
    t = fit_temperature(logits.numpy(), labels) if cfg.calibration.temperature else 1.0
    prob = (logits / t).softmax(1)[:, pos].numpy().astype(np.float64)
    op_cfg = cfg.operating_point
    op_labels, op_prob = labels, prob
    if aug_logits is not None and op_cfg.method != "fixed":
        draws = len(aug_logits) // max(1, len(labels))
        op_prob = (aug_logits.float().cpu() / t).softmax(1)[:, pos].numpy().astype(np.float64)
        op_labels = np.tile(labels, draws)
    op = choose_operating_point(
        op_labels, op_prob, op_cfg.method, target_sensitivity=op_cfg.target_sensitivity,
        margin=op_cfg.sensitivity_margin, threshold=cfg.train.threshold,
    )
    if op_labels is not labels:
        # Report what the chosen threshold does on the validation images as they are, too.
        plain = prob >= op.threshold
        op = replace(
            op, sensitivity=float(plain[labels == 1].mean()), specificity=float((~plain[labels == 0]).mean()),
            n=int(labels.size), n_positive=int((labels == 1).sum()), n_negative=int((labels == 0).sum()),
        )
    if op.method != "fixed" and min(op.n_positive, op.n_negative) < MIN_PER_CLASS:
        warnings.warn(
            f"operating point chosen on only {op.n_positive} PNEUMONIA and {op.n_negative} NORMAL validation "
            f"images; with fewer than {MIN_PER_CLASS} of a class the threshold will move a lot on new data",
            stacklevel=2,
        )
    result = CalibrationResult(
        checkpoint=Path(out if out is not None else ckpt_path),
        temperature=t,
        operating_point=op,
        val_source=val_source,
        val_calibration_raw=before,
        val_calibration=calibration_summary(labels, prob, n_bins),
        augment_draws=len(op_labels) // max(1, len(labels)) if op_labels is not labels else 0,
    )
    record = {**op.to_dict(), "val_source": val_source, "augment_draws": result.augment_draws}
    update_checkpoint(
        ckpt_path, out, threshold=op.threshold, temperature=t, operating_point=record,
        info={"calibration": result.to_dict()},
    )
    log.info(result.summary_line())
    return result


def augmented_logits(predictor: Any, images: torch.Tensor, cfg: Config, draws: int, progress: bool = False) -> torch.Tensor:
    """Logits of ``draws`` passes over ``images`` (N, S, S) uint8 through ``cfg.data.augment``.

    Seeded by ``cfg.train.seed``: the same checkpoint and config give the same threshold.
    Returns (draws x N, C), draw by draw.
    """
    from ..data.transforms import augment_batch
    from ..evaluation.evaluate import image_logits

    gen = torch.Generator().manual_seed(int(cfg.train.seed))
    # The passes model another site's framing, shape and exposure; erasing and drawn markers
    # take shortcuts away in training and are left out, so the threshold rule stays as chosen.
    aug = replace(cfg.data.augment, erase=0.0, markers=0.0)
    return torch.cat([
        image_logits(predictor, images, progress, transform=lambda x: augment_batch(x, aug, generator=gen))
        for _ in range(draws)
    ])


def recalibrate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    out: str | Path | None = None,
    val_source: str | None = None,
    overrides: dict[str, Any] | None = None,
    precision: str = "auto",
    device: str = "auto",
    batch_size: int = 64,
    progress: bool = False,
) -> CalibrationResult:
    """``pneumoscope calibrate``: redo temperature and operating point of a trained checkpoint.

    The validation images are those the checkpoint was trained with: ``split`` re-derives the
    patient-level split of ``data``'s train images from the checkpoint's stored config (its seed
    and val_fraction) and, when the run folder's ``splits.csv`` sits next to the checkpoint,
    checks that it gives the same images; ``val`` uses ``data``'s own ``val/``.

    Args:
        checkpoint: The checkpoint to recalibrate.
        data: The dataset it was trained on (root or manifest), or the store it was trained
            from (its ``val`` subset, read as stored).
        out: New checkpoint path; default: replace ``checkpoint`` in place.
        val_source: ``split`` or ``val``; default: what training used.
        overrides: Dotted config keys over the stored config, e.g.
            ``{"operating_point.method": "sensitivity"}``.
        precision, device, batch_size, progress: Inference settings.

    Raises:
        ConfigError: ``val_source`` test, or bad overrides.
        DataError: The re-derived split differs from ``splits.csv``, or validation data unusable.
        CheckpointError: Unreadable checkpoint, or no stored config to re-derive the split from.
    """
    from ..checkpoint import read_metadata
    from ..config import config_with_overrides
    from ..data.source import open_validation_data
    from ..data.transforms import Preprocessing
    from ..errors import CheckpointError, ConfigError

    from ..zoo import check_writable, resolve_checkpoint

    ckpt = resolve_checkpoint(checkpoint)
    if out is None:
        check_writable(ckpt, checkpoint)  # before any decoding, not only when writing at the end
    meta = read_metadata(ckpt)
    stored = meta.get("config") or {}
    source = val_source or stored.get("data", {}).get("val_source", "split")
    if source not in ("split", "val"):
        raise ConfigError(
            f"--val-source {source}: the operating point must be chosen on validation data (split or val), "
            "never on the test split it will be evaluated on"
        )
    if source == "split" and not stored:
        raise CheckpointError(f"{ckpt}: stores no training config to re-derive its validation split from; "
                              "pass --val-source val")
    cfg = config_with_overrides(stored, overrides)
    val = open_validation_data(data, source, cfg.data.val_fraction, cfg.train.seed,
                               Preprocessing.from_dict(meta["preprocessing"]), progress)
    samples = val.samples()
    if source == "split":
        _check_stored_split(ckpt.parent / "splits.csv", samples, data)
    if out is not None and Path(out).resolve() == ckpt.resolve():
        out = None
    return calibrate_checkpoint(
        ckpt, samples, cfg, precision, device, out=out, images=val.decoded(progress), val_source=source,
        batch_size=batch_size, progress=progress,
    )


def _check_stored_split(splits_csv: Path, val: Sequence[Sample], data: str | Path) -> None:
    """The re-derived validation split must be the one training wrote to ``splits.csv``."""
    import csv

    from ..data.dataset import CLASS_NAMES
    from ..errors import DataError

    if not splits_csv.is_file():
        return
    with open(splits_csv, newline="", encoding="utf-8") as fh:
        stored = {(Path(r["path"]).name, r["label"]) for r in csv.DictReader(fh) if r.get("split") == "val"}
    derived = {(s.path.name, CLASS_NAMES[s.label]) for s in val}
    if stored != derived:
        raise DataError(
            f"{data}: its patient-level validation split ({len(derived)} images) is not the one in {splits_csv} "
            f"({len(stored)} images, {len(stored ^ derived)} differ); is this the dataset the checkpoint was "
            "trained on?"
        )
