"""Self-describing checkpoints that never unpickle anything.

``best.ckpt`` is a safetensors file: the weights, plus one JSON metadata entry with the
architecture, preprocessing contract, class names, Grad-CAM layer, decision threshold and the
resolved training config. ``predict``, ``explain`` and ``serve`` need nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.transforms import Preprocessing
from .errors import CheckpointError, PneumoscopeError
from .fileio import atomic_path

FORMAT = "pneumoscope.checkpoint"
FORMAT_VERSION = 1
CLASS_NAMES = ("NORMAL", "PNEUMONIA")


@dataclass
class Checkpoint:
    """A loaded model with its contract."""

    model: nn.Module
    architecture: str
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    target_layer: str
    threshold: float
    config: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def positive_index(self) -> int:
        return len(self.class_names) - 1


def _versions() -> dict[str, str]:
    import torchvision

    from . import __version__

    return {"pneumoscope": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    architecture: str,
    preprocessing: Preprocessing,
    target_layer: str,
    threshold: float = 0.5,
    class_names: tuple[str, ...] = CLASS_NAMES,
    config: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename, so a crash never leaves half a file)."""
    from safetensors.torch import save_file

    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "target_layer": target_layer,
        "threshold": float(threshold),
        "config": config or {},
        "info": info or {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"pneumoscope": json.dumps(meta)})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON metadata, without loading the weights."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        with safe_open(str(p), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("pneumoscope")
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not our format"
        raise CheckpointError(
            f"{p}: not a readable pneumoscope checkpoint (expected a safetensors file written by "
            f"`pneumoscope train`)"
        ) from exc
    if raw is None:
        raise CheckpointError(f"{p}: safetensors file without pneumoscope metadata; not a pneumoscope checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: corrupt checkpoint metadata") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a pneumoscope checkpoint (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format {meta['format_version']} is newer than this pneumoscope "
            f"understands ({FORMAT_VERSION}); upgrade pneumoscope"
        )
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model described by a checkpoint and load its weights (eval mode).

    Raises:
        CheckpointError: unreadable file, not a pneumoscope checkpoint, unknown architecture, or
            weights that do not match the architecture it names.
    """
    from safetensors.torch import load_file

    from .models import create_model

    p = Path(path)
    meta = read_metadata(p)
    arch = meta.get("architecture", "")
    try:
        model = create_model(arch, weights=None, num_classes=int(meta["num_classes"]))
    except PneumoscopeError as exc:
        raise CheckpointError(f"{p}: {exc}") from exc
    try:
        state = load_file(str(p))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{p}: checkpoint weights are unreadable (truncated or corrupt file)") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{p}: weights do not match architecture {arch!r} (checkpoint from another model?)"
        ) from exc
    model.eval().to(device)
    return Checkpoint(
        model=model,
        architecture=arch,
        preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
        class_names=tuple(meta["class_names"]),
        target_layer=meta["target_layer"],
        threshold=float(meta["threshold"]),
        config=meta.get("config", {}),
        info=meta.get("info", {}),
        path=p,
    )
