"""Explanation throughput: pneumoscope's methods vs forward-only and vs pytorch-grad-cam.

One run, one device: VGG19 (random weights, the registered model with the seed head) at
256 px, explaining its default layer (block5_conv3) for the PNEUMONIA logit. Reports
images/s for the forward pass alone, each of our methods, all five gradient methods from
one shared pass, and pytorch-grad-cam's counterparts (always fp32, used the documented way),
with the ratios the issue sets goals for. pytorch-grad-cam has no bf16 path (its maths go
through NumPy, which has no bf16; under autocast it raises), so the ratios are printed like
with like (ours fp32 against its fp32) and, separately, ours bf16 against its fp32. Needs ``pip install grad-cam`` (the test extra).

    python bench/cam_speed.py                          # CPU: batch 8; fp32, plus bf16 where the CPU has AMX/AVX512-BF16
    python bench/cam_speed.py --device cuda            # GPU: batch 64, fp32 and bf16

Every figure is the median over ``--iters`` timed calls (10 by default) after ``--warmup``
untimed ones (1), so one slow call (a first-call allocation, another process taking the CPU)
does not decide it; the min-max spread of the calls is printed beside it. Score-CAM and
occlusion take seconds per call on a CPU and get ``--perturb-iters`` calls (3 on a CPU).
The header names the CPU and its AVX2 / AVX-512 / AVX512-BF16 / AMX flags.

Ours runs the way pneumoscope runs a model (channels-last memory format, as Predictor and
training use it on CPU and CUDA; ``--no-channels-last`` to compare). pytorch-grad-cam is
timed on the same model as given (contiguous, its documented use) and, when ours is
channels-last, on the channels-last model too; ratios are against its faster run. All scores
are the raw class logit (``score="logit"``), what pytorch-grad-cam's ``ClassifierOutputTarget``
explains. That the maps agree is asserted by tests/test_cam_methods.py on a model whose maps
are not flat; random VGG19 weights here give near-flat maps whose normalisation magnifies
rounding, so this file measures speed only.

Score-CAM runs one forward pass per channel (512 here) per image, so on a CPU it is timed on
fewer, smaller images (``--scorecam-images``, ``--scorecam-size``); both libraries get the same.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import pneumoscope
from pneumoscope.explanation.cam import GRADIENT_METHODS, explain, explain_many
from pneumoscope.runtime import autocast, cpu_has_fast_bf16, resolve_device

PGC_NAMES = {
    "gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM", "layercam": "LayerCAM", "scorecam": "ScoreCAM",
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, n_images: int, warmup: int, iters: int) -> tuple[float, str]:
    """Images per second of the median of ``iters`` timed calls after ``warmup`` untimed ones.

    Returns the rate and a note with the spread (the rates of the slowest and fastest call).
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    seconds = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    spread = f"[median of {len(seconds)}; {_rate(n_images / max(seconds))}-{_rate(n_images / min(seconds))}]"
    return n_images / statistics.median(seconds), spread


def _rate(ips: float) -> str:
    """Three significant digits for slow runs (0.0213), two decimals otherwise."""
    return f"{ips:.2f}" if ips >= 1 else f"{ips:.3g}"


