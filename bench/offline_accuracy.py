"""Benchmark: train a configuration offline on the real train split, evaluate it on test.

Trains ``--config`` (default ``configs/offline.yaml``) from scratch on
``DATA/train`` (model and operating point chosen on the patient-level validation split of
train only), evaluates the checkpoint on ``DATA/test`` at its stored operating point, and
writes one JSON with the figures, their 95 % confidence intervals where ``evaluate`` gives
them, the goals of issue 3 and the wall times, plus the hardware it ran on.

    python bench/offline_accuracy.py --data ../shared/data/chest_xray_224 --out bench-out/offline
    python bench/offline_accuracy.py --backbone vgg19 --out bench-out/offline-vgg19   # the seed's architecture, same recipe
    python bench/offline_accuracy.py --run RUN --out bench-out/offline   # evaluate a run `pneumoscope train` already made

This is a benchmark, not a test: it takes tens of minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# Issue 3's goals, on the held-out half of the official test split.
GOALS = {"accuracy": 0.93, "roc_auc": 0.97, "sensitivity": 0.95, "specificity": 0.88}


def hardware() -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "chest_xray_224"))
    ap.add_argument("--test", default=None, help="evaluation split (default: DATA/test)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "offline.yaml"))
    ap.add_argument("--backbone", default=None, help="override model.backbone (e.g. vgg19 for the seed's architecture)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "offline"))
    ap.add_argument("--run", default=None, help="a finished run folder of this config: skip training, evaluate it")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    from pneumoscope.config import load_config, parse_set_overrides
    from pneumoscope.evaluation.evaluate import evaluate
    from pneumoscope.training import train

    overrides = parse_set_overrides(args.set)
    overrides["train.device"] = args.device
    overrides["train.precision"] = args.precision
    if args.backbone:
        overrides["model.backbone"] = args.backbone
    cfg = load_config(args.config, overrides)
    out = Path(args.out)
    run = out / "run"
    test = Path(args.test) if args.test else Path(args.data) / "test"

    if args.run:
        run = Path(args.run)
        cfg = load_config(run / "config.yaml")  # report what the run was trained with
        summary = json.loads((run / "summary.json").read_text())
        ckpt, t_train = run / "best.ckpt", float(summary["seconds"])
    else:
        t0 = time.perf_counter()
        result = train(cfg, args.data, run, progress=not args.no_progress)
        t_train = time.perf_counter() - t0
        ckpt, summary = result.checkpoint, result.summary
    t1 = time.perf_counter()
    ev = evaluate(ckpt, test, out / "eval", device=args.device, precision=args.precision,
                  progress=not args.no_progress)
    t_eval = time.perf_counter() - t1
    m = ev.metrics
    figures = {k: m.get(k) for k in ("accuracy", "roc_auc", "sensitivity", "specificity", "pr_auc", "balanced_accuracy", "f1")}
    report = {
        "config": str(args.config),
        "backbone": cfg.model.backbone,
        "weights": cfg.model.weights,
        "image_size": cfg.data.image_size,
        "test": str(test),
        "n_test": m["n"],
        "threshold": m.get("threshold"),
        "test_figures": figures,
        "ci95": m.get("ci95"),
        "calibration": m.get("calibration"),
        "confusion_matrix": m["confusion_matrix"],
        "goals": GOALS,
        "meets_goals": {k: (figures[k] is not None and figures[k] >= v) for k, v in GOALS.items()},
        "operating_point": m.get("operating_point"),
        "train_summary": summary,
        "seconds": {"train": round(t_train, 1), "evaluate": round(t_eval, 1), "total": round(t_train + t_eval, 1)},
        "hardware": hardware(),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "offline_accuracy.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in ("backbone", "threshold", "test_figures", "ci95", "meets_goals", "seconds")},
                     indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
