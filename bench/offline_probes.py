"""Probes of a trained offline model, behind the lever table of issue 13 (docs/benchmarks/accuracy.md).

    python bench/offline_probes.py tta CKPT                 # test-time augmentation: flip, zoom, shift
    python bench/offline_probes.py test-bn CKPT             # transductive: BatchNorm statistics from the test images
    python bench/offline_probes.py fullres CKPT             # the 16 full-resolution originals of the official val split
    python bench/offline_probes.py lung-crop-stats          # does an unsupervised lung crop depend on the class?
    python bench/offline_probes.py corner-dataset OUT       # a copy of the data with the four corners filled
    python bench/offline_probes.py step-cost [--emulate-avx2]   # ms per image of a training step, and of the augmentation
    python bench/offline_probes.py snapshots OUT [--seed 42]    # train offline.yaml once; snapshot ensembles and SWA of its epochs
    python bench/offline_probes.py series PRED.csv [...] [--texture]   # ROC AUC per NORMAL file series of the test split
    python bench/offline_probes.py marker-stats [PRED.csv ...]   # how often a top-left marker is there, per class; P of marked test NORMALs
    python bench/offline_probes.py marker-balanced OUT [--copies 6]   # the data with marked training NORMALs repeated

CKPT is a checkpoint file or a shipped model (``kaggle-offline-v3``). ``--data`` defaults to
``../shared/data`` beside the checkout. ``corner-dataset`` writes a dataset to train on with
``bench/offline_accuracy.py --data OUT``; the others print their figures. These are measurements
for the record, not product features: test-time BatchNorm adaptation looks at the test images
and is never a headline figure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT.parent / "shared" / "data"


def _test_set(ckpt, data: Path):
    """The development test split as the model sees it: (N, S, S) uint8 images and PNEUMONIA labels."""
    from pneumoscope.data.dataset import decode_images

    files = sorted(p for p in (data / "chest_xray_224" / "test").glob("*/*") if p.is_file())
    y = np.array([p.parent.name == "PNEUMONIA" for p in files])
    return decode_images(files, ckpt.preprocessing, progress=False), y


def _probs(ckpt, images, model=None):
    import torch

    model = model or ckpt.model
    with torch.no_grad():
        return torch.cat([
            (model(ckpt.preprocessing.normalize(images[i:i + 64])) / ckpt.temperature).softmax(1)[:, 1]
            for i in range(0, len(images), 64)
        ]).numpy()


def _zoom(images, z: float, dx: float = 0.0, dy: float = 0.0):
    """Zoom uint8 images (N, S, S) by ``z`` about the centre shifted by (dx, dy) of the half-side."""
    import torch
    import torch.nn.functional as F

    x = images.float()[:, None] / 255
    theta = torch.tensor([[1 / z, 0, dx], [0, 1 / z, dy]], dtype=torch.float32).expand(len(x), 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return (F.grid_sample(x, grid, padding_mode="border", align_corners=False)[:, 0] * 255).round().to(torch.uint8)


def tta(args: argparse.Namespace) -> None:
    from sklearn.metrics import roc_auc_score

    from pneumoscope import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    images, y = _test_set(ckpt, args.data)
    variants = {"none": _probs(ckpt, images), "flip": _probs(ckpt, images.flip(-1))}
    for z in (1.1, 1.2, 1.3):
        variants[f"zoom {z}"] = _probs(ckpt, _zoom(images, z))
    for dx, dy in ((0.05, 0), (-0.05, 0), (0, 0.05), (0, -0.05)):
        variants[f"shift ({dx}, {dy}) at zoom 1.15"] = _probs(ckpt, _zoom(images, 1.15, dx, dy))
    for name, p in variants.items():
        print(f"{name:34s} test AUC {roc_auc_score(y, p):.4f}")
    for name, keys in (("mean of none + flip", ["none", "flip"]),
                       ("mean of none + zooms", ["none", "zoom 1.1", "zoom 1.2", "zoom 1.3"]),
                       ("mean of all", list(variants))):
        print(f"{name:34s} test AUC {roc_auc_score(y, np.mean([variants[k] for k in keys], 0)):.4f}")


def test_bn(args: argparse.Namespace) -> None:
    import copy

    import torch
    from sklearn.metrics import roc_auc_score

    from pneumoscope import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    images, y = _test_set(ckpt, args.data)
    adapted = copy.deepcopy(ckpt.model)
    for m in adapted.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the test batches
    adapted.train()
    with torch.no_grad():
        for i in range(0, len(images), 32):
            adapted(ckpt.preprocessing.normalize(images[i:i + 32]))
    adapted.eval()
    for name, p in (("stored BatchNorm statistics", _probs(ckpt, images)),
                    ("re-estimated on the test images", _probs(ckpt, images, adapted))):
        called = p >= ckpt.threshold
        print(f"{name:32s} AUC {roc_auc_score(y, p):.4f}  sensitivity {called[y].mean():.3f}  "
              f"specificity {(~called[~y]).mean():.3f}")


def fullres(args: argparse.Namespace) -> None:
    import io

    import torch
    from PIL import Image

    from pneumoscope import load_checkpoint
    from pneumoscope.data.io import read_image

    ckpt = load_checkpoint(args.checkpoint)

    def prob(gray: np.ndarray) -> float:
        with torch.no_grad():
            return float((ckpt.model(ckpt.preprocessing(gray)[None]) / ckpt.temperature).softmax(1)[0, 1])

    print(f"threshold {ckpt.threshold:.3f}; 'as trained' = resized to 224 x 224 and re-encoded as JPEG first")
    for path in sorted(p for p in (args.data / "kaggle_val_fullres").glob("*/*") if p.is_file()):
        gray = read_image(path)
        buf = io.BytesIO()
        Image.fromarray((gray * 255).round().astype(np.uint8)).resize((224, 224), Image.BILINEAR).save(buf, "JPEG", quality=75)
        as_trained = np.asarray(Image.open(buf).convert("L"), dtype=np.float32) / 255
        print(f"{path.parent.name:9s} {path.name:32s} {gray.shape[1]}x{gray.shape[0]}  P {prob(gray):.3f}  "
              f"as trained {prob(as_trained):.3f}")


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]."""
    hist, edges = np.histogram(values, bins=bins, range=(0, 1))
    p = hist / hist.sum()
    w0, mu = np.cumsum(p), np.cumsum(p * np.arange(bins))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0))
    return float(edges[int(np.nanargmax(between)) + 1])


