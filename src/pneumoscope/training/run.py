"""Train a configuration end to end: image sources → stages → calibration → ``best.ckpt``.

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
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ..checkpoint import CLASS_NAMES, save_checkpoint
from ..config import Config, _merge, dump_config
from ..data.source import SourceDataModule, open_training_data
from ..data.transforms import Preprocessing
from ..distributed import process_group_scope, quiet_lightning, trainer_kwargs
from ..errors import ConfigError, DataError
from ..fileio import atomic_path, atomic_write_text, check_output_folder
from ..models import create_model, get_model_info
from ..runtime import channels_last_preferred, lightning_precision, resolve_device, resolve_precision
from .callbacks import ExportBest, MetricsCSV, RestoreBestWeights, SamplesSeen, ValidationPointing
from .curves import plot_training_curves
from .module import ClassifierModule

log = logging.getLogger(__name__)


def _calibrate(
    ckpt: Path, logits: torch.Tensor, labels: Any, cfg: Config, val_source: str,
    aug_logits: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Temperature and operating point from all validation logits, into best.ckpt and summary.json.

    A validation split that cannot carry an operating point (one class only, say) warns and
    keeps the configured threshold with T = 1, rather than throwing the trained model away.
    """
    from .calibrate import calibrate_logits

    if val_source == "test":
        warnings.warn(
            "validation is the test split: the operating point and temperature are chosen on it too",
            stacklevel=3,
        )
    try:
        result = calibrate_logits(ckpt, logits, labels, cfg, val_source=val_source, aug_logits=aug_logits)
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
    is_global_zero: bool = True  # False in the other processes of a distributed run


def _class_weights(counts: list[int], mode: str | None) -> list[float] | None:
    if mode in (None, "none"):
        return None
    n = sum(counts)
    return [n / (len(counts) * c) for c in counts]


def _write_splits(path: Path, splits: dict[str, list]) -> None:
    """``splits.csv`` from lists of samples (``pneumoscope calibrate`` checks against it)."""
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


def _quiet_lightning() -> contextlib.AbstractContextManager[None]:
    """Silence Lightning's advice that does not apply here (workers for in-memory tensors, tips)."""
    # LitData warns that evaluation streams keep every image (drop_last off) under DDP: that is
    # the point (the validation outputs are gathered, not reduced step by step).
    return quiet_lightning(
        ".*number of training batches.*",
        ".*Checkpoint directory.*exists and is not empty.*",
        # Lightning's own all_gather (used for the validation outputs) and LitData's sized stream.
        ".*all_gather is deprecated.*",
        ".*IterableDataset. has .__len__. defined.*",
        # The samples a DistributedSampler repeats are dropped again by id (module.py).
        ".*Using `DistributedSampler` with the dataloaders.*",
    )


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


