"""Where work runs: one process or many (Lightning DDP across devices and nodes).

This is the one place that turns the user's choice of accelerator, devices, nodes and strategy
into ``lightning.Trainer`` arguments. Training and scoring both build their Trainer from
:func:`trainer_kwargs`, so a run launched by Lightning itself, by ``torchrun`` or by SLURM's
``srun`` is configured the same way: Lightning reads the launcher's environment
(``LOCAL_RANK``/``WORLD_SIZE`` from torchrun, ``SLURM_*`` from srun) and only ``devices`` and
``num_nodes`` need to agree with what was launched.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true")


@dataclass
class DistributedConfig:
    """How many processes a job uses and on what (the ``distributed`` section of a config).

    ``devices`` is per node; the world size is ``devices * num_nodes``. ``strategy`` ``auto``
    means DDP when the world size is above one and a single process otherwise.
    """

    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # processes (GPUs, or CPU processes) per node
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def validate(self) -> "DistributedConfig":
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"distributed.accelerator must be one of {', '.join(ACCELERATORS)}, not {self.accelerator!r}")
        if self.devices < 1:
            raise ConfigError(f"distributed.devices must be >= 1, not {self.devices}")
        if self.num_nodes < 1:
            raise ConfigError(f"distributed.num_nodes must be >= 1, not {self.num_nodes}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"distributed.strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.accelerator == "gpu" and not torch.cuda.is_available():
            raise ConfigError("--accelerator gpu requested but CUDA is not available; use --accelerator cpu")
        if self.accelerator == "gpu" and self.devices > torch.cuda.device_count():
            raise ConfigError(f"--devices {self.devices} but this node has {torch.cuda.device_count()} GPU(s)")
        return self

    def resolved_accelerator(self) -> str:
        if self.accelerator == "auto":
            return "gpu" if torch.cuda.is_available() else "cpu"
        return self.accelerator

    def resolved_strategy(self) -> str:
        if self.strategy != "auto":
            return self.strategy
        return "ddp" if self.world_size > 1 else "auto"


def trainer_kwargs(
    dist: DistributedConfig, device: torch.device | None = None, find_unused_parameters: bool = False
) -> dict[str, Any]:
    """``accelerator``, ``devices``, ``num_nodes`` and ``strategy`` for ``lightning.Trainer``.

    With one process, an explicit ``device`` (``cuda:N``) is honoured, as single-device runs
    always did: ``devices=1`` alone would mean "the first GPU". ``find_unused_parameters``: DDP
    checks every step which parameters took part (a stage that freezes layers part-way through,
    ``late_epochs``); it costs a walk of the autograd graph per step, so only such stages ask.
    """
    dist.validate()
    if dist.world_size == 1 and device is not None:
        if device.type == "cuda":
            return {"accelerator": "gpu", "devices": [device.index] if device.index is not None else 1,
                    "num_nodes": 1, "strategy": "auto"}
        return {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto"}
    kwargs: dict[str, Any] = {
        "accelerator": dist.resolved_accelerator(),
        "devices": dist.devices,
        "num_nodes": dist.num_nodes,
        "strategy": dist.resolved_strategy(),
    }
    cpu = kwargs["accelerator"] == "cpu"
    find_unused_parameters = find_unused_parameters or kwargs["strategy"] == "ddp_find_unused_parameters_true"
    if kwargs["strategy"].startswith("ddp") and (cpu or find_unused_parameters):
        from lightning.pytorch.strategies import DDPStrategy

        kwargs["strategy"] = DDPStrategy(
            # CPU processes talk over gloo; Lightning's default for CPU DDP, made explicit so a
            # CUDA build on a machine without GPUs never tries NCCL.
            **({"process_group_backend": "gloo"} if cpu else {}),
            start_method="spawn" if kwargs["strategy"] == "ddp_spawn" else "popen",
            find_unused_parameters=find_unused_parameters,
        )
    return kwargs


@contextlib.contextmanager
def quiet_lightning(*messages: str) -> Iterator[None]:
    """For the duration: Lightning's banners and tips at WARNING, LitData's notices at ERROR, and
    Lightning's worker-count advice plus the warnings matching ``messages`` (regexes) ignored.

    Training and scoring each pass the advice that does not apply to them.
    """
    quiet = {"lightning.pytorch": logging.WARNING, "lightning.fabric": logging.WARNING, "lightning": logging.WARNING,
             "litdata": logging.ERROR}
    loggers = [logging.getLogger(n) for n in quiet]
    levels = [lg.level for lg in loggers]
    for lg, lvl in zip(loggers, quiet.values()):
        lg.setLevel(lvl)
    try:
        with warnings.catch_warnings():
            # Images are decoded in memory or streamed in the loop: more loader workers would not help.
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            for message in messages:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


@contextlib.contextmanager
def process_group_scope() -> Iterator[None]:
    """Ends, on leaving the block, a process group that Lightning started inside it.

    Lightning joins the process group when a Trainer first runs and never leaves it. A process
    that then exits with its gloo group still alive can abort at interpreter shutdown (SIGABRT,
    "terminate called without an active exception"), so a two-node torchrun job whose work
    succeeded could still fail. On success every rank first waits for the others (so when a
    rank returns, rank 0's files are written too), then leaves; after an error it leaves at
    once, since a peer may be gone. A group the caller had already started is left alone.
    """
    import torch.distributed as td

    owned = td.is_available() and not td.is_initialized()
    ok = False
    try:
        yield
        ok = True
    finally:
        if owned and td.is_initialized():
            if ok:
                td.barrier()
            td.destroy_process_group()
