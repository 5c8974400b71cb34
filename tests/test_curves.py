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


def test_metrics_csv_leaves_pointing_empty_unless_scored_and_a_resumed_file_keeps_its_columns(tmp_path, synth_root):
    out = tmp_path / "run"
    train(load_config(None, TINY), synth_root, out, progress=False)
    text = (out / "metrics.csv").read_text().splitlines()
    assert text[0] == "epoch,stage,train_loss,train_acc,val_loss,val_acc,val_auc,val_pointing,lr,samples,seconds"
    assert all(np.isnan(r["val_pointing"]) for r in read_metrics(out / "metrics.csv"))
    # A file started by an older version (no val_pointing column) gets rows in its own columns.
    from pneumoscope.training.callbacks import MetricsCSV

    old = tmp_path / "old.csv"
    old.write_text(HEADER)

    class _Trainer:
        is_global_zero, current_epoch, optimizers = True, 0, []
        callback_metrics = {"val_pointing": 0.5, "val_loss": 0.25}

    MetricsCSV(old, "scratch", 3).on_train_epoch_end(_Trainer(), None)  # type: ignore[arg-type]
    lines = old.read_text().splitlines()
    assert lines[0] + "\n" == HEADER and lines[1].startswith("4,scratch,") and len(lines[1].split(",")) == 9


def test_the_curves_draw_pointing_and_the_kept_epoch(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    head = "epoch,stage,train_loss,train_acc,val_loss,val_acc,val_auc,val_pointing,lr,samples,seconds\n"
    csv_path.write_text(head + "1,s,0.7,0.5,0.6,0.5,0.8,0.2,0.001,8,1.0\n2,s,0.5,0.8,0.4,0.9,0.95,0.9,0.001,8,1.0\n")
    assert read_metrics(csv_path)[1]["val_pointing"] == 0.9
    plain = np.asarray(Image.open(plot_training_curves(csv_path, tmp_path / "a.png")).convert("RGB")).astype(int)
    marked = np.asarray(Image.open(plot_training_curves(csv_path, tmp_path / "b.png", kept_epoch=2)).convert("RGB"))
    assert plain.shape == marked.shape and (np.abs(plain - marked).sum(axis=2) > 60).mean() > 0.001
    purple = (np.abs(plain - np.array([0x94, 0x67, 0xBD])).sum(axis=2) < 40).sum()
    assert purple > 50  # the pointing series is drawn in its own colour


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
