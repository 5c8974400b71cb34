"""Image files as a map-style dataset for scoring: decoded in ``__getitem__``, bad files as error markers.

Decoding happens in the DataLoader's workers, and a file that cannot be read becomes a sample
with ``error`` set instead of an exception, so one bad file in an archive never stops a rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

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


__all__ = ["ImageFiles", "collate", "read_problem"]