def cpu_description() -> str:
    """The CPU model and the instruction-set flags that decide its fp32/bf16 speed."""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name") and model in ("", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, flags: {' '.join(shown) or 'n/a'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 64 on GPU")
    ap.add_argument("--precision", default=None,
                    help="comma list of fp32,bf16 for our side; default fp32,bf16 (fp32 alone on a CPU without fast bf16)")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="run our side channels-last, as pneumoscope does (default: on)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    ap.add_argument("--iters", type=int, default=10, help="timed calls; the median is reported (default 10)")
    ap.add_argument("--perturb-iters", type=int, default=None,
                    help="timed calls of Score-CAM and occlusion; default 3 on CPU, --iters/5 (at least 2) on GPU")
    ap.add_argument("--scorecam-images", type=int, default=None, help="default: 1 on CPU, 8 on GPU")
    ap.add_argument("--scorecam-size", type=int, default=None, help="default: 64 on CPU, --size on GPU")
    ap.add_argument("--no-reference", action="store_true", help="skip pytorch-grad-cam")
    ap.add_argument("--skip", default="", help="comma list of our methods to skip, e.g. occlusion")
    args = ap.parse_args()

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (64 if gpu else 8)
    iters = args.iters
    perturb_iters = args.perturb_iters or (max(2, iters // 5) if gpu else 3)
    precisions = (args.precision or ("fp32,bf16" if gpu or cpu_has_fast_bf16() else "fp32")).split(",")
    channels_last = args.channels_last
    sc_images = args.scorecam_images or (8 if gpu else 1)
    sc_size = args.scorecam_size or (args.size if gpu else 64)
    skip = {s for s in args.skip.split(",") if s}

    torch.manual_seed(0)
    model = pneumoscope.create_model("vgg19").to(device).eval()
    layer = "block5_conv3"
    x = torch.randn(batch, 3, args.size, args.size, device=device)
    xs = torch.randn(sc_images, 3, sc_size, sc_size, device=device)
    target = 1
    hw = torch.cuda.get_device_name(device) if gpu else cpu_description()
    print(f"# cam_speed: VGG19 (random weights) {args.size} px, batch {batch}, layer {layer}, device {device} ({hw})")
    print(f"# torch {torch.__version__}; warmup {args.warmup}, median of {iters} timed calls "
          f"({perturb_iters} for Score-CAM/occlusion); Score-CAM on {sc_images} image(s) at {sc_size} px")
    rows: list[tuple[str, float, str]] = []

    def report(name: str, timing: tuple[float, str], note: str = "") -> float:
        ips, spread = timing
        rows.append((name, ips, note))
        print(f"{name:34s} {_rate(ips):>9s} img/s {spread} {note}", flush=True)
        return ips

    ours: dict[tuple[str, str], float] = {}
    fwd: dict[str, float] = {}
    for prec in precisions:
        cl = channels_last
        m = model.to(memory_format=torch.channels_last) if cl else model.to(memory_format=torch.contiguous_format)
        xi = x.to(memory_format=torch.channels_last) if cl else x
        xsi = xs.to(memory_format=torch.channels_last) if cl else xs
        tag = f"{prec}{' channels-last' if cl else ''}"

        def forward(m: torch.nn.Module = m, xi: torch.Tensor = xi, prec: str = prec) -> object:
            with torch.inference_mode(), autocast(device, prec):
                return m(xi)

        fwd[prec] = report(f"forward only [{tag}]", timed(forward, device, batch, args.warmup, iters))
        for name in GRADIENT_METHODS:
            if name in skip:
                continue
            t = timed(lambda name=name, m=m, xi=xi, prec=prec: explain(m, xi, name, layer, target, score="logit",
                                                                        precision=prec),
                      device, batch, args.warmup, iters)
            ours[(name, prec)] = report(f"ours {name} [{tag}]", t, f"{t[0] / fwd[prec]:.2f}x forward")
        t = timed(lambda m=m, xi=xi, prec=prec: explain_many(m, xi, list(GRADIENT_METHODS), layer, target, score="logit",
                                                             precision=prec),
                  device, batch, args.warmup, iters)
        report(f"ours all 5 gradient methods [{tag}]", t, f"one shared pass, {t[0] / fwd[prec]:.2f}x forward")
        if "scorecam" not in skip:
            t = timed(lambda m=m, xsi=xsi, prec=prec: explain(m, xsi, "scorecam", layer, target, score="logit", precision=prec,
                                                               batch_size=64),
                      device, sc_images, args.warmup, perturb_iters)
            ours[("scorecam", prec)] = report(f"ours scorecam [{tag}]", t, f"{sc_size} px")
        if "occlusion" not in skip:
            t = timed(lambda m=m, xsi=xsi, prec=prec: explain(m, xsi, "occlusion", layer, target, score="logit", precision=prec,
                                                               batch_size=64),
                      device, sc_images, args.warmup, perturb_iters)
            ours[("occlusion", prec)] = report(f"ours occlusion [{tag}]", t, f"{sc_size} px, patch 1/8, stride 1/16")
    model = model.to(memory_format=torch.contiguous_format)

    if not args.no_reference:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        print("# pytorch-grad-cam " + getattr(pgc, "__version__", "(version n/a)") + ", fp32, its own backward and NumPy maths")
        formats = [("", torch.contiguous_format)] + ([(" on channels-last", torch.channels_last)] if channels_last else [])
        for name, cls_name in PGC_NAMES.items():
            if name in skip:
                continue
            sc = name == "scorecam"
            xin, n = (xs, sc_images) if sc else (x, batch)
            best = 0.0
            for label, fmt in formats:
                m = model.to(memory_format=fmt)
                xf = xin.contiguous(memory_format=fmt)
                cam = getattr(pgc, cls_name)(model=m, target_layers=[pneumoscope.resolve_layer(m, layer)])
                if sc:
                    cam.batch_size = 64
                with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # its Score-CAM's tqdm bars
                    def run(cam=cam, xf=xf, n=n):
                        return cam(input_tensor=xf, targets=[ClassifierOutputTarget(target)] * n)
                    t = timed(run, device, n, args.warmup, perturb_iters if sc else iters)
                cam.activations_and_grads.release()
                best = max(best, t[0])
                report(f"pytorch-grad-cam {cls_name}{label}", t)
            ratios = ", ".join(
                f"ours {p} {ours[(name, p)] / best:.1f}x" + (" (like with like)" if p == "fp32" else " (ours bf16 vs its fp32)")
                for p in precisions if (name, p) in ours)
            print(f"{'':34s} vs its best fp32 {_rate(best)} img/s: {ratios}", flush=True)
        torch.set_grad_enabled(True)


if __name__ == "__main__":
    main()
