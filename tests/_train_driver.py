"""Runs ``pneumoscope.training.train`` in its own process, recording what every rank sees.

Used by test_store.py and test_distributed.py as ``python _train_driver.py SPEC.json``: Lightning's
DDP launcher (and torchrun) start this same script once per process, and each process writes
``RECORD/rank<R>.jsonl`` with one line per training batch (epoch, global step, sample ids), per
validation (metrics) and at the end of each fit (epoch reached, stop decision). ``kill_at_step``
sends SIGKILL to the process after that many optimiser steps, like a node lost mid-epoch.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import lightning as L


class Recorder(L.Callback):
    def __init__(self, folder: str, kill_at_step: int = 0) -> None:
        self.folder = Path(folder)
        self.kill_at_step = kill_at_step
        self.rank = 0

    def _write(self, trainer: L.Trainer, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**record, "pid": os.getpid()}) + "\n")
            fh.flush()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._write(trainer, {"kind": "batch", "epoch": trainer.current_epoch, "step": trainer.global_step,
                              "ids": [int(i) for i in batch[2]]})
        if self.kill_at_step and trainer.global_step >= self.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = {k: float(trainer.callback_metrics[k]) for k in ("val_loss", "val_acc", "val_auc")}
        self._write(trainer, {"kind": "val", "epoch": trainer.current_epoch, **metrics,
                              "n_val": int(len(pl_module.val_ids))})

    def on_fit_end(self, trainer, pl_module) -> None:
        self.rank = trainer.global_rank
        self._write(trainer, {"kind": "end", "epoch": trainer.current_epoch, "should_stop": bool(trainer.should_stop),
                              "world_size": trainer.world_size})


def main(spec_path: str) -> None:
    from pneumoscope.config import load_config
    from pneumoscope.training import train

    import torch.distributed as td

    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(None, spec["overrides"])
    recorder = Recorder(spec["record"], spec.get("kill_at_step", 0))
    train(cfg, spec["data"], spec["out"], resume=spec.get("resume", False), progress=False, callbacks=[recorder])
    # A process group still alive at exit can abort the process at shutdown (SIGABRT).
    with open(Path(spec["record"]) / f"rank{recorder.rank}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"kind": "exit", "group_alive": td.is_available() and td.is_initialized(),
                             "summary_written": (Path(spec["out"]) / "summary.json").is_file()}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
