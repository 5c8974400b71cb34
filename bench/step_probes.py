"""Micro-benchmarks of one training step, behind the "not kept" rows of the speed levers.

    python bench/step_probes.py demo-step [--emulate-avx2] [--profile]   # vgg_mini, batch 8, 128 px: layouts, stride-2 stem, pool before BN
    python bench/step_probes.py compile [--emulate-avx2]      # ResNet-18, batch 32, 96 px: eager vs torch.compile
    python bench/step_probes.py log-overhead                  # Lightning's per-step cost of two self.log calls
    python bench/step_probes.py optimizer [--emulate-avx2] [--bf16]   # both models' steps: Adam(W) for-loop vs fused
    python bench/step_probes.py grey-stem [--emulate-avx2]    # ResNet-18 (batch 32, 96 px) and vgg_mini: 3- vs 1-channel input
    python bench/step_probes.py frozen-prefix [--emulate-avx2] [--bf16]   # both models' steps with their first layers frozen

Each variant runs in this one process, interleaved round by round (12 rounds of 15 steps for
``demo-step``), and the median and minimum milliseconds per step are printed with the CPU and
its flags: on a shared VM the median of interleaved rounds is steadier than separate runs.
``OMP_NUM_THREADS`` sets the threads (the default is every core). ``--emulate-avx2`` re-executes
with oneDNN, ATen and MKL capped at AVX2 (fp32 throughout). These are measurements for
docs/benchmarks/demo-speed.md and accuracy.md, not tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _interleaved(steps: dict[str, Callable[[], None]], rounds: int, per_round: int, warmup: int = 10) -> None:
    import torch

    from pneumoscope.runtime import cpu_summary

    print(f"{cpu_summary()}; {torch.get_num_threads()} threads; "
          f"oneDNN cap: {os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}")
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - t) / per_round * 1000)
    for name, ms in times.items():
        print(f"{name:34s} median {statistics.median(ms):7.2f} ms/step   min {min(ms):7.2f}")


def _step(
    model, x, y, lr: float = 1e-3, optimizer: str = "adam", fused: bool | None = None, bf16: bool = False
) -> Callable[[], None]:
    import torch

    opt = (torch.optim.AdamW(model.parameters(), lr, weight_decay=1e-4, fused=fused) if optimizer == "adamw"
           else torch.optim.Adam(model.parameters(), lr, fused=fused))
    return _step_with(model, opt, x, y, bf16)


def _step_with(model, opt, x, y, bf16: bool = False) -> Callable[[], None]:
    import contextlib

    import torch
    import torch.nn.functional as F

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()

    return step


def demo_step(args: argparse.Namespace) -> None:
    """The demo model's training step (batch 8, 128 px) in the layouts that were measured."""
    import torch
    from torch import nn

    from pneumoscope.models import create_model

    cl = torch.channels_last

    def build(kind: str):
        torch.manual_seed(0)
        model = create_model("vgg_mini", weights=None)
        if kind == "stride-2 stem, channels-last":
            # The experiment: conv(3->8, stride 2) + BN + ReLU in place of conv + BN + ReLU + max-pool.
            layers = list(model.features)
            layers[0] = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            model.features = nn.Sequential(*(layers[:3] + layers[4:]))
        if kind == "pool before BN, channels-last":
            # The experiment: conv -> max-pool -> BN -> ReLU in the first block (BN and ReLU on a
            # quarter of the pixels), in place of conv -> BN -> ReLU -> max-pool.
            layers = list(model.features)
            model.features = nn.Sequential(*([layers[0], layers[3], layers[1], layers[2]] + layers[4:]))
        x = torch.randn(8, 3, 128, 128)
        y = torch.randint(0, 2, (8,))
        if kind != "contiguous":
            model = model.to(memory_format=cl)
        if kind.endswith("channels-last") or kind == "channels-last (shipped)":
            x = x.contiguous(memory_format=cl)
        if kind == "first block contiguous":
            model.features[0].weight.data = model.features[0].weight.data.contiguous()
            model.features[4].register_forward_pre_hook(lambda m, a: (a[0].contiguous(memory_format=cl),))
        return _step(model, x, y)

    kinds = ("channels-last (shipped)", "contiguous", "first block contiguous", "stride-2 stem, channels-last",
             "pool before BN, channels-last")
    steps = {k: build(k) for k in kinds}
    _interleaved(steps, rounds=12, per_round=15)
    if args.profile:
        from torch.profiler import profile

        with profile(record_shapes=True) as prof:
            for _ in range(30):
                steps["channels-last (shipped)"]()
        print("the shipped layout, 30 steps, by operator and input shape:")
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=12))