def lung_box(gray: np.ndarray, margin: float = 0.06, min_frac: float = 0.2) -> tuple[int, int, int, int]:
    """An unsupervised lung-field box (y0, y1, x0, x1); the whole image when nothing sensible is found.

    Background = the darkest pixels connected to the border; lungs = the two largest regions
    darker than Otsu's threshold inside the body, away from the border; the box is made
    symmetric about the body's midline (so one lung found still frames the chest), plus a margin.
    """
    from scipy import ndimage as ndi

    h, w = gray.shape
    img = ndi.gaussian_filter(gray.astype(np.float32), sigma=max(h, w) / 100)
    lab, _ = ndi.label(img < np.percentile(img, 3) + 0.04)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    body = ~np.isin(lab, edge[edge > 0])
    dark = (img < otsu(img[body] if body.any() else img)) & body
    b = max(2, h // 20)
    dark[:b] = dark[-b:] = False
    dark[:, :b] = dark[:, -b:] = False
    lab, n = ndi.label(ndi.binary_opening(dark, iterations=max(1, h // 56)))
    sizes = ndi.sum(np.ones_like(lab), lab, index=np.arange(1, n + 1)) if n else np.array([])
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] > 0.01 * h * w]
    if not keep:
        return 0, h, 0, w
    ys, xs = np.nonzero(np.isin(lab, keep))
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    cols = np.nonzero(body.any(0))[0]
    c = (cols.min() + cols.max() + 1) / 2 if cols.size else w / 2
    x0, x1 = int(max(0, min(x0, 2 * c - x1))), int(min(w, max(x1, 2 * c - x0)))
    my, mx = int(margin * (y1 - y0)), int(margin * (x1 - x0))
    y0, y1, x0, x1 = max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)
    if (y1 - y0) * (x1 - x0) < min_frac * h * w:
        return 0, h, 0, w
    return int(y0), int(y1), int(x0), int(x1)


def lung_crop_stats(args: argparse.Namespace) -> None:
    from pneumoscope.data.io import read_image

    root = args.data / "chest_xray_224"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted(p for p in (root / split / cls).iterdir() if p.is_file())[:: args.every]
            rows = []
            for p in files:
                gray = read_image(p)
                y0, y1, x0, x1 = lung_box(gray)
                h, w = gray.shape
                rows.append(((y1 - y0) * (x1 - x0) / (h * w), (y1 - y0, x1 - x0) == (h, w)))
            a = np.array(rows, dtype=np.float64)
            print(f"{split}/{cls:9s} n={len(rows):4d}  box area {a[:, 0].mean():.3f} of the image  "
                  f"whole image (nothing found) {a[:, 1].mean():.0%}")


def corner_dataset(args: argparse.Namespace) -> None:
    from PIL import Image

    src, out = args.data / "chest_xray_224", Path(args.out)
    n = 0
    for p in sorted(src.glob("*/*/*")):
        g = np.asarray(Image.open(p).convert("L")).copy()
        k = int(round(args.fraction * g.shape[0]))
        fill = int(np.median(g))
        g[:k, :k] = g[:k, -k:] = g[-k:, :k] = g[-k:, -k:] = fill
        target = out / p.relative_to(src).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g).save(target)
        n += 1
    print(f"wrote {n} images with {args.fraction:.0%} corners filled to {out}")


