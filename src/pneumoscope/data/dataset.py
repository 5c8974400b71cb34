"""Datasets: the Kaggle folder layout or a CSV manifest, decoded once into memory.

Images are decoded, converted to grey and resized to the model's input size once, then kept
as one uint8 tensor, so epochs never re-decode JPEGs (5,216 images at 256 px are 340 MB).
"""

from __future__ import annotations

import csv
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import torch

from ..errors import DataError, PneumoscopeError
from ..runtime import available_cores
from .io import IMAGE_SUFFIXES, read_image
from .splits import merge_duplicate_groups, patient_id_from_name, patient_split
from .transforms import Preprocessing

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    patient_id: str


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )


def is_split_folder(path: Path) -> bool:
    return path.is_dir() and any((path / c).is_dir() for c in CLASS_NAMES)


def scan_split_folder(folder: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> list[Sample]:
    """Samples of ``folder/{NORMAL,PNEUMONIA}``; errors name what is missing."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder with {'/'.join(class_names)} subfolders")
    samples: list[Sample] = []
    for label, name in enumerate(class_names):
        sub = folder / name
        if not sub.is_dir():
            raise DataError(f"{folder}: missing class folder {name}/ (expected {', '.join(class_names)})")
        files = _images_in(sub)
        if not files:
            raise DataError(f"{sub}: no images of class {name} (expected {', '.join(sorted(IMAGE_SUFFIXES))} files)")
        samples += [Sample(p, label, patient_id_from_name(p)) for p in files]
    return samples


def read_manifest(path: str | Path, class_names: Sequence[str] = CLASS_NAMES) -> list[tuple[Sample, str]]:
    """Rows of a CSV manifest ``path,label[,patient_id][,split]``, paths relative to the CSV.

    Returns (sample, split) pairs; split is ``""`` when the manifest has no split column.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV manifest ({exc})") from exc
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise DataError(f"{path}: expected a CSV with columns path,label[,patient_id][,split]")
    out: list[tuple[Sample, str]] = []
    for i, row in enumerate(rows, start=2):
        raw_label = (row.get("label") or "").strip()
        if raw_label.upper() in class_names:
            label = list(class_names).index(raw_label.upper())
        elif raw_label in {str(i) for i in range(len(class_names))}:
            label = int(raw_label)
        else:
            raise DataError(f"{path}:{i}: label {raw_label!r}; expected one of {', '.join(class_names)} or 0/1")
        p = Path(row["path"])
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise DataError(f"{path}:{i}: image {p} not found")
        pid = (row.get("patient_id") or "").strip() or patient_id_from_name(p)
        out.append((Sample(p, label, pid), (row.get("split") or "").strip().lower()))
    return out


@dataclass
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample] | None
    val_source: str


