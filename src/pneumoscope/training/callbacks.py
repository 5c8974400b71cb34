"""Keras-style callbacks the seed relies on, as Lightning callbacks.

Under DDP every rank runs them with the same (gathered) validation metrics, so they decide
alike everywhere; only rank 0 writes files.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch

from ..fileio import atomic_path


def _metric(trainer: L.Trainer, key: str) -> float:
    v = trainer.callback_metrics.get(key)
    return float(v) if v is not None else float("nan")


def selection_score(trainer: L.Trainer, select: str) -> tuple[float, ...]:
    """How good this epoch is for ``train.select`` (higher is better; compared as tuples).

    ``best``: the lowest validation loss. ``pointing``: the highest validation pointing
    (:class:`ValidationPointing`), then the lowest loss. ``last`` keeps every epoch and never asks.
    """
    loss = _metric(trainer, "val_loss")
    if select == "pointing":
        return (_metric(trainer, "val_pointing"), -loss)
    return (-loss,)


def _better(score: tuple[float, ...], best: Any) -> bool:
    return best is None or score > tuple(best)


def _score_from_loss(loss: float) -> list[float] | None:
    """The ``best`` score state written before selection scores held a validation loss; as a score."""
    return None if math.isinf(loss) else [-float(loss)]


class ValidationPointing(L.Callback):
    """After every validation of a full-size stage: ``val_pointing`` in the trainer's metrics.

    The share of the validation lesion images whose Grad-CAM map (PNEUMONIA class, the
    checkpoint's layer) has its maximum inside the lesion grown by 2 px, the pointing game the
    demo reports. Every rank scores all the images with the same weights, so every rank
    decides alike. It must come before the callbacks that select on it.
    """

    def __init__(self, images: torch.Tensor, masks: Any, layer: str, prep: Any, class_names: tuple[str, ...]) -> None:
        self.images, self.masks, self.layer, self.prep, self.class_names = images, masks, layer, prep, class_names

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        from ..explanation.cam import explain
        from ..explanation.quality import pointing_hits

        model = getattr(pl_module, "eval_model", pl_module.model)
        was = model.training
        hits = []
        for i in range(0, len(self.images), 64):
            x = self.prep.normalize(self.images[i:i + 64]).to(pl_module.device)
            e = explain(model, x, method="gradcam", layer=self.layer, target="PNEUMONIA", precision="fp32",
                        class_names=self.class_names)
            hits.append(pointing_hits(e.maps.float().cpu().numpy(), self.masks[i:i + 64], tolerance=2))
        model.train(was)
        trainer.callback_metrics["val_pointing"] = torch.tensor(float(np.concatenate(hits).mean()))


class RestoreBestWeights(L.Callback):
    """Keep the stage's best weights (:func:`selection_score`) and load them when the stage ends.

    This is Keras' ``EarlyStopping(restore_best_weights=True)``. The weights live on disk
    (``path``), so a resumed stage still restores the right ones.
    """

    def __init__(self, path: Path, select: str = "best") -> None:
        self.path = path
        self.best: tuple[float, ...] | None = None
        self.select = select  # "last": every epoch replaces the kept weights
        self._state: dict[str, torch.Tensor] | None = None  # this process's copy (every rank has one)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        score = selection_score(trainer, self.select)
        if self.select == "last" or _better(score, self.best):
            self.best = score
            model = getattr(pl_module, "eval_model", pl_module.model)  # the EMA weights when on
            self._state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
            if trainer.is_global_zero:
                from safetensors.torch import save_file

                with atomic_path(self.path) as tmp:
                    save_file(self._state, str(tmp))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._state is not None:
            pl_module.model.load_state_dict(self._state)
            return
        trainer.strategy.barrier()  # a resumed stage's best weights are on disk, written by rank 0
        if self.path.is_file():
            from safetensors.torch import load_file

            pl_module.model.load_state_dict(load_file(str(self.path)))

    def state_dict(self) -> dict[str, Any]:
        return {"best": list(self.best) if self.best is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state.get("best")
        if isinstance(best, (int, float)):  # written before selection scores: a validation loss
            best = _score_from_loss(best)
        self.best = tuple(best) if best is not None else None


class ExportBest(L.Callback):
    """Write the run's ``best.ckpt`` whenever an epoch beats every earlier one of any stage.

    "Beats" is :func:`selection_score` for ``train.select``: the validation loss (``best``) or
    validation pointing then loss (``pointing``). With ``last`` every epoch is written, so the
    checkpoint ends as the weights at the end of the schedule.
    """

    def __init__(
        self,
        run_state: dict[str, Any],
        export: Callable[[torch.nn.Module, dict[str, float]], None],
        select: str = "best",
        best: dict[str, Any] | None = None,
    ) -> None:
        self.run_state = run_state
        self.export = export
        self.select = select
        #: ``best["state"]``: this process's copy of the exported weights (calibration uses them
        #: on every rank without reading rank 0's file).
        self.best = best if best is not None else {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        score = selection_score(trainer, self.select)
        best = self.run_state.get("best_score")
        if best is None:  # a run resumed from before selection scores kept only its loss
            best = _score_from_loss(self.run_state.get("best_val_loss", math.inf))
        if self.select == "last" or _better(score, best):
            self.run_state["best_score"] = list(score)
            self.run_state["best_val_loss"] = _metric(trainer, "val_loss")
            self.run_state["best_epoch"] = self.run_state["epoch_offset"] + trainer.current_epoch + 1
            metrics = {k: _metric(trainer, k) for k in ("val_loss", "val_acc", "val_auc")}
            if self.select == "pointing":
                metrics["val_pointing"] = _metric(trainer, "val_pointing")
            metrics["epoch"] = self.run_state["best_epoch"]
            model = getattr(pl_module, "eval_model", pl_module.model)
            self.best["state"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if trainer.is_global_zero:
                self.export(model, metrics)


class SamplesSeen(L.Callback):
    """Training images seen per epoch, summed over all ranks (``summary.json``, ``metrics.csv``).

    The count of the epoch in progress is part of the Lightning checkpoint, so an epoch resumed
    part-way still adds up to the images it covered once.
    """

    def __init__(self) -> None:
        self.local = 0  # this rank's images in the epoch so far
        self.epoch = -1  # the epoch ``local`` counts
        self.last_epoch_total = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epoch != trainer.current_epoch:  # a new epoch, not one resumed part-way
            self.local, self.epoch = 0, trainer.current_epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.local += len(batch[1])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.strategy.reduce(torch.tensor(float(self.local), device=pl_module.device), reduce_op="sum")
        self.last_epoch_total = int(round(float(total)))

    def state_dict(self) -> dict[str, Any]:
        return {"local": self.local, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.local = int(state.get("local", 0))
        self.epoch = int(state.get("epoch", -1))


class MetricsCSV(L.Callback):
    """One row per epoch in ``metrics.csv``, with epochs numbered across stages (8-21 in stage 2).

    ``val_pointing`` is filled where :class:`ValidationPointing` scored the epoch
    (``train.select: pointing``) and empty elsewhere. A resumed run keeps the columns its file
    was started with.
    """

    FIELDS = ("epoch", "stage", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "val_pointing", "lr",
              "samples", "seconds")

    def __init__(
        self, path: Path, stage: str, epoch_offset: int, echo: Callable[[str], None] | None = None, epochs: int = 0,
        seen: SamplesSeen | None = None,
    ) -> None:
        self.seen = seen
        self.path = path
        self.stage = stage
        self.epoch_offset = epoch_offset
        self.echo = echo  # without progress bars, one line per epoch tells the user where the run is
        self.epochs = epochs
        self._t0 = time.perf_counter()
        self._fields: tuple[str, ...] | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs after validation in Lightning 2.x, so both train and val metrics are present.
        if not trainer.is_global_zero:
            return
        if self._fields is None:  # the columns of the file this run appends to, once per stage
            self._fields = self.FIELDS
            if self.path.exists():
                with open(self.path, newline="", encoding="utf-8") as fh:
                    self._fields = tuple(next(csv.reader(fh), ())) or self.FIELDS
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        pointing = trainer.callback_metrics.get("val_pointing")
        row = {
            "epoch": self.epoch_offset + trainer.current_epoch + 1,
            "stage": self.stage,
            **{k: f"{_metric(trainer, k):.6g}" for k in ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc")},
            "val_pointing": f"{float(pointing):.6g}" if pointing is not None else "",
            "lr": f"{lr:.3g}",
            "samples": self.seen.last_epoch_total if self.seen is not None else "",
            "seconds": f"{time.perf_counter() - self._t0:.1f}",
        }
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=self._fields, extrasaction="ignore")
            if not self.path.stat().st_size:
                w.writeheader()
            w.writerow(row)
        if self.echo is not None:
            also = f"  val_pointing {row['val_pointing']}" if row["val_pointing"] else ""
            self.echo(
                f"epoch {trainer.current_epoch + 1}/{self.epochs or trainer.max_epochs} ({self.stage}): "
                f"train_loss {row['train_loss']}  val_loss {row['val_loss']}  val_acc {row['val_acc']}  "
                f"val_auc {row['val_auc']}{also}  lr {row['lr']}  {row['seconds']} s"
            )
