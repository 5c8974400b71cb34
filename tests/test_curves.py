"""curves.png from train, its plot from metrics.csv, and the demo report that shows it."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from pneumoscope.config import load_config
from pneumoscope.training import train
from pneumoscope.training.curves import plot_training_curves, read_metrics

TINY = {
    "model.backbone": "vgg_tiny", "model.weights": "none", "data.image_size": 32, "data.val_source": "val",
    "train.precision": "fp32", "train.device": "cpu", "train.batch_size": 16,
    "train.stages": [
        {"name": "stage1", "epochs": 2, "lr": 1e-3, "trainable_from": None},
        {"name": "stage2", "epochs": 1, "lr": 1e-4, "trainable_from": "block3_conv1"},
    ],
}

HEADER = "epoch,stage,train_loss,train_acc,val_loss,val_acc,val_auc,lr,seconds\n"


def test_train_writes_curves_png(tmp_path, synth_root):
    out = tmp_path / "run"
    train(load_config(None, TINY), synth_root, out, progress=False)
    png = out / "curves.png"
    assert png.is_file()
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[1] > 2 * img.shape[0]  # three panels side by side
    assert (img < 200).any(axis=2).mean() > 0.01  # something is drawn, not a blank canvas
    assert [r["stage"] for r in read_metrics(out / "metrics.csv")] == ["stage1", "stage1", "stage2"]
    assert not list(out.glob("*.tmp*")) and not list(out.glob(".*curves*"))


def test_plot_reads_nan_and_skips_an_empty_log(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(HEADER)
    assert plot_training_curves(csv_path, tmp_path / "empty.png") is None
    assert not (tmp_path / "empty.png").exists()
    # An epoch whose validation AUC is undefined (one class) is a gap in the curve, not an error.
    csv_path.write_text(HEADER + "1,scratch,0.7,0.5,0.69,0.5,nan,0.001,1.0\n2,scratch,0.5,0.8,0.4,0.9,0.95,0.0005,1.0\n")
    rows = read_metrics(csv_path)
    assert np.isnan(rows[0]["val_auc"]) and rows[1]["lr"] == 0.0005
    assert plot_training_curves(csv_path, tmp_path / "c.png") == tmp_path / "c.png"
    assert Image.open(tmp_path / "c.png").format == "PNG"


def test_demo_report_shows_the_training_curves_and_writes_demo_json(tmp_path):
    from pneumoscope.demo import run_demo

    overrides = {k: v for k, v in TINY.items() if k != "data.val_source"}
    r = run_demo(tmp_path / "demo", n=48, size=48, seed=1, overrides=overrides, progress=False, shortcut=False)
    html = r.report.read_text()
    assert "<h2>Training</h2>" in html and "Loss, validation ROC AUC and learning rate" in html
    assert (tmp_path / "demo" / "run" / "curves.png").is_file()
    doc = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert list(doc["steps"]) == ["synth", "train", "evaluate", "explain", "report"]
    assert all(v["wall"] >= 0 and v["cpu"] >= 0 for v in doc["steps"].values())
    assert doc["accuracy"] == r.metrics["accuracy"] and doc["shortcut"] is None and doc["epochs"] == 3
    assert sum(v["wall"] for v in doc["steps"].values()) <= doc["seconds"] + 0.5
    assert "cores" in doc["machine"] and "CPU" in html
