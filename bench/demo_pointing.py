"""How well the demo's models point at lesions, measured on many fresh phantoms.

The demo scores the pointing game on its own 60 PNEUMONIA test phantoms, so its figure moves
by about 4 points from sampling alone (binomial standard error at 0.88 of 60). This bench
separates the model from that noise: it trains the demo's model once per seed (the demo
itself, without the shortcut check, `--set` overrides applied), then scores each model on a
fixed, much larger set of fresh phantoms drawn with another seed (900 lesions by default):

- ``pointing``: the demo's Grad-CAM for the PNEUMONIA class, its maximum inside the lesion
  grown by 2 px, as the demo scores it;
- ``flip``: the same map averaged with the map of the mirrored image (mirrored back);
- ``accuracy``: at the checkpoint's stored threshold, on all fresh images.

    python bench/demo_pointing.py --seeds 0 1 2 3 4 5 6 7 8 9 --out bench-out/pointing
    python bench/demo_pointing.py --seeds 0 1 2 --set train.select=best --out bench-out/pointing-best
    python bench/demo_pointing.py --emulate-avx2 --threads 1 --seeds 0 1 ...   # as docs/benchmarks/demo-speed.md

``--per-epoch`` traces instead how pointing develops during the demo's training: it draws the
demo's phantoms for each seed, trains the demo's model on them (the run the demo makes, with a
probe) and after every epoch scores Grad-CAM pointing on the validation lesions and on the first
``--probe-lesions`` fresh ones:

    python bench/demo_pointing.py --per-epoch --emulate-avx2 --threads 1 --seeds 1 5 7 8

``--emulate-avx2`` re-executes the script with oneDNN, ATen and MKL capped at AVX2 and trains
in fp32; ``--threads`` sets the threads per run (runs with 1 and 2 threads round differently,
so each is its own draw of the training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from pneumoscope.runtime import AVX2_ONLY_ENV  # noqa: E402

FRESH_SEED = 987654  # never a demo seed


def _lesion_set(root: Path, split: str, prep):
    from pneumoscope.data.dataset import decode_images
    from pneumoscope.explanation.groundtruth import read_mask

    paths = sorted((root / split / "PNEUMONIA").glob("*.png"))
    masks = [read_mask(root / "masks" / split / "PNEUMONIA" / p.name, prep.image_size) for p in paths]
    return prep.normalize(decode_images(paths, prep, progress=False)), masks


def _cam(model, layer: str, class_names, x, temperature: float = 1.0):
    """The demo's Grad-CAM for the PNEUMONIA class: raw maps (N, h, w) as numpy."""
    from pneumoscope.explanation.cam import explain

    e = explain(model, x, method="gradcam", layer=layer, target="PNEUMONIA", precision="fp32",
                class_names=class_names, temperature=temperature)
    return e.raw.cpu().numpy()


def _pointing(raw, masks) -> float:
    from pneumoscope.demo import localisation_scores

    return localisation_scores(list(raw), masks)["pointing"]


