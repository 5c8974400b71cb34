"""Scoring throughput: ``predict`` and ``predict --explain`` images/s on 1 and 2 processes.

Synthesises an archive of phantom chest radiographs (``--n`` files; ``--unique`` distinct
phantoms drawn with pneumoscope's synthesiser, written under distinct names), saves an
untrained checkpoint of ``--backbone`` (throughput does not depend on the weights), then runs
the real CLI as a subprocess for each mode and process count:

    python -m pneumoscope predict ARCHIVE --checkpoint CKPT --out preds.csv [--explain DIR] \\
        --devices K --accelerator cpu --batch-size B --workers W --precision P --no-progress

Each figure is printed with the command's flags and the CPU (or GPU) beside it:
- ``end-to-end``: inputs / wall time of the whole command (interpreter, imports, checkpoint,
  DDP launch, merge included);
- ``loop``: what the command itself reports on stderr (``scored N of N inputs in T s``): the
  prediction loop from rank 0's first batch until every rank has written its last part file,
  i.e. decoding, the model, Grad-CAM, overlays and part files, without the start-up and merge.

    python bench/scale_predict.py                            # CPU, 2,000 files of 512 px, resnet18 at 128 px
    python bench/scale_predict.py --n 20000 --accelerator gpu --backbone vgg19 --image-size 256 \\
        --processes 1 --batch-size 256 --workers 8 --precision bf16 --explain-n 20000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))


def cpu_name() -> str:
    from pneumoscope.runtime import cpu_summary

    return cpu_summary()


def hardware(accelerator: str) -> str:
    import torch

    from pneumoscope.runtime import cpu_has_fast_bf16

    cpu = f"{cpu_name()}; bf16 {'native' if cpu_has_fast_bf16() else 'emulated'}"
    if accelerator != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}; host {cpu}"
    return cpu


def make_archive(root: Path, n: int, size: int, unique: int, fmt: str, seed: int = 0) -> list[Path]:
    """``n`` phantom files (``unique`` distinct images cycled under distinct names)."""
    from PIL import Image

    from pneumoscope.data.synth import make_phantom

    rng = np.random.default_rng(seed)
    draw = min(size, 256)  # drawn at up to 256 px, then scaled: the synthesiser is slow at large sizes
    images = [np.asarray(Image.fromarray(make_phantom(rng, size=draw, label=int(i % 2)).image).resize((size, size), Image.BILINEAR))
              for i in range(min(unique, n))]
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"{i // 1000:04d}" / f"phantom-{i:07d}.{fmt}"
        p.parent.mkdir(exist_ok=True)
        img = Image.fromarray(images[i % len(images)])
        if fmt == "jpg":
            img.save(p, quality=90)
        else:
            img.save(p, compress_level=1)  # fast to write; decoding costs about the same
        paths.append(p)
    return paths


def make_checkpoint(path: Path, backbone: str, image_size: int) -> Path:
    from pneumoscope.checkpoint import save_checkpoint
    from pneumoscope.data.transforms import Preprocessing
    from pneumoscope.models import create_model, get_model_info

    model = create_model(backbone, weights=None)
    return save_checkpoint(path, model, architecture=backbone, preprocessing=Preprocessing(image_size=image_size),
                           target_layer=get_model_info(backbone).default_layer)


def run(args: argparse.Namespace, inputs: Path, ckpt: Path, work: Path, processes: int, explain: bool) -> tuple[float, float, list[str]]:
    """Run the CLI once; returns (wall seconds, loop images/s as the CLI reported it, flags)."""
    out = work / f"preds-{processes}{'-x' if explain else ''}.csv"
    cams = work / f"cams-{processes}"
    out.unlink(missing_ok=True)
    shutil.rmtree(cams, ignore_errors=True)
    flags = ["--devices", str(processes), "--accelerator", args.accelerator, "--batch-size", str(args.batch_size),
             "--workers", str(args.workers), "--precision", args.precision, "--no-progress"]
    cmd = [sys.executable, "-m", "pneumoscope", "predict", str(inputs), "--checkpoint", str(ckpt), "--out", str(out),
           *(["--explain", str(cams)] if explain else []), *flags]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
               MASTER_ADDR="127.0.0.1")
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        flags = [*flags, f"(OMP_NUM_THREADS={args.threads})"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    with open(out, encoding="utf-8") as fh:
        rows = sum(1 for _ in fh) - 1
    assert rows == sum(1 for p in inputs.rglob("*") if p.is_file()), (rows, inputs)
    m = re.search(r"scored \d+ of \d+ inputs in [\d.]+ s \(([\d.]+) img/s\)", proc.stderr)
    if m is None:
        sys.exit(f"no 'scored ... img/s' line in the output of {' '.join(cmd)}:\n{proc.stderr[-2000:]}")
    return seconds, float(m.group(1)), flags


def subset(src: Path, dst: Path, n: int) -> Path:
    """The first ``n`` files of ``src`` as links in ``dst`` (same order, same bytes)."""
    shutil.rmtree(dst, ignore_errors=True)
    files = sorted(p for p in src.rglob("*") if p.is_file())[:n]
    for p in files:
        q = dst / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        os.link(p, q)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="files in the archive")
    ap.add_argument("--explain-n", type=int, default=600, help="files explained (explanations are slower on a CPU)")
    ap.add_argument("--size", type=int, default=512, help="side of the phantom files in pixels")
    ap.add_argument("--unique", type=int, default=64, help="distinct phantoms drawn")
    ap.add_argument("--format", choices=("png", "jpg"), default="png")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--processes", default="1,2", help="comma-separated process counts")
    ap.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu", "auto"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=0,
                    help="OMP_NUM_THREADS of every process (default: unset, so torch uses every core with one "
                         "process and Lightning gives each of K processes cores/K)")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="pneumoscope-scale-predict-"))
    try:
        t0 = time.perf_counter()
        make_archive(work / "archive", args.n, args.size, args.unique, args.format)
        print(f"archive: {args.n} phantom {args.format.upper()} files of {args.size} px in {time.perf_counter() - t0:.1f} s",
              flush=True)
        ckpt = make_checkpoint(work / "model.ckpt", args.backbone, args.image_size)
        hw = hardware(args.accelerator)
        print(f"model: {args.backbone} (untrained) at {args.image_size} px; hardware: {hw}", flush=True)
        figures = []
        for explain in (False, True):
            n = args.explain_n if explain else args.n
            full = subset(work / "archive", work / f"in-{n}", n) if n < args.n else work / "archive"
            for k in (int(x) for x in args.processes.split(",")):
                t_full, loop, flags = run(args, full, ckpt, work, k, explain)
                fig = {"mode": "predict --explain" if explain else "predict", "processes": k, "n": n,
                       "end_to_end_img_s": n / t_full, "loop_img_s": loop, "seconds": t_full,
                       "flags": " ".join(flags), "backbone": args.backbone, "image_size": args.image_size,
                       "file_size": args.size, "hardware": hw}
                figures.append(fig)
                print(f"{fig['mode']:18s} {k} proc  n={n:6d}  end-to-end {fig['end_to_end_img_s']:8.1f} img/s "
                      f"({t_full:6.1f} s)  loop {loop:8.1f} img/s   [{fig['flags']}; {args.backbone} "
                      f"{args.image_size} px; {args.size} px {args.format}; {hw}]", flush=True)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
