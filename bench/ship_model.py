"""Turn a finished run into a shipped model: compact it, measure it, record what its card states.

    python bench/ship_model.py RUN/best.ckpt kaggle-offline-v3 --data ../shared/data/chest_xray_224

1. stores the checkpoint's weights in float16 (``pneumoscope compact``);
2. evaluates the compact file in fp32 on ``DATA/test`` (the development half of the official test
   split) at its stored operating point, with patient-bootstrap 95 % intervals;
3. writes ``src/pneumoscope/zoo/NAME.safetensors`` with those figures in its metadata
   (``info.card_figures``, which ``tests/test_zoo.py`` re-measures) and a one-line summary, and
   removes the machine-specific training data path;
4. prints the figures as the card's table. The card, ``src/pneumoscope/zoo/NAME.md``, is written
   by hand from them: a model is shipped once per recipe version, not on every experiment.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

KEYS = ("accuracy", "roc_auc", "sensitivity", "specificity")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="the run's best.ckpt")
    ap.add_argument("name", help="the shipped model's name, e.g. kaggle-offline-v3")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "chest_xray_224"))
    ap.add_argument("--summary", default="", help="one line for `pneumoscope models`")
    args = ap.parse_args(argv)

    from pneumoscope.checkpoint import compact_checkpoint, read_metadata, update_checkpoint
    from pneumoscope.evaluation.evaluate import evaluate
    from pneumoscope.runtime import cpu_summary
    from pneumoscope.zoo import ZOO_DIR

    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "model.safetensors"
        r = compact_checkpoint(args.checkpoint, small)
        m = evaluate(small, data / "test", Path(tmp) / "eval", precision="fp32", progress=False).metrics
        figures = {k: m[k] for k in KEYS}
        card = {
            **figures,
            "ci95": {k: m["ci95"][k] for k in KEYS},
            "confusion_matrix": m["confusion_matrix"],
            "n": m["n"],
            "split": f"{data.name}/test",
            "precision": "fp32",
            "cpu": cpu_summary(),
        }
        meta = read_metadata(small)
        info = {"card_figures": card, "summary": args.summary,
                "data": f"{data.name}/train (Kaggle 'Chest X-Ray Images (Pneumonia)', Kermany et al. 2018, CC BY 4.0)"}
        out = ZOO_DIR / f"{args.name}.safetensors"
        staged = Path(tmp) / "staged.safetensors"
        update_checkpoint(small, staged, threshold=meta["threshold"], temperature=meta["temperature"],
                          operating_point=meta["operating_point"], info=info)
        shutil.move(staged, out)
    print(f"wrote {out} ({r['bytes_before'] / 1e6:.1f} MB -> {out.stat().st_size / 1e6:.1f} MB)")
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
