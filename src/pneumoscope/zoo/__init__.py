"""Shipped models: trained checkpoints inside the package, loaded by name.

Each shipped model is two files in this folder:

- ``NAME.safetensors``: a compact pneumoscope checkpoint (weights stored in float16, see
  :func:`pneumoscope.checkpoint.compact_checkpoint`), with the same metadata contract as any
  ``best.ckpt``;
- ``NAME.md``: its model card (data and licence, recipe, figures with intervals, intended use,
  known failure modes).

Everywhere a checkpoint path is accepted (``predict``, ``explain``, ``evaluate``, ``serve``,
``listen``, :func:`pneumoscope.load_checkpoint`), a shipped model's name is accepted too; a file
that exists always wins over a name. ``pneumoscope models`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parent
SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ShippedModel:
    """One model shipped in the package."""

    name: str
    path: Path
    card: Path

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def metadata(self) -> dict[str, Any]:
        from ..checkpoint import read_metadata

        return read_metadata(self.path)

    def card_text(self) -> str:
        return self.card.read_text(encoding="utf-8") if self.card.is_file() else ""


def shipped_models() -> list[ShippedModel]:
    """The shipped models, by name."""
    return [
        ShippedModel(p.name[: -len(SUFFIX)], p, p.with_name(p.name[: -len(SUFFIX)] + ".md"))
        for p in sorted(ZOO_DIR.glob(f"*{SUFFIX}"))
    ]


def find_shipped(name: str) -> ShippedModel | None:
    """The shipped model called ``name`` (``NAME`` or ``NAME.safetensors``), or None."""
    name = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
    return next((m for m in shipped_models() if m.name == name), None)


def resolve_checkpoint(spec: str | Path) -> Path:
    """A checkpoint path from a path or a shipped model's name.

    An existing file is returned as it is; otherwise a bare name (no folder part) that names a
    shipped model gives that model's file. Anything else is returned unchanged, for the caller
    to report as not found.
    """
    p = Path(spec)
    if p.exists() or len(p.parts) != 1:
        return p
    found = find_shipped(p.name)
    return found.path if found is not None else p


def is_shipped(path: str | Path) -> bool:
    """Whether ``path`` is one of the files of a shipped model (read-only for pneumoscope)."""
    try:
        return Path(path).resolve().parent == ZOO_DIR
    except OSError:
        return False


def check_writable(target: str | Path, shown: str | Path | None = None) -> None:
    """Refuse to write ``target`` when it is a shipped model's file.

    Raises:
        CheckpointError: naming ``shown`` (default: ``target``) and how to write a copy instead.
    """
    if is_shipped(target):
        from ..errors import CheckpointError

        raise CheckpointError(f"{shown or target}: a shipped model is read-only; write the updated checkpoint "
                              "elsewhere (--out FILE)")


def shipped_names() -> str:
    """The shipped models' names for error messages: ``a, b`` or ``none``."""
    return ", ".join(m.name for m in shipped_models()) or "none"