def per_epoch(seed: int, out: Path, fresh: Path, overrides: dict, lesions: int) -> list[dict]:
    """Train the demo's model on the demo's phantoms for ``seed``, probing pointing after every epoch."""
    import shutil

    import lightning as L

    from pneumoscope.checkpoint import CLASS_NAMES
    from pneumoscope.config import load_config
    from pneumoscope.data.synth import synth_dataset
    from pneumoscope.data.transforms import Preprocessing
    from pneumoscope.models import get_model_info
    from pneumoscope.training import train

    cfg = load_config("demo", overrides)
    prep = Preprocessing(cfg.data.image_size, tuple(cfg.data.mean), tuple(cfg.data.std), cfg.data.intensity)
    layer = cfg.model.cam_layer or get_model_info(cfg.model.backbone).default_layer
    data = out / "data"
    if not (data / "manifest.csv").is_file():
        shutil.rmtree(data, ignore_errors=True)
        synth_dataset(data, n=800, size=cfg.data.image_size, seed=seed, difficulty=0.25)  # as the demo draws them
    val = _lesion_set(data, "val", prep)
    far_x, far_masks = _lesion_set(fresh, "test", prep)
    sets = {"val": val, "fresh": (far_x[:lesions], far_masks[:lesions])}
    rows: list[dict] = []

    class Probe(L.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            model = getattr(pl_module, "eval_model", pl_module.model)
            was = model.training
            row = {"epoch": trainer.current_epoch + 1, "val_loss": float(trainer.callback_metrics["val_loss"])}
            for name, (x, masks) in sets.items():
                row[name] = _pointing(_cam(model, layer, CLASS_NAMES, x), masks)
            model.train(was)
            rows.append(row)
            print(f"seed {seed} epoch {row['epoch']:2d}: val_loss {row['val_loss']:.3f}  pointing on "
                  f"{len(val[1])} validation lesions {row['val']:.3f}, on {len(sets['fresh'][1])} fresh {row['fresh']:.3f}",
                  flush=True)

    shutil.rmtree(out / "run", ignore_errors=True)
    result = train(cfg, data, out / "run", progress=False, callbacks=[Probe()])
    print(f"seed {seed}: kept epoch {result.best_epoch} ({cfg.train.select})", flush=True)
    return rows


def score(ckpt_path: Path, fresh: Path) -> dict[str, float]:
    import numpy as np
    import torch

    from pneumoscope.data.dataset import decode_images
    from pneumoscope.inference import Predictor

    pred = Predictor(ckpt_path, precision="fp32")
    prep, model = pred.ckpt.preprocessing, pred.ckpt.model.eval()
    x, masks = _lesion_set(fresh, "test", prep)

    def raw(inp):
        return _cam(model, pred.ckpt.target_layer, pred.ckpt.class_names, inp, pred.temperature)

    plain = raw(x)
    flipped = (plain + raw(x.flip(-1))[..., ::-1]) / 2
    paths, labels = [], []
    for label, cls in enumerate(pred.ckpt.class_names):
        found = sorted((fresh / "test" / cls).glob("*.png"))
        paths += found
        labels += [label] * len(found)
    xa = prep.normalize(decode_images(paths, prep, progress=False))
    with torch.no_grad():
        p = torch.cat([(model(xa[i:i + 256]) / pred.temperature).softmax(1)[:, 1] for i in range(0, len(xa), 256)])
    return {
        "lesions": len(masks),
        "pointing": _pointing(plain, masks),
        "flip": _pointing(flipped, masks),
        "accuracy": float(((p.numpy() >= pred.threshold).astype(int) == np.array(labels)).mean()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=Path("bench-out/demo-pointing"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override of configs/demo.yaml, e.g. train.select=best")
    ap.add_argument("--fresh", type=int, default=2000, help="fresh phantoms to draw (90 %% test, half with lesions)")
    ap.add_argument("--emulate-avx2", action="store_true", help="cap oneDNN/ATen/MKL at AVX2 and train in fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per run (0: the default)")
    ap.add_argument("--per-epoch", action="store_true", help="probe pointing after every epoch of training")
    ap.add_argument("--probe-lesions", type=int, default=400, help="fresh lesions scored per epoch (--per-epoch)")
    args = ap.parse_args()
    if args.emulate_avx2 and os.environ.get("ONEDNN_MAX_CPU_ISA") != "AVX2":
        env = {**os.environ, **AVX2_ONLY_ENV}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    import torch

    from pneumoscope.config import parse_set_overrides
    from pneumoscope.data.synth import synth_dataset
    from pneumoscope.demo import run_demo
    from pneumoscope.runtime import cpu_isa, cpu_model

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_set_overrides(args.sets)
    if args.emulate_avx2:
        overrides.setdefault("train.precision", "fp32")
    fresh = args.out / "fresh"
    if not (fresh / "manifest.csv").is_file():
        synth_dataset(fresh, n=args.fresh, size=128, seed=FRESH_SEED, difficulty=0.25, splits=(0.05, 0.05, 0.9))
    isa = " ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu_isa().items())
    print(f"CPU: {cpu_model()} | {isa}{' | oneDNN/ATen/MKL capped at AVX2' if args.emulate_avx2 else ''}")
    print(f"overrides: {overrides or 'none'}")
    if args.per_epoch:
        traces = {seed: per_epoch(seed, args.out / f"seed{seed}-epochs", fresh, overrides, args.probe_lesions)
                  for seed in args.seeds}
        (args.out / "demo_pointing_epochs.json").write_text(json.dumps({"overrides": overrides, "seeds": traces}, indent=2))
        return 0
    rows = []
    for seed in args.seeds:
        demo = run_demo(args.out / f"seed{seed}", seed=seed, overrides=overrides, shortcut=False, progress=False,
                        replace=True)
        row = {"seed": seed, "demo_accuracy": demo.metrics["accuracy"],
               "demo_pointing": (demo.localisation or {}).get("pointing"),
               "kept_epoch": json.loads((args.out / f"seed{seed}" / "run" / "summary.json").read_text())["best_epoch"],
               **score(args.out / f"seed{seed}" / "run" / "best.ckpt", fresh)}
        rows.append(row)
        print(f"seed {seed}: kept epoch {row['kept_epoch']}; demo test accuracy {row['demo_accuracy']:.3f}, "
              f"pointing {row['demo_pointing']:.2f} of 60 | fresh {row['lesions']} lesions: pointing "
              f"{row['pointing']:.3f}, with flip {row['flip']:.3f}; accuracy {row['accuracy']:.3f}", flush=True)
    for key in ("pointing", "flip", "accuracy", "demo_pointing"):
        vals = [r[key] for r in rows]
        print(f"{key}: min {min(vals):.3f}  mean {sum(vals) / len(vals):.3f}  max {max(vals):.3f}")
    (args.out / "demo_pointing.json").write_text(json.dumps({"overrides": overrides, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
