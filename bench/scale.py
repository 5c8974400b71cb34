"""Archive-scale benchmark: prepare a store, train from it, memory per process, DDP 1 vs 2.

Synthesises archives of phantom chest X-rays (full-resolution JPEGs, plus a DICOM set), then
reports, each figure beside the command that produced it and the CPU it ran on:

- ``prepare`` images/s for full-resolution JPEG (draft-mode decode, and without it) and DICOM;
- training images/s streamed from the store against the in-memory cache on the same data
  (goal: store >= 0.9x in-memory);
- peak RSS of a training process at the smallest and the largest archive, store against
  in-memory (goal: store flat, within +10 %);
- streamed training on 1 against 2 DDP processes (CPU, gloo).

    python bench/scale.py --sizes 10000,100000          # the issue's sizes (disk: ~60 kB per image)
    python bench/scale.py --sizes 2000,8000 --side 512  # a few minutes on a 2-core CPU

Every training run is ``pneumoscope train`` in its own process (vgg_tiny, ``--weights none``),
timed from its ``metrics.csv`` (the fastest epoch's seconds, validation included) so start-up
and decoding are not counted; peak RSS is the process's ``ru_maxrss`` (largest rank for DDP), which counts the store's
mapped chunk pages too, and peak anonymous RSS (``RssAnon``, sampled every 0.2 s over the
process tree) is the memory the process owns: the flatness goal is judged on it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cpu_line() -> str:
    """CPU model, cores and the SIMD flags that decide bf16/fp32 speed."""
    from pneumoscope.runtime import cpu_summary

    return cpu_summary()


# ----------------------------------------------------------------------------- archives


def _pool(k: int, side: int) -> list[tuple[np.ndarray, int]]:
    from pneumoscope.data.synth import make_phantom

    rng = np.random.default_rng(0)
    return [(make_phantom(rng, size=side, label=i % 2, difficulty=0.3).image, i % 2) for i in range(k)]


def make_jpeg_archive(folder: Path, n: int, side: int, pool: list[tuple[np.ndarray, int]]) -> float:
    """``folder/train/{NORMAL,PNEUMONIA}/`` with ``n`` distinct full-resolution JPEGs; returns seconds."""
    from PIL import Image

    t0 = time.perf_counter()
    for c in ("NORMAL", "PNEUMONIA"):
        (folder / "train" / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, label = pool[i % len(pool)]
        # A shift per file makes every file (and every patient) distinct, as in a real archive.
        img = np.roll(img, (i // len(pool)) % img.shape[1], axis=1)
        name = f"person{i}_bacteria_{i}.jpeg" if label else f"IM-{i:06d}-0001.jpeg"
        Image.fromarray(img, mode="L").save(folder / "train" / ("PNEUMONIA" if label else "NORMAL") / name, quality=90)
    return time.perf_counter() - t0


def make_dicom_archive(folder: Path, n: int, side: int, pool: list[tuple[np.ndarray, int]]) -> None:
    """``n`` 16-bit MONOCHROME2 DICOM files (uncompressed) in the Kaggle layout."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    for c in ("NORMAL", "PNEUMONIA"):
        (folder / "train" / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, label = pool[i % len(pool)]
        px = (np.roll(img, i // len(pool), axis=1).astype(np.uint16) * 16)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "DX", f"P{i}"
        ds.Rows, ds.Columns = px.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = px.tobytes()
        name = f"person{i}_virus_{i}.dcm" if label else f"IM-{i:06d}-0002.dcm"
        ds.save_as(folder / "train" / ("PNEUMONIA" if label else "NORMAL") / name, enforce_file_format=True)


# ----------------------------------------------------------------------------- measurements


def _anon_mb(pid: int) -> float:
    """Anonymous resident memory (``RssAnon``) of ``pid`` and its descendants, in MB.

    ``ru_maxrss`` also counts file pages mapped into the process: LitData maps the store's
    chunks in place, so every chunk page an epoch touched shows up in it although it is page
    cache that the kernel reclaims, shared and not owned. ``RssAnon`` is what the process owns.
    """
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float]:
    """Run ``cmd``; (seconds, peak ``ru_maxrss`` in MB, peak anonymous RSS in MB of the process tree)."""
    import tempfile
    import threading

    t0 = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(cmd, env=env or _env(), stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak_anon, done = [0.0], threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak_anon[0] = max(peak_anon[0], _anon_mb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        # wait4: this child's own rusage (its ru_maxrss covers the processes it waited for).
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.read()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, peak_anon[0]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def pneumoscope(*args: object) -> list[str]:
    return [sys.executable, "-m", "pneumoscope", *[str(a) for a in args]]


def prepare(data: Path, store: Path, size: int, workers: int, draft: bool = True) -> dict:
    cmd = pneumoscope("prepare", data, "--out", store, "--image-size", size, "--workers", workers, "--no-progress",
                      *([] if draft else ["--no-jpeg-draft"]))
    seconds, _, _ = run_measured(cmd)
    index = json.loads((store / "pneumoscope_store.json").read_text())
    n = index["inputs"]
    return {"cmd": " ".join(cmd[1:]), "images": n, "seconds": round(seconds, 1),
            "images_per_s": round(n / seconds, 1), "images_per_s_inside": index["images_per_second"]}


def train(data: Path, out: Path, size: int, batch: int, epochs: int, devices: int = 1) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = pneumoscope(
        "train", "--data", data, "--out", out, "--backbone", "vgg_tiny", "--weights", "none", "--image-size", size,
        "--batch-size", batch, "--precision", "fp32", "--accelerator", "cpu", "--devices", devices, "--no-progress",
        "--set", f"train.stages=[{{name: s1, epochs: {epochs}, lr: 0.001}}]", "--set", "calibration.temperature=false",
    )
    seconds, peak, anon = run_measured(cmd)
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # The fastest epoch: on a shared machine the others are slowed by whatever else runs.
    best = min(rows, key=lambda r: float(r["seconds"]) / max(1, int(r["samples"])))
    n = int(best["samples"])
    return {"cmd": " ".join(cmd[1:]), "seconds_total": round(seconds, 1), "epoch_seconds": float(best["seconds"]),
            "images_per_s": round(n / float(best["seconds"]), 1), "samples": n, "peak_rss_mb": round(peak),
            "peak_anon_mb": round(anon)}


def loader_throughput(store: Path, batch: int) -> dict:
    """Images/s of the loaders alone (no model): the store's stream against an in-memory tensor.

    What the seam itself costs, free of the model's share of the CPU.
    """
    import torch

    from pneumoscope.data.source import StoreSource
    from pneumoscope.data.store import Store

    src = StoreSource(Store(store), "train")
    out: dict = {}
    for workers in (0, 1):
        dl = src.loader(batch, train=True, seed=0, workers=workers)
        rates = []
        for _ in range(2):
            t0 = time.perf_counter()
            n = sum(len(b[1]) for b in dl)
            rates.append(n / (time.perf_counter() - t0))
        out[f"store_workers{workers}"] = round(max(rates))
    s = Store(store).image_size
    images = torch.randint(0, 256, (len(src), 1, s, s), dtype=torch.uint8)
    ds = torch.utils.data.TensorDataset(images, torch.zeros(len(src), dtype=torch.long), torch.arange(len(src)))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True)
    t0 = time.perf_counter()
    n = sum(len(b[1]) for b in dl)
    out["memory"] = round(n / (time.perf_counter() - t0))
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="archive sizes (images), comma-separated")
    ap.add_argument("--side", type=int, default=1024, help="side of the synthesised full-resolution JPEGs")
    ap.add_argument("--dicom", type=int, default=500, help="DICOM files for the DICOM prepare figure (0: skip)")
    ap.add_argument("--image-size", type=int, default=64, help="stored and trained image size")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3, help="training epochs (the fastest one is reported)")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--work", type=Path, default=Path("bench-scale"), help="scratch folder (removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--no-ddp", action="store_true", help="skip the 2-process run")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpu": cpu_line(), "python": platform.python_version(), "sizes": sizes, "runs": {}}
    print(f"CPU: {report['cpu']}", flush=True)
    pool = _pool(64, args.side)
    try:
        for n in sizes:
            arch, store = work / f"jpeg{n}", work / f"store{n}"
            secs = make_jpeg_archive(arch, n, args.side, pool)
            print(f"[{n}] synthesised {n} {args.side} px JPEGs in {secs:.0f} s", flush=True)
            r: dict = {"prepare_jpeg_draft": prepare(arch, store, args.image_size, args.workers)}
            print(f"[{n}] prepare (JPEG, draft): {r['prepare_jpeg_draft']}", flush=True)
            if n == sizes[0]:
                r["prepare_jpeg_full_decode"] = prepare(arch, work / f"store{n}-nodraft", args.image_size, args.workers,
                                                        draft=False)
                print(f"[{n}] prepare (JPEG, full decode): {r['prepare_jpeg_full_decode']}", flush=True)
            r["train_store"] = train(store, work / "run-store", args.image_size, args.batch_size, args.epochs)
            print(f"[{n}] train from store: {r['train_store']}", flush=True)
            r["train_memory"] = train(arch, work / "run-mem", args.image_size, args.batch_size, args.epochs)
            print(f"[{n}] train in memory: {r['train_memory']}", flush=True)
            r["store_vs_memory"] = round(r["train_store"]["images_per_s"] / r["train_memory"]["images_per_s"], 3)
            r["loaders_only"] = loader_throughput(store, args.batch_size)
            print(f"[{n}] loaders alone (img/s): {r['loaders_only']}", flush=True)
            report["runs"][n] = r
            shutil.rmtree(work / "run-mem", ignore_errors=True)
        big = sizes[-1]
        if not args.no_ddp:
            one = report["runs"][big]["train_store"]
            two = train(work / f"store{big}", work / "run-ddp", args.image_size, args.batch_size, args.epochs, devices=2)
            report["ddp"] = {"1": one, "2": two, "speedup": round(two["images_per_s"] / one["images_per_s"], 3)}
            print(f"[{big}] DDP 2 CPU processes: {two}", flush=True)
        if args.dicom:
            dcm = work / "dicom"
            make_dicom_archive(dcm, args.dicom, args.side, pool)
            report["prepare_dicom"] = prepare(dcm, work / "store-dicom", args.image_size, args.workers)
            print(f"prepare (DICOM): {report['prepare_dicom']}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    _print_summary(report, sizes)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


def _print_summary(report: dict, sizes: list[int]) -> None:
    print(f"\n=== scale bench on {report['cpu']} ===")
    for n, r in report["runs"].items():
        p = r["prepare_jpeg_draft"]
        print(f"{n:>7} images  prepare {p['images_per_s']:.0f} img/s (JPEG draft)"
              + (f", {r['prepare_jpeg_full_decode']['images_per_s']:.0f} img/s full decode"
                 if "prepare_jpeg_full_decode" in r else "")
              + f"  | train store {r['train_store']['images_per_s']:.0f} img/s vs memory "
              f"{r['train_memory']['images_per_s']:.0f} img/s = {r['store_vs_memory']:.2f}x (goal >= 0.9)"
              f"  | peak RSS (anonymous) store {r['train_store']['peak_rss_mb']} ({r['train_store']['peak_anon_mb']}) MB,"
              f" memory {r['train_memory']['peak_rss_mb']} ({r['train_memory']['peak_anon_mb']}) MB"
              f"  | loaders alone: store {r['loaders_only']['store_workers0']} img/s, memory {r['loaders_only']['memory']} img/s")
    if len(sizes) > 1:
        a, b = report["runs"][sizes[0]], report["runs"][sizes[-1]]
        for key, what in (("peak_anon_mb", "anonymous RSS (owned)"), ("peak_rss_mb", "ru_maxrss (incl. mapped chunks)")):
            growth = b["train_store"][key] / a["train_store"][key] - 1
            goal = " (goal <= +10%)" if key == "peak_anon_mb" else ""
            print(f"peak {what} of a store training process, {sizes[0]} -> {sizes[-1]} images: {growth:+.1%}{goal}")
    if "ddp" in report:
        d = report["ddp"]
        print(f"DDP on CPU: 1 process {d['1']['images_per_s']:.0f} img/s, 2 processes {d['2']['images_per_s']:.0f} img/s "
              f"({d['speedup']:.2f}x)")
    if "prepare_dicom" in report:
        print(f"prepare DICOM: {report['prepare_dicom']['images_per_s']:.0f} img/s")
    print("predict / predict --explain at 1 and 2 processes: python bench/scale_predict.py")


if __name__ == "__main__":
    main()