def marker_balanced(args: argparse.Namespace) -> None:
    """A copy of the data (symbolic links) in which every training NORMAL with a top-left marker
    appears ``--copies`` times, so that among marked training images NORMAL is no longer rare
    (4 % of NORMALs carry one, 25 % of PNEUMONIA): group balancing against the marker and the
    room it stands for. Copies keep the patient in their name, so the patient-level split keeps
    them together; train on it with ``bench/offline_accuracy.py --data OUT``."""
    src, out = args.data / "chest_xray_224", Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; choose a new folder")
    marked = 0
    for p in sorted(src.glob("*/*/*")):
        target = out / p.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(p.resolve())
        if p.parts[-3] == "train" and p.parts[-2] == "NORMAL" and _top_left_marker(p):
            marked += 1
            for k in range(1, args.copies):
                target.with_name(f"{p.stem}-copy{k}{p.suffix}").symlink_to(p.resolve())
    print(f"{out}: {marked} marked training NORMALs, each {args.copies} times")


def step_cost(args: argparse.Namespace) -> None:
    """GFLOP per training image of ResNet-18 and ResNet-10 at 96 px; milliseconds per image of
    offline.yaml's training step (ResNet-18, AdamW, fp32) at 64-128 px and each ``trainable_from``,
    at batch 32 and channels-last as training runs it, and of the batched augmentation at 96 px. ``--layouts`` also times the 96 px step contiguous and at
    batch 64, interleaved round by round with the default so the VM's drift hits all alike.
    Run with ``--emulate-avx2`` for an AVX2-only CPU."""
    import time

    import torch
    import torch.nn.functional as F

    from pneumoscope import create_model
    from pneumoscope.config import load_config
    from pneumoscope.data.transforms import augment_batch
    from pneumoscope.runtime import cpu_summary

    def per_image(fn, batch: int, repeats: int = 6) -> float:
        for _ in range(2):
            fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t0) / repeats / batch * 1000

    def make_step(size: int, trainable: str, batch: int = 32, channels_last: bool = True):
        torch.manual_seed(0)
        model = create_model("resnet18")
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.set_trainable(trainable)
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
        x = torch.randn(batch, 3, size, size)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch,))

        def step() -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    print(cpu_summary())
    from torch.utils.flop_counter import FlopCounterMode

    for arch in ("resnet18", "resnet10"):  # the arithmetic of one training image, forward and backward
        with FlopCounterMode(display=False) as flops:
            create_model(arch)(torch.randn(1, 3, 96, 96)).sum().backward()
        print(f"{arch}: {flops.get_total_flops() / 1e9:.2f} GFLOP per training image at 96 px")
    for size, trainable in ((64, "all"), (80, "all"), (96, "all"), (128, "all"), (128, "layer2"), (128, "layer3")):
        print(f"training step, {size} px, trainable from {trainable}: "
              f"{per_image(make_step(size, trainable), 32):.2f} ms/image")
    if args.layouts:
        variants = {"batch 32, channels-last": (32, True), "batch 32, contiguous": (32, False),
                    "batch 64, channels-last": (64, True)}
        steps = {k: make_step(96, "all", b, cl) for k, (b, cl) in variants.items()}
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(5):
            for k, fn in steps.items():
                times[k].append(per_image(fn, variants[k][0], repeats=3))
        for k, v in times.items():
            print(f"training step, 96 px, {k}: median {np.median(v):.2f} ms/image over 5 rounds "
                  f"({min(v):.2f}-{max(v):.2f})")
    cfg = load_config(ROOT / "configs" / "offline.yaml")
    raw = torch.randint(0, 256, (32, 1, 128, 128), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)

    def augment() -> None:
        x = F.interpolate(raw.float().div_(255.0), size=(96, 96), mode="bilinear", antialias=True, align_corners=False)
        augment_batch(x, cfg.data.augment, generator=gen)

    print(f"augmentation at 96 px (resize from 128 + offline.yaml's augment): {per_image(augment, 32, 30):.2f} ms/image")


