"""Device and numeric-precision choices shared by every compute path.

Every entry point (train, evaluate, predict, explain, serve) takes ``precision`` in
``{"auto", "fp32", "bf16"}``. ``auto`` picks bf16 where the hardware runs it natively:
CUDA devices with bf16 support, and CPUs with AMX-BF16 or AVX512-BF16, where bf16 autocast
is ~3x faster than fp32 for convolutions. Correctness tests pin ``fp32``.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from typing import Iterator

import torch

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")

#: The environment that makes a newer CPU compute as an AVX2-only one: oneDNN's instruction-set cap,
#: ATen's kernel dispatch and MKL's. It must be set before torch starts, so benchmarks pass it to a
#: new process; it emulates the instruction set, not the clock or caches of an older CPU.
AVX2_ONLY_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one), at least 1."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (or the platform's processor string)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def cpu_isa() -> dict[str, bool]:
    """Which vector and matrix extensions the CPU has: avx2, avx512 (F), avx512_bf16, amx (AMX-BF16)."""
    flags = _cpu_flags()
    return {"avx2": "avx2" in flags, "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "amx": "amx_bf16" in flags}


def cpu_summary() -> str:
    """One line naming the CPU, its cores and extensions, and any oneDNN ISA cap in force.

    ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``) makes oneDNN use only the kernels of an older CPU,
    which is how an AVX2-only machine is emulated on a newer one; a figure measured that way
    says so.
    """
    import os

    isa = cpu_isa()
    have = [k for k, v in isa.items() if v]
    missing = [k for k, v in isa.items() if not v]
    n = available_cores()
    line = f"{cpu_model()}, {n} cores, {' '.join(have) or 'no avx2'}"
    if missing:
        line += f" (no {', '.join(missing)})"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if cap:
        line += f"; oneDNN capped at {cap}"
    return line


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AMX or AVX512-BF16)."""
    flags = _cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda[:N]``/``mps`` into a device, failing clearly if absent."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """Resolve ``auto`` to ``bf16`` or ``fp32`` for ``device``; validate explicit choices."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast context for an already-resolved precision (no-op for fp32)."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def channels_last_preferred(device: torch.device) -> bool:
    """Whether convolutions run faster in channels-last (NHWC) memory format on ``device``.

    True on CUDA and on the CPU: oneDNN's convolutions are NHWC-native. Measured on a 2-core
    AMX Xeon: VGG19 inference 4.4 → 6.7 img/s in fp32 and 9 → 28 img/s in bf16; ResNet-18
    bf16 training 104 → 116 img/s.
    """
    return device.type in ("cuda", "cpu")


def to_memory_format(x: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``x`` (N, C, H, W) in the memory format of ``model``'s first 4-D weight (no copy if it matches)."""
    for p in model.parameters():
        if p.dim() == 4:
            if p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() and x.dim() == 4:
                return x.contiguous(memory_format=torch.channels_last)
            return x
    return x


def lightning_precision(precision: str) -> str:
    """Map a resolved precision to Lightning's ``Trainer(precision=...)`` value."""
    return "bf16-mixed" if precision == "bf16" else "32-true"