def _global_rank(cfg: Config) -> int:
    """This process's rank as its launcher set it, before any Trainer exists.

    torchrun sets ``RANK``, SLURM ``SLURM_PROCID``; Lightning's own launcher starts the other
    processes of a node with ``LOCAL_RANK`` (and ``NODE_RANK`` on every node). Rank 0 alone
    writes the run folder.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"])
    return int(env.get("NODE_RANK", 0)) * cfg.distributed.devices + int(env.get("LOCAL_RANK", 0))


def _device(cfg: Config) -> torch.device:
    """The device type every process runs on (one process: the exact device, e.g. cuda:1)."""
    accel = cfg.distributed.accelerator
    if accel == "cpu":
        return torch.device("cpu")
    if accel == "gpu" and cfg.train.device in ("auto", "cpu"):
        return torch.device("cuda")
    device = resolve_device(cfg.train.device)
    if cfg.distributed.world_size > 1 and device.type == "cuda":
        return torch.device("cuda")  # each process gets its own GPU from Lightning
    return device


def _resume_from(state_dir: Path, stage: str) -> Path | None:
    """The newer of the stage's end-of-epoch and mid-epoch checkpoints (None: start the stage)."""
    found = [p for p in (state_dir / f"{stage}-last.ckpt", state_dir / f"{stage}-step.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def train(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    callbacks: Sequence[L.Callback] = (),
) -> TrainResult:
    """Train ``cfg`` on ``data`` into the run folder ``out``, on one process or many.

    ``data`` is a Kaggle-layout root or a CSV manifest (decoded into memory once) or a store
    made by ``pneumoscope prepare`` (streamed). ``cfg.distributed`` says how many processes:
    launched by Lightning itself, by ``torchrun`` or by SLURM ``srun``, every process runs this
    function; rank 0 alone writes the run folder.

    Writes ``best.ckpt``, ``config.yaml``, ``metrics.csv``, ``curves.png``, ``splits.csv`` and
    ``summary.json``; resumable state lives in ``out/state/``. ``callbacks`` are added to every
    stage's Trainer.
    """
    out = Path(out)
    existed = out.exists()
    fresh = not resume and not (existed and out.is_dir() and any(out.iterdir()))
    try:
        with process_group_scope():
            return _train(cfg, data, out, resume, progress, callbacks)
    except BaseException:
        # A run that failed (or was stopped) before it had anything to resume from leaves
        # nothing behind, so the corrected command is not refused as "not empty".
        if fresh and out.is_dir() and _global_rank(cfg) == 0 and not _resumable(out):
            _remove_run_files(out, keep_folder=existed)
        raise


def _resumable(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint: the end of an epoch or the run's result."""
    return (out / "best.ckpt").exists() or any((out / "state").glob("*.ckpt"))


def _remove_run_files(out: Path, keep_folder: bool) -> None:
    import shutil

    if not keep_folder:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():  # the folder was the user's (empty); only what this run wrote goes
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def _train(cfg: Config, data: str | Path, out: str | Path, resume: bool, progress: bool,
           callbacks: Sequence[L.Callback]) -> TrainResult:
    t0 = time.perf_counter()
    cfg.validate()
    out = Path(out)
    info = get_model_info(cfg.model.backbone)
    if cfg.data.image_size < info.min_input_size:
        raise ConfigError(
            f"--image-size {cfg.data.image_size} is below {cfg.model.backbone}'s minimum of {info.min_input_size} px"
        )
    for st in cfg.train.stages:
        for key in ("image_size", "start_size"):
            size = getattr(st, key)
            if size is not None and size < info.min_input_size:
                raise ConfigError(
                    f"stage {st.name!r}: {key} {size} is below {cfg.model.backbone}'s minimum "
                    f"of {info.min_input_size} px"
                )
    cam_layer = cfg.model.cam_layer or info.default_layer
    state_dir = out / "state"
    progress_file = state_dir / "progress.json"
    rank0 = _global_rank(cfg) == 0
    if rank0:  # a file in the way, or a place no file can be made, fails now, not after the data loads
        check_output_folder(out, "the run folder to write (--out)")
    # Only rank 0 checks for a fresh folder: the others may start after it has written to it.
    if rank0 and out.exists() and any(out.iterdir()) and not resume:
        raise DataError(f"{out}: run folder is not empty; pass --resume to continue it or choose another --out")
    if resume and not progress_file.is_file():
        raise DataError(f"{out}: nothing to resume (no state/progress.json); start a new run instead")
    if resume:
        _check_same_config(cfg, out / "config.yaml")
    if cfg.distributed.strategy == "ddp_spawn":
        # ddp_spawn trains in child processes and hands back only the weights; the run's state
        # (best epoch, calibration) would stay behind in them.
        raise ConfigError(
            "--strategy ddp_spawn is not supported by train; use ddp (the default for several devices), "
            "which Lightning, torchrun and srun all launch"
        )
    device = _device(cfg)
    trainer_kwargs(cfg.distributed, device)  # checks now that the GPUs asked for exist
    precision = resolve_precision(cfg.train.precision, device)
    # Each stage's resolved precision: its own (train.stages[].precision) or the run's.
    stage_precisions = [resolve_precision(st.precision, device) if st.precision else precision for st in cfg.train.stages]
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)  # the same seed on every rank

    # Build the model before touching data, so a weights problem fails at once.
    model = create_model(cfg.model.backbone, weights=cfg.model.weights, num_classes=len(CLASS_NAMES),
                         global_pool=cfg.model.global_pool)
    try:
        model.module_path(cam_layer)  # unknown layer names fail now, not after training
    except ConfigError as exc:
        raise ConfigError(f"model.cam_layer: {exc}") from None
    for i, st in enumerate(cfg.train.stages):  # and so do the stages' (each sets its own before it trains)
        for key in ("trainable_from", "late_trainable_from"):
            if getattr(st, key) is not None:
                try:
                    model.set_trainable(getattr(st, key))
                except ConfigError as exc:
                    raise ConfigError(f"train.stages[{i}].{key}: {exc}") from None
    prep = Preprocessing(cfg.data.image_size, tuple(cfg.data.mean), tuple(cfg.data.std), cfg.data.intensity)  # type: ignore[arg-type]

    sources = open_training_data(data, cfg, prep, progress)
    pointing = (_validation_pointing(data, sources.val, prep, cam_layer, cfg.train.lesion_masks)
                if cfg.train.select == "pointing" else None)
    counts = sources.train.class_counts()
    # Class balance by loss weights (the same on every rank), or by balanced epochs
    # (train.epoch_sampling), whose loss weights are then 1.
    weights = _class_weights(counts, cfg.train.class_weights) if cfg.train.epoch_sampling == "all" else None
    # Only now does the run folder appear: a typo in --data or an offline --weights imagenet
    # must not leave a half-made run that blocks the retry.
    if rank0:
        # The other ranks touch the folder only inside fit, once rank 0 has joined them (torchrun
        # and srun start every rank at once; rank 0 must still find a fresh folder fresh).
        state_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            dump_config(cfg, out / "config.yaml")
        sources.write_splits(out / "splits.csv", atomic_path)

    run_state: dict[str, Any] = {"completed": [], "epoch_offset": 0, "best_val_loss": math.inf, "best_epoch": 0}
    if resume:
        run_state.update(json.loads(progress_file.read_text()))
    elif rank0:
        # From the start, so that a run killed inside its first stage can be resumed too.
        atomic_write_text(progress_file, json.dumps(run_state, indent=2))

    def export(m: torch.nn.Module, val: dict[str, float]) -> None:
        save_checkpoint(
            out / "best.ckpt", m, architecture=cfg.model.backbone, preprocessing=prep, target_layer=cam_layer,
            threshold=cfg.train.threshold, config=cfg.to_dict(),
            info={"validation": val, "val_source": sources.val_source, "train_counts": counts,
                  "class_weights": weights, "data": str(data)},
        )

    loaders = SourceDataModule(sources.train, sources.val, cfg.train.batch_size, cfg.train.seed,
                               cfg.data.loader_workers, cfg.distributed.world_size,
                               balanced=cfg.train.epoch_sampling == "balanced")
    channels_last = channels_last_preferred(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def make_trainer(
        stage_callbacks: list[L.Callback], stage_precision: str = precision, freezes_late: bool = False, **kwargs: Any,
    ) -> L.Trainer:
        # The one place a Trainer is built: devices, nodes and strategy from cfg.distributed.
        return L.Trainer(
            # A fresh strategy object per Trainer; a stage that freezes layers part-way through
            # tells DDP that parameters may stop taking part.
            **trainer_kwargs(cfg.distributed, device, find_unused_parameters=freezes_late),
            precision=lightning_precision(stage_precision),  # type: ignore[arg-type]
            callbacks=stage_callbacks,
            logger=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(state_dir),
            **kwargs,
        )

    best: dict[str, Any] = {}  # this process's copy of best.ckpt's weights
    trainer: L.Trainer | None = None
    trained_now = False
    for stage, stage_precision in zip(cfg.train.stages, stage_precisions):
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
        full_size = stage.image_size in (None, cfg.data.image_size)
        module = ClassifierModule(
            model, prep, stage, cfg.data.augment, weights, cfg.train.label_smoothing, cfg.train.head_l2, channels_last,
            ema_decay=cfg.train.ema_decay, mixup=cfg.train.mixup,
        )
        seen = SamplesSeen()
        # Pointing is scored at full size only; a lower-resolution stage keeps its lowest loss.
        select = cfg.train.select if full_size or cfg.train.select != "pointing" else "best"
        stage_callbacks: list[L.Callback] = [
            *([pointing] if pointing is not None and full_size else []),  # before the callbacks that read it
            EarlyStopping(monitor="val_loss", mode="min", patience=stage.early_stopping_patience, min_delta=0.0),
            RestoreBestWeights(state_dir / f"{stage.name}-best.safetensors", select=select),
            # A stage at a lower resolution is validated at that resolution: its losses are not
            # comparable with the full-size stages', and its weights are not the final model.
            *([ExportBest(run_state, export, select=select, best=best)] if full_size else []),
            seen,
            MetricsCSV(out / "metrics.csv", stage.name, run_state["epoch_offset"],
                       echo=None if progress else _echo, epochs=stage.epochs, seen=seen),
            ModelCheckpoint(dirpath=state_dir, filename=f"{stage.name}-last", save_top_k=1, enable_version_counter=False),
            *callbacks,
        ]
        if cfg.train.checkpoint_every_n_steps:
            # Mid-epoch state (with a store, the loader's position too) for --resume.
            stage_callbacks.append(ModelCheckpoint(
                dirpath=state_dir, filename=f"{stage.name}-step", save_top_k=1, enable_version_counter=False,
                every_n_train_steps=cfg.train.checkpoint_every_n_steps,
            ))
        with _quiet_lightning():
            trainer = make_trainer(
                stage_callbacks,
                stage_precision,
                freezes_late=stage.late_epochs > 0,
                max_epochs=stage.epochs,
                gradient_clip_val=stage.grad_clip_norm,
                gradient_clip_algorithm="norm",
                enable_checkpointing=True,
                **_limits(cfg),
            )
            ckpt_path = _resume_from(state_dir, stage.name) if resume else None
            trainer.fit(module, datamodule=loaders, ckpt_path=str(ckpt_path) if ckpt_path else None)
        run_state["epoch_offset"] += trainer.current_epoch
        run_state["completed"].append(stage.name)
        if trainer.is_global_zero:
            atomic_write_text(progress_file, json.dumps(run_state, indent=2))  # --resume reads it
        trainer.strategy.barrier()

    ckpt = out / "best.ckpt"
    if not ckpt.is_file() and rank0:
        raise DataError(f"{out}: training finished without a validation result; no checkpoint was written")
    if trained_now or "calibration" not in run_state:
        run_state["calibration"] = _calibrate_run(
            cfg, model, best, ckpt, prep, loaders, channels_last, make_trainer, sources.val_source, rank0,
        )
        if rank0:
            atomic_write_text(progress_file, json.dumps(run_state, indent=2))  # a finished run is not redone
    calibration = run_state["calibration"]
    seconds = time.perf_counter() - t0
    dist = cfg.distributed
    # Stages that train in their own precision (train.stages[].precision), resolved.
    own_precision = {st.name: p for st, p in zip(cfg.train.stages, stage_precisions) if st.precision}
    summary = {
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "image_size": cfg.data.image_size,
        "device": str(device),
        "precision": precision,
        **({"stage_precision": own_precision} if own_precision else {}),
        "data_source": sources.kind,  # memory (decoded once into RAM) | store (streamed)
        "world_size": dist.world_size,
        "num_nodes": dist.num_nodes,
        "devices": dist.devices,
        "val_source": sources.val_source,
        "n_train": len(sources.train),
        "n_val": len(sources.val),
        "train_counts": dict(zip(CLASS_NAMES, counts)),
        "class_weights": weights,
        "samples_per_epoch": _samples_per_epoch(out / "metrics.csv") if rank0 else [],
        "best_val_loss": run_state["best_val_loss"],
        "best_epoch": run_state["best_epoch"],
        "epochs_run": run_state["epoch_offset"],
        **calibration,
        "seconds": round(seconds, 1),
    }
    if rank0:
        if (out / "metrics.csv").is_file():
            plot_training_curves(out / "metrics.csv", out / "curves.png", kept_epoch=run_state["best_epoch"] or None)
            caveat = selection_caveat(out / "metrics.csv", run_state["best_epoch"]) if cfg.train.select == "pointing" else None
            if caveat:
                warnings.warn(caveat, stacklevel=2)
                summary["selection_caveat"] = caveat
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return TrainResult(out, ckpt, run_state["best_val_loss"], run_state["best_epoch"], seconds, summary, rank0)


def _validation_pointing(
    data: str | Path, val: Any, prep: Preprocessing, layer: str, lesion_masks: str | None = None,
) -> ValidationPointing:
    """The probe behind ``train.select: pointing``: the validation PNEUMONIA images that have
    lesion ground truth, with their masks at the model's size. ``lesion_masks``: a folder of
    mask PNGs named like the images or an RSNA-format boxes CSV; None: a mask at
    ``DATA/masks/<the image's path under DATA>``, as ``pneumoscope synth`` writes them."""
    from ..explanation.groundtruth import beside_mask, lesion_ground_truth, read_mask

    positive = CLASS_NAMES.index("PNEUMONIA")
    samples = val.samples()
    candidates = [i for i, s in enumerate(samples) if s.label == positive]
    if lesion_masks is None:
        where = f"{Path(data).resolve() / 'masks'}/<split>/PNEUMONIA/<image name> as `pneumoscope synth` writes them"
        paths = {i: beside_mask(Path(data), samples[i].path) for i in candidates}
        found = [(i, read_mask(m, prep.image_size)) for i, m in paths.items() if m is not None]
    else:
        source = Path(lesion_masks)
        if not source.exists():
            raise ConfigError(f"train.lesion_masks: {source} does not exist; expected a folder of lesion-mask PNGs "
                              "named like the images, or an RSNA-format boxes CSV")
        where = f"{source} (train.lesion_masks)"
        kind = {"boxes": source} if source.is_file() else {"masks": source}
        try:
            masks = lesion_ground_truth([samples[i] for i in candidates], prep.image_size, **kind)
        except DataError as exc:
            raise ConfigError(f"train.lesion_masks: {exc}") from None
        found = [(i, m) for i, m in zip(candidates, masks) if m is not None]
    # An empty mask (an RSNA Target 0 row, a lesion too small for the model's grid) cannot be hit.
    found = [(i, m) for i, m in found if m.any()]
    if not found:
        raise ConfigError(
            f"train.select: pointing needs lesion masks for the validation PNEUMONIA images, at {where}; "
            "none were found"
        )
    images = val.decoded(progress=False)[[i for i, _ in found]]
    return ValidationPointing(images, np.stack([m for _, m in found]), layer, prep, tuple(CLASS_NAMES))


def selection_caveat(metrics_csv: Path, kept_epoch: int, factor: float = 1.5) -> str | None:
    """A warning when ``train.select: pointing`` kept an epoch whose val_loss is more than
    ``factor`` times the lowest val_loss of the epochs it compared (those with a
    ``val_pointing``): a model that never learnt to point keeps its luckiest early epoch, which
    may be under-trained. None when the kept epoch is not far behind."""
    from .curves import read_metrics

    rows = [r for r in read_metrics(metrics_csv) if math.isfinite(float(r["val_pointing"]))
            and math.isfinite(float(r["val_loss"]))]
    kept = next((r for r in rows if int(r["epoch"]) == kept_epoch), None)
    if kept is None:
        return None
    lowest = min(rows, key=lambda r: float(r["val_loss"]))
    if float(kept["val_loss"]) <= factor * float(lowest["val_loss"]):
        return None
    return (f"train.select: pointing kept epoch {kept_epoch} (validation pointing {float(kept['val_pointing']):.2f}, "
            f"val_loss {float(kept['val_loss']):.3f}), but epoch {int(lowest['epoch'])} reached val_loss "
            f"{float(lowest['val_loss']):.3f}: the kept model may be under-trained; compare the epochs in "
            "metrics.csv and curves.png, or train with train.select: best")


def _samples_per_epoch(metrics_csv: Path) -> list[int]:
    """Training images seen in each epoch (all ranks together), from metrics.csv."""
    if not metrics_csv.is_file():
        return []
    with open(metrics_csv, newline="", encoding="utf-8") as fh:
        return [int(r["samples"]) for r in csv.DictReader(fh) if (r.get("samples") or "").isdigit()]


def _calibrate_run(
    cfg: Config, model: torch.nn.Module, best: dict[str, Any], ckpt: Path, prep: Preprocessing,
    loaders: L.LightningDataModule, channels_last: bool, make_trainer: Any, val_source: str, rank0: bool,
) -> dict[str, Any]:
    """Validation logits of best.ckpt's weights from every rank, gathered; rank 0 calibrates.

    Every process runs the same validation pass (each on its share of the images); the module
    gathers the logits, so rank 0 fits the temperature and threshold on all of them.
    """
    from ..config import StageConfig

    if "state" in best:
        model.load_state_dict(best["state"])
    else:  # resumed after the best epoch: its weights are in best.ckpt (a file every rank can read)
        from ..checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(ckpt).model.state_dict())
    module = ClassifierModule(model, prep, StageConfig(), cfg.data.augment, None, cfg.train.label_smoothing,
                              cfg.train.head_l2, channels_last)
    with _quiet_lightning():
        trainer = make_trainer([], enable_checkpointing=False, **_limits(cfg))
        trainer.validate(module, datamodule=loaders, verbose=False)
        logits, labels = module.val_logits, module.val_labels.numpy()
        aug = None
        op = cfg.operating_point
        if op.augment_draws > 0 and op.method != "fixed":
            # Each rank draws its own augmentations (seeded by seed and rank); gathered by id.
            module.val_augment = torch.Generator().manual_seed(int(cfg.train.seed) + 7919 * trainer.global_rank)
            passes = []
            for _ in range(op.augment_draws):
                trainer.validate(module, datamodule=loaders, verbose=False)
                passes.append(module.val_logits)
            aug = torch.cat(passes)
    result: dict[str, Any] = {}
    if rank0:
        result = _calibrate(ckpt, logits, labels, cfg, val_source, aug)
    return _broadcast(trainer, result)


def _broadcast(trainer: L.Trainer, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (summary.json and the return value agree everywhere)."""
    if trainer.world_size == 1:
        return obj
    return trainer.strategy.broadcast(obj, src=0)