def load_splits(data: str | Path, val_source: str = "split", val_fraction: float = 0.1, seed: int = 42) -> Splits:
    """Training and validation samples for ``data`` (a Kaggle-layout root or a CSV manifest).

    ``val_source``: ``split`` holds out a patient-level split of train (the default);
    ``val`` uses the dataset's own ``val/``; ``test`` uses ``test/`` as the seed did (warns: the
    reported test figures then leak into model selection).
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such dataset folder or manifest")
    if data.is_file():
        rows = read_manifest(data)
        by_split: dict[str, list[Sample]] = {}
        for s, sp in rows:
            by_split.setdefault(sp or "train", []).append(s)
        train_all, val_given, test = by_split.get("train", []), by_split.get("val"), by_split.get("test")
        if not train_all:
            raise DataError(f"{data}: no training rows (split column empty or 'train')")
    else:
        if not (data / "train").is_dir():
            raise DataError(f"{data}: expected a dataset root with train/ (and val/, test/) inside, Kaggle layout")
        train_all = scan_split_folder(data / "train")
        val_given = scan_split_folder(data / "val") if (data / "val").is_dir() else None
        test = scan_split_folder(data / "test") if (data / "test").is_dir() else None
    for c, name in enumerate(CLASS_NAMES):
        if not any(s.label == c for s in train_all):
            raise DataError(f"{data}: no training images of class {name}")
    if val_source == "split":
        groups = merge_duplicate_groups([s.path for s in train_all], [s.patient_id for s in train_all])
        tr, va = patient_split([s.label for s in train_all], groups, val_fraction, seed)
        return Splits([train_all[i] for i in tr], [train_all[i] for i in va], test, val_source)
    if val_source == "val":
        if not val_given:
            raise DataError(f"{data}: --val-source val needs a val/ split")
        return Splits(train_all, val_given, test, val_source)
    if val_source == "test":
        if not test:
            raise DataError(f"{data}: --val-source test needs a test/ split")
        warnings.warn(
            "validating on the test split (as the seed did): early stopping, LR reduction and the "
            "checkpoint choice all see the test set, so test figures from this run are optimistic",
            stacklevel=2,
        )
        return Splits(train_all, test, test, val_source)
    raise DataError(f"unknown val source {val_source!r}; expected split, val or test")


def resolve_split_samples(data: str | Path, split: str) -> tuple[list[Sample], Path]:
    """Samples of one split: a split folder itself, a dataset root's ``split``/ folder, or a CSV's
    ``split`` rows (all its rows when it has no split column)."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such folder or manifest")
    if data.is_file():
        rows = read_manifest(data)
        has_split = any(sp for _, sp in rows)
        chosen = [s for s, sp in rows if sp == split] if has_split else [s for s, _ in rows]
        if not chosen:
            raise DataError(f"{data}: no rows to use (no split={split} rows)")
        return chosen, data
    if is_split_folder(data):
        return scan_split_folder(data), data
    if is_split_folder(data / split):
        return scan_split_folder(data / split), data / split
    raise DataError(
        f"{data}: expected a split folder with NORMAL/ and PNEUMONIA/ inside, or a dataset root with {split}/"
    )


def resolve_eval_samples(data: str | Path) -> tuple[list[Sample], Path]:
    """Samples to evaluate: a split folder (``…/test``), a dataset root (its ``test/``) or a CSV."""
    return resolve_split_samples(data, "test")


def map_images(fn: Callable[[T], R], items: Sequence[T], progress: bool = True, desc: str = "decoding", workers: int | None = None) -> Iterator[R]:
    """``fn`` over ``items`` in decoding threads, results in order, with a progress bar.

    ``workers`` threads (default: the CPUs this process may use, at most 8). Pillow and
    libjpeg release the GIL, so threads give a real speed-up on decode.
    """
    if workers is None:
        workers = min(8, available_cores())
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        yield from tqdm(pool.map(fn, items), total=len(items), desc=desc, disable=not progress, unit="img", leave=False)


def decode_images(
    paths: Sequence[Path], prep: Preprocessing, progress: bool = True, desc: str = "decoding", workers: int | None = None
) -> torch.Tensor:
    """Decode, grey, resize → (N, S, S) uint8. A bad file stops with an error naming it."""
    s = prep.image_size
    out = torch.empty((len(paths), s, s), dtype=torch.uint8)
    for i, arr in enumerate(map_images(lambda p: prep.to_uint8(read_image(p)), paths, progress, desc, workers)):
        out[i] = arr
    return out


class CachedDataset(torch.utils.data.Dataset):
    """Decoded images (uint8, model size) and labels; items are (uint8 (1,S,S), label, id).

    ``id`` is the item's index, as a streamed store's items carry theirs (see ``data/source.py``).
    """

    def __init__(self, samples: Sequence[Sample], prep: Preprocessing, progress: bool = True, desc: str = "decoding") -> None:
        if not samples:
            raise DataError("no images to load")
        self.samples = list(samples)
        self.images = decode_images([s.path for s in self.samples], prep, progress, desc)
        self.labels = torch.tensor([s.label for s in self.samples], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[i][None], self.labels[i], i

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(CLASS_NAMES)).tolist()


__all__ = [
    "CLASS_NAMES",
    "CachedDataset",
    "PneumoscopeError",
    "Sample",
    "Splits",
    "decode_images",
    "load_splits",
    "read_manifest",
    "resolve_eval_samples",
    "scan_split_folder",
]
