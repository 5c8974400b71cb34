"""The one seam between data and training: a source of decoded images.

Training, validation, calibration and evaluation see an :class:`ImageSource`: something that yields
``(uint8 image (1, S, S), label, id)`` in batches, knows its size and class counts, and makes
its own loader. Two kinds exist and nothing above this module asks which one it has:

- :class:`MemorySource`: the images decoded once into one in-memory tensor (the fast path for
  a dataset that fits in RAM, as every run did before stores existed);
- :class:`StoreSource`: a subset of a store made by ``pneumoscope prepare``, streamed from
  LitData chunks, so a process holds a few chunks rather than the dataset.

``id`` is the sample's index within its source; under DDP it is what lets validation outputs
gathered from every rank be put back together exactly once each.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import lightning as L
import torch

from ..errors import ConfigError, DataError
from .dataset import CLASS_NAMES, CachedDataset, Sample, load_splits, resolve_eval_samples
from .store import Store, is_store
from .transforms import Preprocessing


class ImageSource(Protocol):
    """Decoded model-size images with labels; items are ``(uint8 (1,S,S), label, id)``."""

    def __len__(self) -> int: ...

    def class_counts(self) -> list[int]: ...

    def loader(
        self, batch_size: int, *, train: bool, seed: int, workers: int = 0, world_size: int = 1,
        balanced: bool = False,
    ) -> torch.utils.data.DataLoader:
        """Batches for training (shuffled, equal count on every rank; ``balanced``: class-balanced
        epochs, see :class:`BalancedEpochSampler`) or evaluation (in order, all)."""
        ...

    def rows(self) -> Iterator[tuple[str, str, str]]:
        """(path, class name, patient id) of every image, for ``splits.csv``."""
        ...

    def samples(self) -> list[Sample]:
        """Every image as a labelled sample (path, label, patient), in the order of :meth:`decoded`."""
        ...

    def decoded(self, progress: bool = True) -> torch.Tensor:
        """Every image at once, (N, S, S) uint8, for evaluation and calibration (one process)."""
        ...


class BalancedEpochSampler(torch.utils.data.Sampler[int]):
    """Each epoch: every image of the smallest class and as many drawn afresh from each other class.

    Draws without replacement, shuffled. Epoch ``k`` (counted by the calls to ``iter``) is seeded
    by ``seed`` and ``k`` alone, so every DDP rank draws the same epoch (Lightning then deals it
    out with its distributed sampler wrapper).
    """

    def __init__(self, labels: torch.Tensor, seed: int) -> None:
        self.by_class = [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]
        self.by_class = [ix for ix in self.by_class if len(ix)]
        self.per_class = min(len(ix) for ix in self.by_class)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return self.per_class * len(self.by_class)

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        picked = [ix[torch.randperm(len(ix), generator=gen)[: self.per_class]] for ix in self.by_class]
        order = torch.cat(picked)[torch.randperm(len(self), generator=gen)]
        return iter(order.tolist())


class MemorySource:
    """Images decoded into memory once (:class:`CachedDataset`)."""

    def __init__(self, samples: list[Sample], prep: Preprocessing, progress: bool = True, desc: str = "decoding") -> None:
        self.dataset = CachedDataset(samples, prep, progress, desc)
        self._loaders: dict[bool, torch.utils.data.DataLoader] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def class_counts(self) -> list[int]:
        return self.dataset.class_counts()

    def loader(
        self, batch_size: int, *, train: bool, seed: int, workers: int = 0, world_size: int = 1,
        balanced: bool = False,
    ) -> torch.utils.data.DataLoader:
        # One loader per role for the whole run: its shuffling generator carries on from stage
        # to stage. Under DDP Lightning swaps in a DistributedSampler (seeded alike on every rank).
        if train not in self._loaders:
            gen = torch.Generator().manual_seed(seed) if train else None
            if train and balanced:
                sampler = BalancedEpochSampler(self.dataset.labels, seed)
                self._loaders[train] = torch.utils.data.DataLoader(self.dataset, batch_size=batch_size, sampler=sampler)
            else:
                self._loaders[train] = torch.utils.data.DataLoader(
                    self.dataset, batch_size=batch_size, shuffle=train, generator=gen
                )
        return self._loaders[train]

    def rows(self) -> Iterator[tuple[str, str, str]]:
        for s in self.dataset.samples:
            yield str(s.path), CLASS_NAMES[s.label], s.patient_id

    def samples(self) -> list[Sample]:
        return self.dataset.samples

    def decoded(self, progress: bool = True) -> torch.Tensor:
        return self.dataset.images


class StoreSource:
    """One subset of a prepared store, streamed with LitData."""

    def __init__(self, store: Store, subset: str) -> None:
        self.store = store
        self.subset = subset
        self._n = store.count(subset)

    def __len__(self) -> int:
        return self._n

    def class_counts(self) -> list[int]:
        return self.store.class_counts(self.subset)

    def loader(
        self, batch_size: int, *, train: bool, seed: int, workers: int = 0, world_size: int = 1,
        balanced: bool = False,
    ) -> torch.utils.data.DataLoader:
        from litdata import StreamingDataLoader

        if balanced:  # open_training_data refuses it first, with the store's path
            raise ConfigError("train.epoch_sampling: balanced needs in-memory data; a store is streamed")

        # Training: shuffled; under DDP LitData gives every rank the same number of whole
        # batches (so no rank waits for another's gradients) and leaves out the rest of the
        # epoch, fewer than batch_size x world_size images, a different few each epoch.
        # Evaluation: every image once. LitData deals out whole batches and gives the
        # remainder to the last rank, so batches are made small enough for every rank to get one.
        if not train and world_size > 1:
            batch_size = max(1, min(batch_size, self._n // world_size))
        ds = self.store.dataset(self.subset, shuffle=train, seed=seed, drop_last=None if train else False)
        return StreamingDataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=train)

    def rows(self) -> Iterator[tuple[str, str, str]]:
        for r in self.store.rows((self.subset,)):
            yield r["path"], r["label"], r["patient_id"]

    def samples(self) -> list[Sample]:
        return self.store.samples(self.subset)

    def decoded(self, progress: bool = True) -> torch.Tensor:
        return self.store.decoded(self.subset, progress)


class SourceDataModule(L.LightningDataModule):
    """The training and validation sources as Lightning asks for them.

    Lightning calls ``*_dataloader()`` once the processes have joined their group, which is when
    a LitData stream can see its rank and world size (one made earlier would think it is alone).
    """

    def __init__(self, train: ImageSource, val: ImageSource, batch_size: int, seed: int, workers: int = 0,
                 world_size: int = 1, balanced: bool = False) -> None:
        super().__init__()
        self.train, self.val, self.balanced = train, val, balanced
        self.batch_size, self.seed, self.workers, self.world_size = batch_size, seed, workers, world_size

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self.train.loader(self.batch_size, train=True, seed=self.seed, workers=self.workers,
                                 world_size=self.world_size, balanced=self.balanced)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self.val.loader(max(self.batch_size, 64), train=False, seed=self.seed, workers=self.workers,
                               world_size=self.world_size)


@dataclass
class TrainingData:
    """What ``train`` needs from ``--data``: a training and a validation source."""

    train: ImageSource
    val: ImageSource
    val_source: str  # split | val | test
    kind: str  # memory | store

    def write_splits(self, path: Path, writer: Callable[[Path], Any]) -> None:
        """``splits.csv``: every training and validation image and which side it is on."""
        with writer(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "patient_id", "split"])
            for name, src in (("train", self.train), ("val", self.val)):
                for p, label, pid in src.rows():
                    w.writerow([p, label, pid, name])


def open_training_data(data: str | Path, cfg: Any, prep: Preprocessing, progress: bool = True) -> TrainingData:
    """Training and validation sources for ``data``: a store, a Kaggle-layout root or a manifest.

    A store carries its own patient-level split (made by ``prepare``); the config's
    ``data.image_size``, ``data.intensity`` and ``data.val_source`` must agree with it.
    """
    if is_store(data):
        store = Store(data)
        pre = store.index["preprocessing"]
        if store.image_size != cfg.data.image_size:
            raise ConfigError(
                f"{data}: the store holds {store.image_size} px images but the run asks for --image-size "
                f"{cfg.data.image_size}; pass --image-size {store.image_size} or prepare a store at {cfg.data.image_size}"
            )
        if pre.get("intensity", "none") != cfg.data.intensity:
            raise ConfigError(
                f"{data}: the store was prepared with intensity {pre.get('intensity')!r}, the run asks for "
                f"data.intensity {cfg.data.intensity!r}; prepare a store with --intensity {cfg.data.intensity}"
            )
        if store.val_source != cfg.data.val_source:
            raise ConfigError(
                f"{data}: the store's validation images are its {store.val_source!r} ones (chosen by prepare), "
                f"the run asks for --val-source {cfg.data.val_source}; pass --val-source {store.val_source} or "
                f"prepare a store with --val-source {cfg.data.val_source}"
            )
        split = store.index["split"]
        if store.val_source == "split" and (
            split["seed"] != cfg.train.seed or abs(split["val_fraction"] - cfg.data.val_fraction) > 1e-12
        ):
            warnings.warn(
                f"{data}: validating on the store's own patient-level split (val_fraction {split['val_fraction']}, "
                f"seed {split['seed']}, made by prepare), not one with val_fraction {cfg.data.val_fraction} and "
                f"seed {cfg.train.seed}",
                stacklevel=2,
            )
        if cfg.train.epoch_sampling != "all":
            raise ConfigError(
                f"{data}: train.epoch_sampling {cfg.train.epoch_sampling!r} draws from images held in memory, and a "
                "store is streamed in chunks; train with epoch_sampling: all (the loss weights balance the classes)"
            )
        return TrainingData(StoreSource(store, "train"), StoreSource(store, "val"), store.val_source, "store")
    splits = load_splits(data, cfg.data.val_source, cfg.data.val_fraction, cfg.train.seed)
    train = MemorySource(splits.train, prep, progress, desc="decoding train")
    val = MemorySource(splits.val, prep, progress, desc="decoding val")
    return TrainingData(train, val, splits.val_source, "memory")


def open_eval_data(data: str | Path, prep: Preprocessing, progress: bool = True) -> tuple[ImageSource, Path]:
    """The labelled test images of ``data`` for ``evaluate``, and where they came from.

    ``data`` is a store (its ``test`` subset, read as stored), a split folder, a dataset root
    (its ``test/``) or a CSV manifest (decoded with ``prep``).

    Raises:
        ConfigError: A store prepared at another image size or intensity than ``prep``.
        DataError: A store without test images, or no images.
    """
    if is_store(data):
        store = Store(data)
        store.check_preprocessing(prep, "the checkpoint")
        if "test" not in store.subsets():
            raise DataError(
                f"{data}: the store has no test images (it has {', '.join(store.subsets())}); evaluate the "
                "dataset it was prepared from, or prepare a store from data with a test split"
            )
        return StoreSource(store, "test"), Path(data)
    samples, source = resolve_eval_samples(data)
    return MemorySource(samples, prep, progress, desc="decoding"), source


def open_validation_data(data: str | Path, val_source: str, val_fraction: float, seed: int, prep: Preprocessing,
                         progress: bool = True) -> ImageSource:
    """The validation images ``calibrate`` refits on: a store's ``val`` subset, or ``data``'s re-derived split.

    Raises:
        ConfigError: A store prepared at another image size or intensity than ``prep``, or whose
            validation images were chosen otherwise than ``val_source``.
    """
    if is_store(data):
        store = Store(data)
        store.check_preprocessing(prep, "the checkpoint")
        if store.val_source != val_source:
            raise ConfigError(
                f"{data}: the store's validation images are its {store.val_source!r} ones (chosen by prepare), "
                f"not {val_source!r}; pass --val-source {store.val_source} if the checkpoint was trained on them"
            )
        return StoreSource(store, "val")
    splits = load_splits(data, val_source, val_fraction, seed)
    return MemorySource(splits.val, prep, progress, desc="decoding val")