def compile_step(args: argparse.Namespace) -> None:
    """ResNet-18's training step as offline.yaml's first stage runs it, eager and compiled."""
    import torch

    from pneumoscope.models import create_model

    def build(compiled: bool):
        torch.manual_seed(0)
        model = create_model("resnet18", weights=None).to(memory_format=torch.channels_last)
        x = torch.randn(32, 3, 96, 96).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (32,))
        step = _step(torch.compile(model) if compiled else model, x, y, optimizer="adamw")
        t = time.perf_counter()
        step()
        print(f"{'compiled' if compiled else 'eager'}: first step {time.perf_counter() - t:.1f} s")
        return step

    _interleaved({"eager": build(False), "torch.compile (Inductor)": build(True)}, rounds=6, per_round=5, warmup=3)


def optimizer_step(args: argparse.Namespace) -> None:
    """Both training steps with torch's default Adam/AdamW on the CPU (a loop over the
    parameters) against ``fused=True`` (one kernel for all of them): the demo's ``vgg_mini``
    (Adam, batch 8, 128 px) and offline.yaml's ResNet-18 (AdamW, batch 32, 96 px)."""
    import torch

    from pneumoscope.models import create_model

    def build(arch: str, size: int, batch: int, optimizer: str, fused: bool | None):
        torch.manual_seed(0)
        model = create_model(arch, weights=None).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
        return _step(model, x, torch.randint(0, 2, (batch,)), optimizer=optimizer, fused=fused, bf16=args.bf16)

    print("bf16 autocast" if args.bf16 else "fp32")
    _interleaved({"vgg_mini, Adam (default)": build("vgg_mini", 128, 8, "adam", None),
                  "vgg_mini, Adam fused": build("vgg_mini", 128, 8, "adam", True)}, rounds=8, per_round=15)
    _interleaved({"resnet18, AdamW (default)": build("resnet18", 96, 32, "adamw", None),
                  "resnet18, AdamW fused": build("resnet18", 96, 32, "adamw", True)}, rounds=8, per_round=3, warmup=3)


def grey_stem(args: argparse.Namespace) -> None:
    """ResNet-18's training step (AdamW, batch 32, 96 px) with the three identical grey channels
    the models take today, against a stem convolution that takes one channel. The stem alone
    (convolution, BatchNorm, ReLU, max-pool, forward and backward) is timed too, and then the
    demo's ``vgg_mini`` step (Adam, batch 8, 128 px) both ways."""
    import torch
    from torch import nn

    from pneumoscope.models import create_model

    cl = torch.channels_last

    def build(channels: int, stem_only: bool):
        torch.manual_seed(0)
        model = create_model("resnet18", weights=None)
        if channels == 1:
            model.features[0] = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        model = model.to(memory_format=cl)
        x = torch.randn(32, channels, 96, 96).contiguous(memory_format=cl)
        if not stem_only:
            return _step(model, x, torch.randint(0, 2, (32,)), optimizer="adamw")
        stem = model.features[:4]

        def step() -> None:
            stem.zero_grad(set_to_none=True)
            stem(x).mean().backward()

        return step

    _interleaved({"stem alone, 3 channels": build(3, True), "stem alone, 1 channel": build(1, True)},
                 rounds=8, per_round=5, warmup=3)
    _interleaved({"whole step, 3 channels (today)": build(3, False),
                  "whole step, 1 channel": build(1, False)}, rounds=8, per_round=3, warmup=3)

    def build_demo(channels: int):
        torch.manual_seed(0)
        model = create_model("vgg_mini", weights=None)
        if channels == 1:
            first = model.features[0]
            model.features[0] = nn.Conv2d(1, first.out_channels, first.kernel_size, padding=first.padding)
        model = model.to(memory_format=cl)
        x = torch.randn(8, channels, 128, 128).contiguous(memory_format=cl)
        return _step(model, x, torch.randint(0, 2, (8,)))

    _interleaved({"vgg_mini step, 3 channels (today)": build_demo(3), "vgg_mini step, 1 channel": build_demo(1)},
                 rounds=12, per_round=15)


