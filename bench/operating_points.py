"""Benchmark: how operating-point rules chosen on validation fare on the test split.

For each finished run of ``pneumoscope train`` (its ``best.ckpt`` and stored config), this
predicts its patient-level validation split as it is and through the training augmentation
(``--draws`` passes, as ``operating_point.augment_draws`` does), chooses a threshold by each
rule on those validation scores only, and reports what that threshold gives on ``DATA/test``.
It also reports the test ROC AUC, the best specificity any threshold reaches at sensitivity
0.95 (an upper bound, chosen on test, so never a figure to claim), and the same for the mean
of all runs' calibrated probabilities (an ensemble).

    python bench/operating_points.py RUN1 RUN2 ... --data ../shared/data/chest_xray_224 --out bench-out/op.json

This is a benchmark, not a test: it decodes and predicts the validation and test images once
per run (a minute or two per run on a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# (label, method, target sensitivity, augmented validation?)
RULES = [
    ("youden", "youden", 0.95, False),
    ("youden, augmented", "youden", 0.95, True),
    ("sensitivity 0.94, augmented", "sensitivity", 0.94, True),
    ("sensitivity 0.95, augmented", "sensitivity", 0.95, True),
    ("sensitivity 0.96, augmented", "sensitivity", 0.96, True),
    ("sensitivity 0.98", "sensitivity", 0.98, False),
]


def best_specificity(labels: np.ndarray, probs: np.ndarray, sensitivity: float = 0.95) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, probs)
    return float(max(1.0 - f for f, t in zip(fpr, tpr) if t >= sensitivity))


def run_scores(run: Path, data: Path, draws: int, device: str, precision: str) -> dict:
    """Calibrated P(PNEUMONIA) of ``run`` on validation (plain, augmented) and test."""
    from pneumoscope.config import load_config
    from pneumoscope.data.dataset import decode_images, load_splits, scan_split_folder
    from pneumoscope.evaluation.evaluate import image_logits
    from pneumoscope.inference import Predictor
    from pneumoscope.training.calibrate import augmented_logits

    cfg = load_config(run / "config.yaml")
    pred = Predictor(run / "best.ckpt", device=device, precision=precision, batch_size=64)
    prep, pos = pred.ckpt.preprocessing, pred.ckpt.positive_index
    val = load_splits(data, "split", cfg.data.val_fraction, cfg.train.seed).val
    test = scan_split_folder(data / "test")
    val_images = decode_images([s.path for s in val], prep, False)
    test_images = decode_images([s.path for s in test], prep, False)

    def prob(logits):
        return (logits / pred.temperature).softmax(1)[:, pos].numpy().astype(np.float64)

    return {
        "val_labels": np.array([s.label for s in val]),
        "val": prob(image_logits(pred, val_images, False)),
        "val_aug": prob(augmented_logits(pred, val_images, cfg, draws)),
        "test_labels": np.array([s.label for s in test]),
        "test": prob(image_logits(pred, test_images, False)),
        "stored_threshold": pred.threshold,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders of `pneumoscope train` (best.ckpt, config.yaml)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "chest_xray_224"))
    ap.add_argument("--draws", type=int, default=4, help="augmented passes over validation")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--sensitivity-goal", type=float, default=0.95, help="goal counted per rule (issue 13: 0.95)")
    ap.add_argument("--specificity-goal", type=float, default=0.92, help="goal counted per rule (issue 13: 0.92)")
    args = ap.parse_args(argv)

    from sklearn.metrics import roc_auc_score

    from pneumoscope.evaluation.operating_point import choose_operating_point

    data = Path(args.data)
    report: dict = {"data": str(data), "draws": args.draws, "runs": {}, "rules": {}}
    test_probs = []
    for run in map(Path, args.runs):
        s = run_scores(run, data, args.draws, args.device, args.precision)
        yt, pt = s["test_labels"], s["test"]
        test_probs.append(pt)
        row = {"test_auc": float(roc_auc_score(yt, pt)), "best_specificity_at_0.95": best_specificity(yt, pt)}
        for label, method, target, aug in RULES:
            y, p = (np.tile(s["val_labels"], args.draws), s["val_aug"]) if aug else (s["val_labels"], s["val"])
            t = choose_operating_point(y, p, method, target_sensitivity=target).threshold
            called = pt >= t
            row[label] = {"threshold": float(t), "sensitivity": float(called[yt == 1].mean()),
                          "specificity": float((~called[yt == 0]).mean()), "accuracy": float((called == yt).mean())}
        report["runs"][str(run)] = row
        print(f"{run}: test AUC {row['test_auc']:.4f}, best specificity at sensitivity 0.95 "
              f"{row['best_specificity_at_0.95']:.3f}", flush=True)
        for label, *_ in RULES:
            r = row[label]
            print(f"  {label:30s} threshold {r['threshold']:.3f}  sensitivity {r['sensitivity']:.3f}  "
                  f"specificity {r['specificity']:.3f}", flush=True)
    for label, *_ in RULES:
        rows = [report["runs"][r][label] for r in report["runs"]]
        report["rules"][label] = {
            k: {"min": min(x[k] for x in rows), "mean": float(np.mean([x[k] for x in rows])), "max": max(x[k] for x in rows)}
            for k in ("sensitivity", "specificity", "accuracy")
        } | {"meets_goals": sum(x["sensitivity"] >= args.sensitivity_goal and x["specificity"] >= args.specificity_goal
                               for x in rows),
             "goals": {"sensitivity": args.sensitivity_goal, "specificity": args.specificity_goal}}
    print(f"over {len(args.runs)} run(s), test figures at each rule's threshold (min / mean / max):")
    for label, r in report["rules"].items():
        print(f"  {label:30s} sensitivity {r['sensitivity']['min']:.3f} / {r['sensitivity']['mean']:.3f} / "
              f"{r['sensitivity']['max']:.3f}  specificity {r['specificity']['min']:.3f} / "
              f"{r['specificity']['mean']:.3f} / {r['specificity']['max']:.3f}  "
              f"sensitivity >= {args.sensitivity_goal:g} and specificity >= {args.specificity_goal:g} in "
              f"{r['meets_goals']}/{len(args.runs)}")
    if len(test_probs) > 1:
        yt = s["test_labels"]
        mean = np.mean(test_probs, axis=0)
        report["ensemble"] = {"test_auc": float(roc_auc_score(yt, mean)),
                              "best_specificity_at_0.95": best_specificity(yt, mean)}
        print(f"ensemble of all runs (mean probability): test AUC {report['ensemble']['test_auc']:.4f}, best "
              f"specificity at sensitivity 0.95 {report['ensemble']['best_specificity_at_0.95']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
