"""Train a configuration end to end: splits → cached images → stages → ``best.ckpt``.

Each stage is its own ``Trainer.fit`` with fresh callbacks (as the seed re-created its Keras
callbacks per stage): early stopping and LR-on-plateau on ``val_loss``, and the stage's best
weights restored at its end. ``best.ckpt`` is the best-``val_loss`` model over all stages.
A run is resumable: completed stages are skipped and a stage in progress restarts from its
last epoch.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ..checkpoint import CLASS_NAMES, save_checkpoint
from ..config import Config, _merge, dump_config
from ..data.dataset import CachedDataset, load_splits
from ..data.transforms import Preprocessing
from ..errors import ConfigError, DataError
from ..fileio import atomic_path, atomic_write_text
from ..models import create_model, get_model_info
from ..runtime import channels_last_preferred, lightning_precision, resolve_device, resolve_precision
from .callbacks import ExportBest, MetricsCSV, RestoreBestWeights
from .curves import plot_training_curves
from .module import ClassifierModule

log = logging.getLogger(__name__)


def _calibrate(
    ckpt: Path, samples: list, images: torch.Tensor, cfg: Config, precision: str, device: torch.device,
    val_source: str, progress: bool,
) -> dict[str, Any]:
    """Temperature and operating point on the validation split, into best.ckpt and summary.json.

    A validation split that cannot carry an operating point (one class only, say) warns and
    keeps the configured threshold with T = 1, rather than throwing the trained model away.
    """
    from .calibrate import calibrate_checkpoint

    if val_source == "test":
        warnings.warn(
            "validation is the test split: the operating point and temperature are chosen on it too",
            stacklevel=3,
        )
    try:
        result = calibrate_checkpoint(
            ckpt, samples, cfg, precision, device, images=images, val_source=val_source, progress=progress
        )
    except DataError as exc:
        warnings.warn(
            f"operating point not chosen on validation ({exc}); keeping threshold {cfg.train.threshold} and "
            "temperature 1",
            stacklevel=3,
        )
        return {"threshold": cfg.train.threshold, "temperature": 1.0, "operating_point": None}
    return {
        "threshold": result.operating_point.threshold,
        "temperature": result.temperature,
        "operating_point": result.operating_point.to_dict(),
        "val_calibration_raw": result.val_calibration_raw,
        "val_calibration": result.val_calibration,
        "calibration_summary": result.summary_line(),
    }


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    best_val_loss: float
    best_epoch: int
    seconds: float
    summary: dict[str, Any]


def _class_weights(counts: list[int], mode: str | None) -> list[float] | None:
    if mode in (None, "none"):
        return None
    n = sum(counts)
    return [n / (len(counts) * c) for c in counts]


def _write_splits(path: Path, splits: dict[str, list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id", "split"])
        for name, samples in splits.items():
            for s in samples:
                w.writerow([str(s.path), CLASS_NAMES[s.label], s.patient_id, name])


def _limits(cfg: Config) -> dict[str, float | int]:
    # Passing the defaults explicitly makes Lightning print a line about each.
    out: dict[str, float | int] = {}
    if cfg.train.limit_train_batches != 1.0:
        out["limit_train_batches"] = cfg.train.limit_train_batches
    if cfg.train.limit_val_batches != 1.0:
        out["limit_val_batches"] = cfg.train.limit_val_batches
    return out


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's advice that does not apply here (workers for in-memory tensors, tips)."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def _check_same_config(cfg: Config, saved: Path) -> None:
    """A resumed run must continue the configuration it started with."""
    from ..config import read_yaml

    if not saved.is_file():
        raise DataError(f"{saved}: missing; cannot check that --resume continues the same configuration")
    # Sections added since the run started (defaults) are not a change of configuration.
    old = _flatten(_merge(Config().to_dict(), read_yaml(saved)))
    new = _flatten(cfg.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
        k = changed[0]
        raise ConfigError(
            f"--resume with a different configuration: {k} was {old.get(k)!r}, now {new.get(k)!r} "
            f"({len(changed)} key(s) differ); resume with the run's own config.yaml or start a new --out"
        )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg`` on ``data`` (Kaggle-layout root or CSV manifest) into the run folder ``out``.

    Writes ``best.ckpt``, ``config.yaml``, ``metrics.csv``, ``curves.png``, ``splits.csv`` and ``summary.json``;
    resumable state lives in ``out/state/``.
    """
    t0 = time.perf_counter()
    cfg.validate()
    out = Path(out)
    info = get_model_info(cfg.model.backbone)
    if cfg.data.image_size < info.min_input_size:
        raise ConfigError(
            f"--image-size {cfg.data.image_size} is below {cfg.model.backbone}'s minimum of {info.min_input_size} px"
        )
    cam_layer = cfg.model.cam_layer or info.default_layer
    state_dir = out / "state"
    progress_file = state_dir / "progress.json"
    if out.exists() and any(out.iterdir()) and not resume:
        raise DataError(f"{out}: run folder is not empty; pass --resume to continue it or choose another --out")
    if resume and not progress_file.is_file():
        raise DataError(f"{out}: nothing to resume (no state/progress.json); start a new run instead")
    if resume:
        _check_same_config(cfg, out / "config.yaml")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)

    # Build the model before touching data, so a weights problem fails at once.
    model = create_model(cfg.model.backbone, weights=cfg.model.weights, num_classes=len(CLASS_NAMES))
    model.module_path(cam_layer)  # unknown layer names fail now, not after training
    prep = Preprocessing(cfg.data.image_size, tuple(cfg.data.mean), tuple(cfg.data.std), cfg.data.intensity)  # type: ignore[arg-type]

    splits = load_splits(data, cfg.data.val_source, cfg.data.val_fraction, cfg.train.seed)
    train_ds = CachedDataset(splits.train, prep, progress, desc="decoding train")
    val_ds = CachedDataset(splits.val, prep, progress, desc="decoding val")
    counts = train_ds.class_counts()
    weights = _class_weights(counts, cfg.train.class_weights)
    # Only now does the run folder appear: a typo in --data or an offline --weights imagenet
    # must not leave a half-made run that blocks the retry.
    state_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        dump_config(cfg, out / "config.yaml")
    _write_splits(out / "splits.csv", {"train": splits.train, "val": splits.val})

    run_state: dict[str, Any] = {"completed": [], "epoch_offset": 0, "best_val_loss": math.inf, "best_epoch": 0}
    if resume:
        run_state.update(json.loads(progress_file.read_text()))

    def export(m: torch.nn.Module, val: dict[str, float]) -> None:
        save_checkpoint(
            out / "best.ckpt", m, architecture=cfg.model.backbone, preprocessing=prep, target_layer=cam_layer,
            threshold=cfg.train.threshold, config=cfg.to_dict(),
            info={"validation": val, "val_source": splits.val_source, "train_counts": counts,
                  "class_weights": weights, "data": str(data)},
        )

    gen = torch.Generator().manual_seed(cfg.train.seed)
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.train.batch_size, shuffle=True, generator=gen)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=max(cfg.train.batch_size, 64), shuffle=False)
    channels_last = channels_last_preferred(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    trained_now = False
    for stage in cfg.train.stages:
        if stage.name in run_state["completed"]:
            best_file = state_dir / f"{stage.name}-best.safetensors"
            if best_file.is_file():
                from safetensors.torch import load_file

                model.load_state_dict(load_file(str(best_file)))
            continue
        if stage.epochs == 0:
            run_state["completed"].append(stage.name)
            continue
        model.set_trainable(stage.trainable_from)
        trained_now = True
        module = ClassifierModule(
            model, prep, stage, cfg.data.augment, weights, cfg.train.label_smoothing, cfg.train.head_l2, channels_last,
            ema_decay=cfg.train.ema_decay, mixup=cfg.train.mixup,
        )
        last = ModelCheckpoint(dirpath=state_dir, filename=f"{stage.name}-last", save_top_k=1, enable_version_counter=False)
        callbacks: list[L.Callback] = [
            EarlyStopping(monitor="val_loss", mode="min", patience=stage.early_stopping_patience, min_delta=0.0),
            RestoreBestWeights(state_dir / f"{stage.name}-best.safetensors", keep_last=cfg.train.select == "last"),
            ExportBest(run_state, export, keep_last=cfg.train.select == "last"),
            MetricsCSV(out / "metrics.csv", stage.name, run_state["epoch_offset"],
                       echo=None if progress else _echo, epochs=stage.epochs),
            last,
        ]
        with _quiet_lightning():
            trainer = L.Trainer(
                accelerator="gpu" if device.type == "cuda" else "cpu",
                # devices=1 would mean "the first GPU"; honour an explicit cuda:N.
                devices=[device.index] if device.type == "cuda" and device.index is not None else 1,
                precision=lightning_precision(precision),  # type: ignore[arg-type]
                max_epochs=stage.epochs,
                gradient_clip_val=stage.grad_clip_norm,
                gradient_clip_algorithm="norm",
                callbacks=callbacks,
                logger=False,
                enable_checkpointing=True,
                enable_progress_bar=progress,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                **_limits(cfg),
                default_root_dir=str(state_dir),
            )
            ckpt_path = state_dir / f"{stage.name}-last.ckpt"
            trainer.fit(module, train_loader, val_loader, ckpt_path=str(ckpt_path) if resume and ckpt_path.is_file() else None)
        run_state["epoch_offset"] += trainer.current_epoch
        run_state["completed"].append(stage.name)
        atomic_write_text(progress_file, json.dumps(run_state, indent=2))  # --resume reads it

    ckpt = out / "best.ckpt"
    if not ckpt.is_file():
        raise DataError(f"{out}: training finished without a validation result; no checkpoint was written")
    if trained_now or "calibration" not in run_state:
        run_state["calibration"] = _calibrate(
            ckpt, splits.val, val_ds.images, cfg, precision, device, splits.val_source, progress
        )
        atomic_write_text(progress_file, json.dumps(run_state, indent=2))  # a finished run is not redone
    calibration = run_state["calibration"]
    seconds = time.perf_counter() - t0
    summary = {
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "image_size": cfg.data.image_size,
        "device": str(device),
        "precision": precision,
        "val_source": splits.val_source,
        "n_train": len(train_ds),
        "n_val": len(val_ds),
        "train_counts": dict(zip(CLASS_NAMES, counts)),
        "class_weights": weights,
        "best_val_loss": run_state["best_val_loss"],
        "best_epoch": run_state["best_epoch"],
        "epochs_run": run_state["epoch_offset"],
        **calibration,
        "seconds": round(seconds, 1),
    }
    if (out / "metrics.csv").is_file():
        plot_training_curves(out / "metrics.csv", out / "curves.png")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return TrainResult(out, ckpt, run_state["best_val_loss"], run_state["best_epoch"], seconds, summary)