def frozen_prefix(args: argparse.Namespace) -> None:
    """Both models' training steps with the layers before ``trainable_from`` frozen (no backward
    through them; BatchNorm statistics still adapt): offline.yaml's ResNet-18 (AdamW, batch 32,
    96 px) and the demo's vgg_mini (Adam, batch 8, 128 px), channels-last as training runs them."""
    import torch

    from pneumoscope.models import create_model

    cl = torch.channels_last

    def build(arch: str, trainable: str, size: int, batch: int, optimizer: str):
        torch.manual_seed(0)
        model = create_model(arch, weights=None).to(memory_format=cl)
        model.set_trainable(trainable)
        model.train()
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=cl)
        y = torch.randint(0, 2, (batch,))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = (torch.optim.AdamW(params, 1e-3, weight_decay=1e-4) if optimizer == "adamw"
               else torch.optim.Adam(params, 1e-3))
        return _step_with(model, opt, x, y, args.bf16)

    steps = {f"resnet18 96 px from {t}": build("resnet18", t, 96, 32, "adamw")
             for t in ("all", "layer1", "layer2", "layer3")}
    steps.update({f"vgg_mini 128 px from {t}": build("vgg_mini", t, 128, 8, "adam")
                  for t in ("all", "block2_conv1", "block3_conv1")})
    _interleaved(steps, rounds=6, per_round=6, warmup=3)


def log_overhead(args: argparse.Namespace) -> None:
    """What Lightning adds per step, and what two ``self.log(on_epoch=True)`` calls add to that."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Trivial(L.LightningModule):
        def __init__(self, log: bool) -> None:
            super().__init__()
            self.w = torch.nn.Linear(4, 2)
            self.do_log = log

        def training_step(self, batch, _idx):
            loss = self.w(batch[0]).sum() * 0
            if self.do_log:
                self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=8)
                self.log("train_acc", loss, on_step=False, on_epoch=True, batch_size=8)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), 0.0)

    steps = 1000
    loader = DataLoader(TensorDataset(torch.randn(8 * steps, 4)), batch_size=8)
    for log in (False, True, False, True):
        trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, num_sanity_val_steps=0)
        t = time.perf_counter()
        trainer.fit(Trivial(log), loader)
        print(f"{'with' if log else 'without'} two self.log calls: {(time.perf_counter() - t) / steps * 1000:.3f} ms/step")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="probe", required=True)
    for name, fn in (("demo-step", demo_step), ("compile", compile_step), ("log-overhead", log_overhead),
                     ("optimizer", optimizer_step), ("grey-stem", grey_stem),
                     ("frozen-prefix", frozen_prefix)):
        p = sub.add_parser(name)
        p.add_argument("--emulate-avx2", action="store_true", help="cap oneDNN/ATen/MKL at AVX2 (re-executes)")
        p.add_argument("--profile", action="store_true", help="demo-step: torch.profiler table of the shipped layout")
        p.add_argument("--bf16", action="store_true", help="optimizer, frozen-prefix: the forward pass under bf16 autocast")
        p.set_defaults(fn=fn)
    args = ap.parse_args(argv)
    if args.emulate_avx2 and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":
        from pneumoscope.runtime import AVX2_ONLY_ENV

        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ONLY_ENV})
    args.fn(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
