"""What the scoring loop reads: image files, or the images of a prepared store.

Files are a map-style dataset decoded in ``__getitem__``: decoding happens in the DataLoader's
workers, and a file that cannot be read becomes a sample with ``error`` set instead of an
exception, so one bad file in an archive never stops a rank.

A store (``pneumoscope prepare``) holds images already decoded at the model's size; it is
streamed with LitData, which gives each rank (and each loader worker) its own chunks, and its
rows are keyed by the source paths the store records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset

from ..data.io import read_image
from ..data.transforms import Preprocessing
from ..errors import PneumoscopeError
from ..inference import display_image


def read_problem(exc: BaseException) -> str:
    """One line saying why a file could not be read."""
    if isinstance(exc, PneumoscopeError):
        return getattr(exc, "problem", str(exc))
    # Not a decoding error read_image knows (a bug or an exotic file): still one row, not a dead rank.
    return " ".join(f"could not read the file: {type(exc).__name__}: {exc}".split())


class ImageFiles(Dataset):
    """``indices`` of ``paths`` (the run's full input list), each read, preprocessed and kept with its index."""

    def __init__(self, paths: Sequence[Path], indices: Sequence[int], preprocessing: Preprocessing, display: bool = False) -> None:
        self.paths = paths
        self.indices = list(indices)
        self.preprocessing = preprocessing
        self.display = display  # explanations draw their overlay on the display-sized image

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = self.indices[i]
        try:
            gray = read_image(self.paths[index])
            x = self.preprocessing(gray)
            shown = display_image(gray) if self.display else None
        except Exception as exc:  # noqa: BLE001  (one bad file must not stop the rank)
            return {"index": index, "error": read_problem(exc), "x": None, "display": None}
        return {"index": index, "error": "", "x": x, "display": shown}


@dataclass(frozen=True)
class StoreInputs:
    """The images of ``subsets`` of a store as scoring inputs, in ``samples.csv`` order, subset by subset."""

    path: Path
    subsets: tuple[str, ...]

    @classmethod
    def open(cls, path: Path, subset: str | None = None) -> "StoreInputs":
        """All the store's subsets, or only ``subset``; a subset the store lacks fails naming the store."""
        from ..data.store import Store

        store = Store(path)
        if subset is None:
            return cls(Path(path), tuple(store.subsets()))
        store.count(subset)  # DataError: the store has no such subset
        return cls(Path(path), (subset,))

    def keys(self) -> list[tuple[str, int]]:
        """(subset, id) of every input, in input order."""
        from ..data.store import Store

        return [(r["subset"], int(r["id"])) for sub in self.subsets for r in Store(self.path).rows((sub,))]

    def paths(self) -> list[Path]:
        """The source path of every input, in input order: what its row is keyed by."""
        from ..data.store import Store

        return [Path(r["path"]) for sub in self.subsets for r in Store(self.path).rows((sub,))]

    def check(self, preprocessing: Preprocessing) -> None:
        """ConfigError unless the store was prepared at the checkpoint's size and intensity."""
        from ..data.store import Store

        Store(self.path).check_preprocessing(preprocessing, "the checkpoint")


class StoreImages(IterableDataset):
    """The ``todo`` inputs of a store, streamed; items as :class:`ImageFiles` makes them.

    Under DDP LitData deals the chunks out to the ranks itself (Lightning adds no sampler to an
    iterable dataset). Explanations are drawn on the stored model-size grey image.
    """

    def __init__(self, inputs: StoreInputs, todo: Sequence[int], preprocessing: Preprocessing, display: bool = False) -> None:
        from ..data.store import Store

        self.inputs = inputs
        self.index = {key: i for i, key in enumerate(inputs.keys())}
        self.todo = set(todo)
        self.preprocessing = preprocessing
        self.display = display
        # Made here, in the process's main thread once it has joined its process group: a LitData
        # stream reads the rank and world size when it is made, and loader workers inherit them.
        store = Store(inputs.path)
        self.streams = {sub: store.dataset(sub, drop_last=False) for sub in inputs.subsets}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sub, stream in self.streams.items():
            for image, _, i in stream:
                index = self.index[(sub, i)]
                if index not in self.todo:
                    continue  # written by the run this one resumes
                shown = image[0].float().div_(255.0).numpy() if self.display else None
                yield {"index": index, "error": "", "x": self.preprocessing.normalize(image[None])[0], "display": shown}


def scoring_dataset(paths: Sequence[Path], store: StoreInputs | None, todo: Sequence[int], preprocessing: Preprocessing,
                    display: bool) -> Dataset:
    """The dataset the scoring loop reads ``todo`` from: the store's images, or the files."""
    if store is not None:
        return StoreImages(store, todo, preprocessing, display)
    return ImageFiles(paths, todo, preprocessing, display)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch: ``x`` stacks the readable images; ``slot[j]`` is item j's row in ``x`` (-1: error)."""
    ok = [it for it in items if not it["error"]]
    slots, k = [], 0
    for it in items:
        slots.append(-1 if it["error"] else k)
        k += 0 if it["error"] else 1
    return {
        "index": [it["index"] for it in items],
        "error": [it["error"] for it in items],
        "slot": slots,
        "x": torch.stack([it["x"] for it in ok]) if ok else None,
        "display": [it["display"] for it in ok],
    }


__all__ = ["ImageFiles", "StoreImages", "StoreInputs", "collate", "read_problem", "scoring_dataset"]
