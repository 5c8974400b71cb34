"""Real radiographs from ../shared/data: skipped with a reason when the folder is absent.

The quick tests run by default; the seed configuration end to end on the real train split is
marked ``slow`` (about 2 minutes on a 2-core CPU) and runs with ``-m slow`` (CI does both).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = SHARED / "chest_xray_224"
FULLRES = SHARED / "kaggle_val_fullres"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not found at {REAL}")
needs_fullres = pytest.mark.skipif(not FULLRES.is_dir(), reason=f"real data not found at {FULLRES}")


@needs_real
def test_evaluate_a_checkpoint_on_the_real_test_split(run_cli, tiny_ckpt, tmp_path):
    result = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", REAL / "test", "--out", tmp_path / "ev",
                     "--precision", "fp32")
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["n"] == 314 and m["n_positive"] == 196 and m["n_negative"] == 118
    assert sum(map(sum, m["confusion_matrix"])) == 314


@needs_fullres
def test_predict_and_explain_full_resolution_originals(run_cli, tiny_ckpt, tmp_path):
    out = tmp_path / "cams"
    result = run_cli("predict", "--checkpoint", tiny_ckpt, FULLRES, "--out", tmp_path / "p.csv",
                     "--explain", out, "--precision", "fp32")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 16 and all(r["label"] in ("NORMAL", "PNEUMONIA") and not r["error"] for r in rows)
    from PIL import Image

    overlays = sorted(out.glob("*.overlay.png"))
    assert len(overlays) == 16
    for p in overlays[:4]:
        with Image.open(p) as im:
            # Overlays keep the original's aspect ratio with the long side capped at 1024 px.
            assert max(im.size) == 1024 and im.mode == "RGB" and im.size[0] != im.size[1]


@pytest.mark.slow
@needs_real
def test_seed_config_trains_and_evaluates_on_real_data(run_cli, tmp_path):
    run = tmp_path / "seed"
    result = run_cli(
        "train", "--config", "configs/seed.yaml", "--data", REAL, "--weights", "none", "--epochs", "1",
        "--limit-train-batches", "2", "--set", "train.limit_val_batches=2", "--out", run,
    )
    assert result.exit_code == 0, result.output
    cfg = (run / "config.yaml").read_text()
    assert "vgg19" in cfg and "block5_conv1" in cfg
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["stage"] for r in rows] == ["stage1", "stage2"]
    info = run_cli("info", run / "best.ckpt")
    meta = json.loads(info.stdout)
    assert meta["architecture"] == "vgg19" and meta["target_layer"] == "block5_conv3"
    assert meta["preprocessing"]["image_size"] == 256 and meta["info"]["val_source"] == "split"
    ev = run_cli("evaluate", "--checkpoint", run / "best.ckpt", "--data", REAL, "--out", tmp_path / "ev")
    assert ev.exit_code == 0, ev.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for key in ("accuracy", "precision", "recall", "f1", "specificity", "roc_auc", "pr_auc", "threshold", "n",
                "confusion_matrix", "per_class", "macro"):
        assert key in m
    assert m["n"] == 314


@needs_real
def test_audit_finds_the_squash_that_separates_the_real_training_classes(tmp_path):
    # Every 20th training image per class (67 NORMAL, 194 PNEUMONIA), linked into a split folder.
    from pneumoscope.data.audit import audit

    for cls in ("NORMAL", "PNEUMONIA"):
        (tmp_path / cls).mkdir()
        for f in sorted((REAL / "train" / cls).iterdir())[::20]:
            (tmp_path / cls / f.name).symlink_to(f)
    rows = {r.cue: r for r in audit(tmp_path, progress=False).rows}
    assert rows["aspect"].flag == "constant"  # all 224 x 224: the originals' shape is gone...
    assert rows["anisotropy"].class_auc > 0.75 and rows["anisotropy"].flag == "strong"  # ...but not their squash
    assert 0.35 < rows["brightness"].class_auc < 0.65  # equal exposure on average
    # A lead marker at the top left is several times as common on PNEUMONIA (0.73 over all of train).
    assert rows["marks_tl"].class_auc > 0.65 and rows["marks_tl"].flag in ("moderate", "strong")
