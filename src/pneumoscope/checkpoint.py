"""Self-describing checkpoints that never unpickle anything.

``best.ckpt`` is a safetensors file: the weights, plus one JSON metadata entry with the
architecture, preprocessing contract, class names, Grad-CAM layer, decision threshold and the
resolved training config. ``predict``, ``explain`` and ``serve`` need nothing else.

Format 2 adds ``temperature`` (logits are divided by it before the softmax) and
``operating_point`` (how ``threshold`` was chosen on validation data). The threshold applies to
the temperature-scaled probabilities, so a reader that ignored the temperature would misapply it:
hence the version bump. Format 1 checkpoints load with temperature 1 and no operating point.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.transforms import Preprocessing
from .errors import CheckpointError, PneumoscopeError
from .fileio import atomic_path
from .zoo import check_writable, resolve_checkpoint, shipped_names

FORMAT = "pneumoscope.checkpoint"
FORMAT_VERSION = 3  # 3: global_pool (a version-2 checkpoint's head pools by average)
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
    temperature: float = 1.0
    operating_point: dict[str, Any] | None = None

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
    temperature: float = 1.0,
    operating_point: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename, so a crash never leaves half a file)."""
    _check_temperature(temperature, path)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": architecture,
        "global_pool": getattr(model, "global_pool", "avg"),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "target_layer": target_layer,
        "threshold": float(threshold),
        "temperature": float(temperature),
        "operating_point": operating_point,
        "config": config or {},
        "info": info or {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return _write(path, state, meta)


def _write(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"pneumoscope": json.dumps(meta)})
    return path


def _check_temperature(value: Any, where: str | Path) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and t > 0.0):
        raise CheckpointError(f"{where}: temperature must be a finite number > 0, got {value!r}")
    return t


def update_checkpoint(
    path: str | Path,
    out: str | Path | None = None,
    *,
    threshold: float,
    temperature: float,
    operating_point: dict[str, Any] | None,
    info: dict[str, Any] | None = None,
) -> Path:
    """Rewrite a checkpoint's operating point and temperature, weights untouched, atomically.

    Args:
        path: The checkpoint to read.
        out: Where to write; default: replace ``path`` (via temp file + rename).
        threshold: New decision threshold (on temperature-scaled probabilities).
        temperature: New temperature > 0.
        operating_point: How the threshold was chosen (see
            :class:`pneumoscope.evaluation.operating_point.OperatingPoint`).
        info: Entries merged into the checkpoint's ``info``.

    Raises:
        CheckpointError: Unreadable checkpoint or a temperature that is not > 0.
    """
    from safetensors.torch import load_file

    p = resolve_checkpoint(path)
    meta = read_metadata(p)
    _check_temperature(temperature, p)
    target = p if out is None else Path(out)
    check_writable(target, p)
    try:
        state = load_file(str(p))
    except Exception as exc:
        raise CheckpointError(f"{p}: checkpoint weights are unreadable (truncated or corrupt file)") from exc
    meta.update(
        format_version=FORMAT_VERSION, threshold=float(threshold), temperature=float(temperature),
        operating_point=operating_point, versions=_versions(),
    )
    meta["info"] = {**meta.get("info", {}), **(info or {})}
    return _write(target, state, meta)


COMPACT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
_FP16_MAX = float(torch.finfo(torch.float16).max)


def compact_checkpoint(path: str | Path, out: str | Path, *, dtype: str = "fp16") -> dict[str, Any]:
    """Write a copy of a checkpoint with its floating-point weights stored at half precision.

    Half the size, for shipping and sharing; :func:`load_checkpoint` loads it back into float32,
    so inference runs exactly as before apart from the rounding of the weights. ``fp16`` keeps
    three more bits of mantissa than ``bf16`` and is the default; a tensor that would overflow
    float16 stays float32. Integer buffers (BatchNorm's batch counter) are kept as they are.

    Returns:
        ``{"path", "dtype", "bytes_before", "bytes_after", "kept_fp32"}``.

    Raises:
        CheckpointError: Unreadable checkpoint, an unknown dtype, or ``out`` is the input.
    """
    from safetensors.torch import load_file

    if dtype not in COMPACT_DTYPES:
        raise CheckpointError(f"unknown storage dtype {dtype!r}; expected one of {', '.join(COMPACT_DTYPES)}")
    p = resolve_checkpoint(path)
    meta = read_metadata(p)
    out = Path(out)
    if out.exists() and out.resolve() == p.resolve():
        raise CheckpointError(f"{out}: write the compact checkpoint to a new file, not over its source")
    try:
        state = load_file(str(p))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{p}: checkpoint weights are unreadable (truncated or corrupt file)") from exc
    target = COMPACT_DTYPES[dtype]
    kept: list[str] = []
    small: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if not t.is_floating_point():
            small[name] = t
        elif target is torch.float16 and t.numel() and float(t.abs().max()) > _FP16_MAX:
            small[name] = t.float()
            kept.append(name)
        else:
            small[name] = t.to(target).contiguous()
    meta["info"] = {**meta.get("info", {}), "storage_dtype": dtype, "compacted_from": p.name}
    meta["versions"] = _versions()
    _write(out, small, meta)
    return {"path": out, "dtype": dtype, "bytes_before": p.stat().st_size, "bytes_after": out.stat().st_size,
            "kept_fp32": kept}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint's JSON metadata, without loading the weights.

    ``path`` may also be the name of a shipped model (``pneumoscope models``).
    """
    from safetensors import safe_open

    p = resolve_checkpoint(path)
    if p.is_dir():
        inside = " (it holds best.ckpt: pass that)" if (p / "best.ckpt").is_file() else ""
        raise CheckpointError(f"{p}: is a folder; expected a checkpoint file such as RUN/best.ckpt{inside}")
    if not p.is_file():
        hint = f" or the name of a shipped model ({shipped_names()})" if len(p.parts) == 1 else ""
        raise CheckpointError(f"{p}: checkpoint not found; expected a checkpoint file{hint}")
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

    ``path`` is a checkpoint file or the name of a shipped model (``kaggle-offline-v3``).
    Weights stored at a lower precision (:func:`compact_checkpoint`) load into float32.

    Raises:
        CheckpointError: unreadable file, not a pneumoscope checkpoint, unknown architecture, or
            weights that do not match the architecture it names.
    """
    from safetensors.torch import load_file

    from .models import create_model

    p = resolve_checkpoint(path)
    meta = read_metadata(p)
    arch = meta.get("architecture", "")
    try:
        model = create_model(arch, weights=None, num_classes=int(meta["num_classes"]),
                             global_pool=meta.get("global_pool", "avg"))
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
        temperature=_check_temperature(meta.get("temperature", 1.0), p),
        operating_point=meta.get("operating_point"),
    )