def snapshots(args: argparse.Namespace) -> None:
    """Snapshot ensembles and SWA (issue 13's "cheap variance cuts"): train ``--config`` once,
    keep the validated (EMA) weights of every epoch, and score each of the last epochs, their
    mean-probability ensembles, and the mean of their weights (SWA on top of the EMA, with
    BatchNorm averaged or re-estimated on the unaugmented training images at the model's size)
    on validation (the run's patient-level split) and test. Each snapshot is scored at the size it
    was validated at in training (a 96 px stage at 96 px); a weight average at the model's size.
    The variant to keep is the one with the best validation AUC; test is only reported."""
    import csv
    import json

    import lightning as L
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    from pneumoscope import load_checkpoint
    from pneumoscope.config import load_config
    from pneumoscope.data.dataset import decode_images
    from pneumoscope.training import train

    class Keep(L.Callback):
        def __init__(self) -> None:
            self.states: list[tuple[int | None, dict]] = []

        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                m = getattr(pl_module, "eval_model", pl_module.model)
                self.states.append((pl_module.stage.image_size,
                                    {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}))

    from pneumoscope.config import parse_set_overrides

    cfg = load_config(args.config, {"train.seed": args.seed, "train.precision": args.precision,
                                    **parse_set_overrides(args.sets)})
    keep = Keep()
    out = Path(args.out) / f"seed{args.seed}"
    res = train(cfg, args.data / "chest_xray_224", out, progress=False, callbacks=[keep])
    ckpt = load_checkpoint(res.checkpoint)
    test, y_test = _test_set(ckpt, args.data)
    with open(out / "splits.csv", newline="", encoding="utf-8") as fh:
        split_rows = list(csv.DictReader(fh))
    root = args.data / "chest_xray_224"

    def images_of(split: str):
        return decode_images([Path(r["path"]) if Path(r["path"]).is_absolute() else root / r["path"]
                              for r in split_rows if r["split"] == split], ckpt.preprocessing, progress=False)

    val = images_of("val")
    y_val = np.array([r["label"] in ("1", "PNEUMONIA") for r in split_rows if r["split"] == "val"])
    model = ckpt.model

    def probs(images, state, size):
        model.load_state_dict(state)
        model.eval()
        out_p = []
        with torch.no_grad():
            for i in range(0, len(images), 64):
                x = images[i:i + 64].float()[:, None] / 255.0  # (N, 1, S, S), as training resamples it
                if size is not None and x.shape[-1] != size:
                    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                out_p.append(model(ckpt.preprocessing.normalize(x)).float().softmax(1)[:, 1])
        return torch.cat(out_p).numpy()

    last = min(args.last, len(keep.states))
    n = len(keep.states)
    scored = {}
    for k in range(n - last, n):
        size, state = keep.states[k]
        scored[k + 1] = (probs(val, state, size), probs(test, state, size))
    report = {"seed": args.seed, "epochs": n, "snapshots": {}, "ensembles": {}}
    for e, (pv, pt) in scored.items():
        report["snapshots"][e] = {"val_auc": roc_auc_score(y_val, pv), "test_auc": roc_auc_score(y_test, pt)}
        print(f"epoch {e:2d} ({keep.states[e - 1][0] or ckpt.preprocessing.image_size} px)  "
              f"val AUC {report['snapshots'][e]['val_auc']:.4f}  test AUC {report['snapshots'][e]['test_auc']:.4f}")
    epochs = sorted(scored)
    for j in range(len(epochs) - 1):
        members = epochs[j:]
        pv = np.mean([scored[e][0] for e in members], 0)
        pt = np.mean([scored[e][1] for e in members], 0)
        name = "+".join(map(str, members))
        report["ensembles"][name] = {"val_auc": roc_auc_score(y_val, pv), "test_auc": roc_auc_score(y_test, pt)}
        print(f"mean of epochs {name:12s} val AUC {report['ensembles'][name]['val_auc']:.4f}  "
              f"test AUC {report['ensembles'][name]['test_auc']:.4f}")
    # SWA on top of the EMA: the mean of the last snapshots' weights, as one model scored at the
    # final size, with BatchNorm either averaged too or re-estimated on the training images.
    report["weight_averages"] = {}
    if len(epochs) > 1:
        from torch.optim.swa_utils import update_bn

        train_batches = [ckpt.preprocessing.normalize(b.float()[:, None] / 255.0)
                         for b in images_of("train").split(64)]
        for j in range(len(epochs) - 1):
            members = epochs[j:]
            states = [keep.states[e - 1][1] for e in members]
            mean_state = {k: (sum(st[k].double() for st in states) / len(states)).to(v.dtype)
                          if v.is_floating_point() else v for k, v in states[-1].items()}
            for bn in ("averaged", "re-estimated"):
                model.load_state_dict(mean_state)
                if bn == "re-estimated":
                    update_bn(train_batches, model)  # a cumulative mean over every training batch
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                name = f"{'+'.join(map(str, members))}, BatchNorm {bn}"
                report["weight_averages"][name] = {"val_auc": roc_auc_score(y_val, probs(val, state, None)),
                                                   "test_auc": roc_auc_score(y_test, probs(test, state, None))}
                print(f"weights of epochs {name:32s} val AUC {report['weight_averages'][name]['val_auc']:.4f}  "
                      f"test AUC {report['weight_averages'][name]['test_auc']:.4f}")
    final = {"val_auc": report["snapshots"][n]["val_auc"], "test_auc": report["snapshots"][n]["test_auc"]}
    best = max([*report["ensembles"].items(), *report["weight_averages"].items()],
               key=lambda kv: kv[1]["val_auc"], default=None)
    if best is not None and best[1]["val_auc"] > final["val_auc"]:
        print(f"kept on validation: epochs {best[0]}: test AUC {best[1]['test_auc']:.4f} "
              f"(the final epoch alone: {final['test_auc']:.4f})")
    else:
        print(f"kept on validation: the final epoch alone, test AUC {final['test_auc']:.4f}")
    (out / "snapshots.json").write_text(json.dumps(report, indent=2) + "\n")


