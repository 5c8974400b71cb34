"""The LightningModule: loss as the seed defines it, batched augmentation, validation AUC.

A stage with ``image_size`` below the data's trains and validates on batches resampled to
that size (progressive resizing); the model is fully convolutional up to its pooled head. A
stage's first ``start_epochs`` epochs may train smaller still (``start_size``), inside the same
learning-rate schedule; it is validated at its own size throughout.

Batches are ``(uint8 images, labels, ids)`` from any image source (``data/source.py``). Under
DDP every rank validates its own share; the logits of all ranks are gathered, put back in id
order once each, and the metrics computed from all of them, so every rank logs the same
``val_loss`` and early stopping, LR-on-plateau and checkpoint choice agree everywhere.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..config import AugmentConfig, StageConfig
from ..data.transforms import Preprocessing, augment_batch


class ClassifierModule(L.LightningModule):
    """Wraps a :class:`~pneumoscope.models.base.Classifier` for one training stage.

    Loss (as Keras computes it for the seed): per-sample cross-entropy with label smoothing,
    weighted by the sample's class weight and averaged over the batch, plus ``head_l2`` x the
    squared L2 norm of the hidden Dense kernel. Validation uses the unweighted loss, as Keras'
    ``val_loss`` does (class weights apply to training only).
    """

    def __init__(
        self,
        model: nn.Module,
        prep: Preprocessing,
        stage: StageConfig,
        augment: AugmentConfig | None,
        class_weights: list[float] | None,
        label_smoothing: float,
        head_l2: float,
        channels_last: bool = False,
        ema_decay: float = 0.0,
        mixup: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        # An exponential moving average of the weights (and batch-norm statistics), updated
        # after every optimiser step; when on, validation and the exported weights use it.
        self.ema: AveragedModel | None = None
        if ema_decay > 0:
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.prep = prep
        self.stage = stage
        self.augment = augment
        self.label_smoothing = label_smoothing
        self.head_l2 = head_l2
        self.channels_last = channels_last
        self.mixup = mixup
        self.register_buffer(
            "class_weights",
            torch.tensor(class_weights if class_weights else [1.0, 1.0], dtype=torch.float32),
            persistent=False,
        )
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._val_ids: list[torch.Tensor] = []
        #: After each validation: every validation image's logits (N, C), labels and ids, all
        #: ranks together, in id order (what calibration fits the temperature and threshold on).
        self.val_logits = torch.empty(0, 2)
        self.val_labels = torch.empty(0, dtype=torch.long)
        self.val_ids = torch.empty(0, dtype=torch.long)
        #: Set (a seeded generator) to validate through the training augmentation instead.
        self.val_augment: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and exported: the EMA copy when on, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def on_train_epoch_start(self) -> None:
        st = self.stage
        if st.late_epochs and self.current_epoch >= st.epochs - st.late_epochs:
            # The stage's last epochs: freeze the layers before late_trainable_from. Only ever
            # more frozen than the stage began with; a frozen parameter's gradient stays None, so
            # the optimiser leaves it (and its weight decay) alone.
            before = {id(p) for p in self.model.parameters() if p.requires_grad}
            self.model.set_trainable(st.late_trainable_from)
            for p in self.model.parameters():
                if id(p) not in before:
                    p.requires_grad_(False)

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def _inputs(
        self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None, size: int | None = None
    ) -> torch.Tensor:
        size = size or self.stage.image_size
        x = x.float().div_(255.0)
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            # Progressive resizing: the stage sees (and is validated on) smaller images.
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if train and self.augment is not None:
            x = augment_batch(x, self.augment, generator=generator)
        x = self.prep.normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _l2(self, model: nn.Module | None = None) -> torch.Tensor:
        head = getattr(model if model is not None else self.model, "head", None)
        params = getattr(head, "l2_params", [])
        if not self.head_l2 or not params:
            return torch.zeros((), device=self.device)
        return self.head_l2 * sum((p.float() ** 2).sum() for p in params)

    def _weighted_ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing, reduction="none")
        return (per * self.class_weights[y]).mean()

    def training_step(self, batch: tuple[torch.Tensor, ...], _idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        early = self.current_epoch < self.stage.start_epochs  # progressive resizing inside the stage
        x = self._inputs(x, train=True, size=self.stage.start_size if early else None)
        if self.mixup > 0:
            # One weight per batch from the seeded global generator; the loss mixes both labels.
            lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
            perm = torch.randperm(len(y), device=y.device)
            logits = self(lam * x + (1.0 - lam) * x[perm]).float()
            loss = lam * self._weighted_ce(logits, y) + (1.0 - lam) * self._weighted_ce(logits, y[perm]) + self._l2()
        else:
            logits = self(x).float()
            loss = self._weighted_ce(logits, y) + self._l2()
        acc = (logits.argmax(1) == y).float().mean()
        distributed = self._world_size() > 1
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=distributed)
        self.log("train_acc", acc, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=distributed)
        return loss

    def _world_size(self) -> int:
        return self._trainer.world_size if self._trainer is not None else 1

    def on_validation_epoch_start(self) -> None:
        self._val_logits, self._val_labels, self._val_ids = [], [], []

    def validation_step(self, batch: tuple[torch.Tensor, ...], _idx: int) -> None:
        x, y = batch[0], batch[1]
        ids = batch[2] if len(batch) > 2 else torch.arange(len(y)) + sum(len(t) for t in self._val_labels)
        augment = self.val_augment is not None
        logits = self.eval_model(self._inputs(x, train=augment, generator=self.val_augment)).float()
        self._val_logits.append(logits.detach().cpu())
        self._val_labels.append(y.detach().cpu())
        self._val_ids.append(torch.as_tensor(ids).detach().cpu().long())

    def on_validation_epoch_end(self) -> None:
        local = (
            torch.cat(self._val_logits) if self._val_logits else torch.empty(0, 2),
            torch.cat(self._val_labels) if self._val_labels else torch.empty(0, dtype=torch.long),
            torch.cat(self._val_ids) if self._val_ids else torch.empty(0, dtype=torch.long),
        )
        logits, labels, ids = (self._gather(t) for t in local)
        # A DistributedSampler pads ranks with repeats: keep each id once, in id order.
        order = torch.argsort(ids, stable=True)
        ids, logits, labels = ids[order], logits[order], labels[order]
        keep = torch.ones(len(ids), dtype=torch.bool)
        keep[1:] = ids[1:] != ids[:-1]
        self.val_logits, self.val_labels, self.val_ids = logits[keep], labels[keep], ids[keep]
        if not len(self.val_ids):
            return
        probs = self.val_logits.softmax(1)[:, -1].numpy()
        y = self.val_labels.numpy()
        ce = F.cross_entropy(self.val_logits, self.val_labels, label_smoothing=self.label_smoothing)
        val_loss = float(ce) + float(self._l2(self.eval_model))
        acc = float(((probs >= 0.5).astype(int) == y).mean())
        # Identical on every rank already (computed from the gathered set); sync_dist only
        # keeps Lightning from warning about epoch-level values in DDP.
        sync = self._world_size() > 1
        self.log("val_loss", val_loss, prog_bar=True, sync_dist=sync)
        self.log("val_acc", acc, prog_bar=True, sync_dist=sync)
        self.log("val_auc", _auc(y, probs), prog_bar=True, sync_dist=sync)

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate ``t`` (first dim may differ per rank) from every rank, rank by rank."""
        world = self._world_size()
        if world == 1:
            return t
        dev = self.device
        n = torch.tensor([t.shape[0]], device=dev)
        sizes = self.all_gather(n).reshape(world).tolist()
        m = max(sizes)
        padded = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=dev)
        padded[: t.shape[0]] = t.to(dev)
        every = self.all_gather(padded).reshape(world, m, *t.shape[1:]).cpu()
        return torch.cat([every[r, : sizes[r]] for r in range(world)])

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        st = self.stage
        params = [p for p in self.model.parameters() if p.requires_grad]
        if st.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=st.lr, momentum=0.9, nesterov=True, weight_decay=st.weight_decay)
        else:
            opt_cls = torch.optim.AdamW if st.optimizer == "adamw" else torch.optim.Adam
            opt = opt_cls(params, lr=st.lr, weight_decay=st.weight_decay)
        if st.schedule == "onecycle":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            sched = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=st.lr, total_steps=total, pct_start=st.warmup_fraction, anneal_strategy="cos"
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=st.plateau_factor, patience=st.plateau_patience, min_lr=st.min_lr,
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "interval": "epoch"}}


def _auc(labels: np.ndarray, probs: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, probs))