SERIES = r"^((?:NORMAL2-)?IM-\d\d)"  # NORMAL file names: IM-0123-0001, NORMAL2-IM-0123-0001; series IM-01xx


def _series(name: str) -> str:
    import re

    m = re.match(SERIES, name)
    return f"{m.group(1)}xx" if m else "other"


def _texture(files: list[Path], size: int = 96, blur: bool = False) -> np.ndarray:
    """Mean |Laplacian| of the central 60 % of each image as the model's 96 px stage sees it
    (equalised at 128 px, resampled to 96): fine texture and detail, lower in softer images.
    ``blur``: after the strongest blur offline.yaml's augmentation draws (``sharpness`` -1,
    the 5 x 5 binomial kernel of ``random_intensity``)."""
    import torch
    import torch.nn.functional as F

    from pneumoscope.config import load_config
    from pneumoscope.data.dataset import decode_images
    from pneumoscope.data.transforms import _BINOMIAL5, Preprocessing

    data = load_config(ROOT / "configs" / "offline.yaml").data
    prep = Preprocessing(data.image_size, tuple(data.mean), tuple(data.std), data.intensity)
    x = decode_images(files, prep, progress=False).float()[:, None] / 255
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if blur:
        k1 = torch.tensor(_BINOMIAL5)
        k = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k.view(1, 1, 5, 5))
    x = x[:, 0]
    lo, hi = int(size * 0.2), int(size * 0.8)
    c = x[:, lo:hi, lo:hi]
    lap = (4 * c[:, 1:-1, 1:-1] - c[:, :-2, 1:-1] - c[:, 2:, 1:-1] - c[:, 1:-1, :-2] - c[:, 1:-1, 2:]).abs()
    return lap.mean(dim=(1, 2)).numpy()


def series_aucs(rows: list[dict]) -> dict[str, dict]:
    """ROC AUC of each NORMAL file series against every PNEUMONIA image, from the rows of a
    ``predictions.csv`` (path, true_label, prob_pneumonia): ``{series: {"auc", "n"}}``, in
    series order; empty where no NORMAL is named in the Kaggle way or a class is missing."""
    from sklearn.metrics import roc_auc_score

    y = np.array([r["true_label"] == "PNEUMONIA" for r in rows])
    p = np.array([float(r["prob_pneumonia"]) for r in rows])
    names = [_series(Path(r["path"]).name) for r in rows]
    out: dict[str, dict] = {}
    if not y.any():
        return out
    for g in sorted({n for n, pos in zip(names, y) if not pos} - {"other"}):
        m = np.array([n == g for n in names]) & ~y
        auc = roc_auc_score(np.r_[np.ones(y.sum()), np.zeros(m.sum())], np.r_[p[y], p[m]])
        out[g] = {"auc": float(auc), "n": int(m.sum())}
    return out


def _read_predictions(path: str) -> list[dict]:
    """The rows of a ``predictions.csv`` of ``pneumoscope evaluate``; exits naming the file if it is not one."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"path", "true_label", "prob_pneumonia"} <= set(rows[0]):
        raise SystemExit(f"{path}: expected a predictions.csv of pneumoscope evaluate (path, true_label, prob_pneumonia)")
    return rows


def series(args: argparse.Namespace) -> None:
    """Where the test errors sit: the ROC AUC of each NORMAL file series of the test split
    against every PNEUMONIA image, from ``predictions.csv`` files of ``pneumoscope evaluate``
    (one per run). The series are the hundreds of the file number (``NORMAL2-IM-01xx``): the
    numbers run with time, and every test NORMAL is numbered below every training NORMAL of its
    series (train: IM-0115 on, NORMAL2-IM-0383 on).
    ``--texture`` adds, per series, the images' fine texture as the model sees it (median mean
    |Laplacian|), the same for the training classes, and, for the first file, the Spearman
    correlation of P(PNEUMONIA) with texture inside each series."""

    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    runs = [(f, _read_predictions(f)) for f in args.predictions]
    first = runs[0][1]
    groups = list(series_aucs(first))
    if not groups:
        raise SystemExit(f"{runs[0][0]}: no NORMAL image named like the Kaggle series (IM-0123-0001, NORMAL2-IM-0123-0001)")
    print("run".ljust(44), "all".rjust(7), *[g.rjust(16) for g in groups])
    for f, rows in runs:
        y = np.array([r["true_label"] == "PNEUMONIA" for r in rows])
        p = np.array([float(r["prob_pneumonia"]) for r in rows])
        per = series_aucs(rows)
        cells = [(f"{per[g]['auc']:.4f} (n={per[g]['n']})" if g in per else "—").rjust(16) for g in groups]
        print(str(f)[-44:].ljust(44), f"{roc_auc_score(y, p):.4f}".rjust(7), *cells)
    if not args.texture:
        return
    root = args.data / "chest_xray_224"
    train_n = sorted((root / "train" / "NORMAL").glob("*"))[::4]
    train_p = sorted((root / "train" / "PNEUMONIA").glob("*"))[::12]
    tn, tp = _texture(train_n), _texture(train_p)
    auc = roc_auc_score(np.r_[np.zeros(len(tn)), np.ones(len(tp))], -np.r_[tn, tp])
    print(f"\ntexture (median mean |Laplacian|, 96 px): train NORMAL {np.median(tn):.4f} (every 4th), "
          f"train PNEUMONIA {np.median(tp):.4f} (every 12th); lower texture as a PNEUMONIA score: AUC {auc:.2f}")
    print(f"train NORMAL after the augmentation's strongest blur (sharpness -1): {np.median(_texture(train_n, blur=True)):.4f}")
    paths = [Path(r["path"]) for r in first]
    tex = _texture(paths)
    prob = np.array([float(r["prob_pneumonia"]) for r in first])
    labels = [r["true_label"] for r in first]
    print(f"softest test NORMAL: {min(t for t, lab in zip(tex, labels) if lab == 'NORMAL'):.4f}")
    for g in [*groups, "PNEUMONIA"]:
        m = np.array([(lab == "PNEUMONIA") if g == "PNEUMONIA" else (lab == "NORMAL" and _series(q.name) == g)
                      for lab, q in zip(labels, paths)])
        rho = spearmanr(prob[m], tex[m]).correlation if m.sum() > 2 else float("nan")
        print(f"test {g:16s} n={m.sum():3d}  texture {np.median(tex[m]):.4f}  Spearman(P(PNEUMONIA), texture) {rho:+.2f}")


def _top_left_marker(path: Path, share: float = 0.03) -> bool:
    """A burned-in marker in the top-left corner: over ``share`` of the corner square covered by
    small bright marks, as ``pneumoscope audit`` measures them (its ``marks_tl`` cue)."""
    from pneumoscope.data.audit import image_cues
    from pneumoscope.data.io import read_image

    return image_cues(read_image(path))["marks_tl"] > share


def marker_stats(args: argparse.Namespace) -> None:
    """How often a bright burned-in marker sits in the top-left corner, per class and split, and
    per NORMAL file series of the test split: a shortcut where it differs between the training
    classes. A crude detector (the audit's ``marks_tl`` over 3 %, :func:`_top_left_marker`), for
    rates, not for single images."""
    root = args.data / "chest_xray_224"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = sorted((root / split / cls).glob("*"))
            hits = [_top_left_marker(f) for f in files]
            print(f"{split:5s} {cls:9s} n={len(files):4d}  top-left marker {np.mean(hits):.2f}")
    files = sorted((root / "test" / "NORMAL").glob("*"))
    for g in sorted({_series(f.name) for f in files}):
        hits = [_top_left_marker(f) for f in files if _series(f.name) == g]
        print(f"test  NORMAL {g:16s} n={len(hits):3d}  top-left marker {np.mean(hits):.2f}")
    for f in args.predictions:
        # What a model makes of the marked test NORMALs: mean P(PNEUMONIA) with and without a
        # marker, over the NORMAL series where some images carry one.
        rows = [r for r in _read_predictions(f) if r["true_label"] == "NORMAL"]
        marked = {r["path"]: _top_left_marker(Path(r["path"])) for r in rows}
        with_marker = {_series(Path(p).name) for p, m in marked.items() if m}
        sel = [r for r in rows if _series(Path(r["path"]).name) in with_marker]
        pm = [float(r["prob_pneumonia"]) for r in sel if marked[r["path"]]]
        pu = [float(r["prob_pneumonia"]) for r in sel if not marked[r["path"]]]
        print(f"{f}: test NORMALs of {', '.join(sorted(with_marker))}: with a marker n={len(pm)} mean P(PNEUMONIA) "
              f"{np.mean(pm):.2f}, without n={len(pu)} {np.mean(pu):.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA, help="the folder holding chest_xray_224/ and kaggle_val_fullres/")
    sub = ap.add_subparsers(dest="probe", required=True)
    for name, fn in (("tta", tta), ("test-bn", test_bn), ("fullres", fullres)):
        p = sub.add_parser(name)
        p.add_argument("checkpoint")
        p.set_defaults(fn=fn)
    p = sub.add_parser("lung-crop-stats")
    p.add_argument("--every", type=int, default=4, help="every Nth image of each class")
    p.set_defaults(fn=lung_crop_stats)
    p = sub.add_parser("corner-dataset")
    p.add_argument("out")
    p.add_argument("--fraction", type=float, default=0.14, help="side of each corner square, of the image side")
    p.set_defaults(fn=corner_dataset)
    p = sub.add_parser("snapshots")
    p.add_argument("out")
    p.add_argument("--config", default=str(ROOT / "configs" / "offline.yaml"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", default="auto")
    p.add_argument("--last", type=int, default=4, help="the last N epochs are scored and ensembled")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(fn=snapshots)
    p = sub.add_parser("series")
    p.add_argument("predictions", nargs="+", help="predictions.csv files of pneumoscope evaluate on DATA/chest_xray_224/test")
    p.add_argument("--texture", action="store_true", help="also the images' fine texture per series and training class")
    p.set_defaults(fn=series)
    p = sub.add_parser("marker-stats")
    p.add_argument("predictions", nargs="*", help="predictions.csv files of pneumoscope evaluate on the test split")
    p.set_defaults(fn=marker_stats)
    p = sub.add_parser("marker-balanced")
    p.add_argument("out")
    p.add_argument("--copies", type=int, default=6, help="how many times each marked training NORMAL appears")
    p.set_defaults(fn=marker_balanced)
    p = sub.add_parser("step-cost")
    p.add_argument("--emulate-avx2", action="store_true", help="cap oneDNN/ATen/MKL at AVX2 (re-executes this script)")
    p.add_argument("--layouts", action="store_true", help="also the 96 px step contiguous and at batch 64")
    p.set_defaults(fn=step_cost)
    args = ap.parse_args(argv)
    if getattr(args, "emulate_avx2", False) and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":
        from pneumoscope.runtime import AVX2_ONLY_ENV

        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ONLY_ENV})
    args.fn(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
