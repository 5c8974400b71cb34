"""Operating point and temperature in checkpoints, training, evaluate and `pneumoscope calibrate`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import assert_user_error

import pneumoscope
from pneumoscope.checkpoint import (
    FORMAT,
    read_metadata,
    save_checkpoint,
    update_checkpoint,
)
from pneumoscope.config import load_config
from pneumoscope.data.transforms import Preprocessing
from pneumoscope.errors import CheckpointError, ConfigError
from pneumoscope.inference import Predictor

OP = {"method": "youden", "threshold": 0.3, "target_sensitivity": None, "margin": 0.0, "sensitivity": 0.9,
      "specificity": 0.8, "n": 50, "n_positive": 30, "n_negative": 20}


def _save(path, **kw):
    m = pneumoscope.create_model("vgg_tiny")
    save_checkpoint(path, m, architecture="vgg_tiny", preprocessing=Preprocessing(32), target_layer="block3_conv1",
                    threshold=0.3, **kw)
    return m


# --------------------------------------------------------------------------- checkpoint


def test_checkpoint_round_trips_temperature_and_operating_point(tmp_path):
    _save(tmp_path / "a.ckpt", temperature=1.7, operating_point=OP)
    ck = pneumoscope.load_checkpoint(tmp_path / "a.ckpt")
    assert ck.temperature == 1.7 and ck.operating_point == OP and ck.threshold == 0.3
    assert read_metadata(tmp_path / "a.ckpt")["format_version"] == 3


def test_update_checkpoint_rewrites_metadata_and_keeps_weights(tmp_path):
    m = _save(tmp_path / "a.ckpt", info={"data": "x"})
    update_checkpoint(tmp_path / "a.ckpt", tmp_path / "b.ckpt", threshold=0.42, temperature=2.0, operating_point=OP,
                      info={"calibration": {"k": 1}})
    assert read_metadata(tmp_path / "a.ckpt")["threshold"] == 0.3  # the source is untouched
    b = pneumoscope.load_checkpoint(tmp_path / "b.ckpt")
    assert (b.threshold, b.temperature, b.operating_point) == (0.42, 2.0, OP)
    assert b.info == {"data": "x", "calibration": {"k": 1}}
    for k, v in m.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="temperature"):
        update_checkpoint(tmp_path / "b.ckpt", threshold=0.5, temperature=0.0, operating_point=None)


def test_format_1_checkpoint_without_the_fields_loads_with_temperature_one(tmp_path):
    from safetensors.torch import save_file

    m = pneumoscope.create_model("vgg_tiny")
    meta = {"format": FORMAT, "format_version": 1, "architecture": "vgg_tiny", "num_classes": 2,
            "class_names": ["NORMAL", "PNEUMONIA"], "preprocessing": Preprocessing(32).to_dict(),
            "target_layer": "block3_conv1", "threshold": 0.5, "config": {}, "info": {}}
    p = tmp_path / "old.ckpt"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(p), metadata={"pneumoscope": json.dumps(meta)})
    ck = pneumoscope.load_checkpoint(p)
    assert ck.temperature == 1.0 and ck.operating_point is None and ck.threshold == 0.5


def test_bad_stored_temperature_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="temperature"):
        _save(tmp_path / "a.ckpt", temperature=-1.0)


def test_predictor_applies_the_temperature(tmp_path):
    _save(tmp_path / "t1.ckpt")
    update_checkpoint(tmp_path / "t1.ckpt", tmp_path / "t3.ckpt", threshold=0.5, temperature=3.0, operating_point=None)
    x = torch.randn(4, 3, 32, 32)
    p1 = Predictor(tmp_path / "t1.ckpt", device="cpu", precision="fp32")
    p3 = Predictor(tmp_path / "t3.ckpt", device="cpu", precision="fp32")
    logits = p1.logits(x)
    assert torch.allclose(p3.probabilities(x), (logits / 3.0).softmax(1)[:, 1], atol=1e-6)
    assert torch.allclose(p1.probabilities(x), logits.softmax(1)[:, 1], atol=1e-6)
    exp = pneumoscope.explain(p3.ckpt.model, x, layer="block3_conv1", temperature=3.0)
    assert torch.allclose(exp.probs[:, 1], p3.probabilities(x), atol=1e-5)


# --------------------------------------------------------------------------- config


def test_config_sections_yaml_and_set(tmp_path):
    cfg = load_config("seed")
    assert cfg.operating_point.method == "fixed" and cfg.train.threshold == 0.5 and cfg.calibration.temperature
    cfg = load_config(None, {"operating_point.method": "sensitivity", "operating_point.target_sensitivity": "0.9",
                             "calibration.temperature": "false"})
    assert cfg.operating_point.target_sensitivity == 0.9 and cfg.calibration.temperature is False
    assert cfg.to_dict()["operating_point"]["method"] == "sensitivity"
    with pytest.raises(ConfigError, match="operating_point.method"):
        load_config(None, {"operating_point.method": "oracle"})
    with pytest.raises(ConfigError, match="target_sensitivity"):
        load_config(None, {"operating_point.target_sensitivity": 1.5})


# --------------------------------------------------------------------------- train


def test_training_stores_the_validation_operating_point(tiny_run, tiny_ckpt):
    meta = read_metadata(tiny_ckpt)
    summary = json.loads((tiny_run / "summary.json").read_text())
    op = meta["operating_point"]
    assert op["method"] == "youden" and op["val_source"] == "val" and op["n"] == summary["n_val"]
    assert meta["threshold"] == op["threshold"] == summary["threshold"]
    assert meta["temperature"] == summary["temperature"] > 0
    assert summary["operating_point"]["threshold"] == op["threshold"]
    assert {"ece", "mce", "n_bins", "brier"} <= set(summary["val_calibration"])


# --------------------------------------------------------------------------- evaluate


def test_evaluate_reports_intervals_calibration_and_the_stored_threshold(run_cli, tiny_ckpt, synth_root, tmp_path):
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", synth_root, "--out", out,
                     "--device", "cpu", "--precision", "fp32", "--bootstrap", "300")
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    meta = read_metadata(tiny_ckpt)
    assert m["threshold"] == meta["threshold"] and m["threshold_source"] == "checkpoint"
    assert m["temperature"] == meta["temperature"] and m["operating_point"] == meta["operating_point"]
    assert set(m["calibration"]) == {"ece", "mce", "n_bins", "brier"} and m["calibration"]["n_bins"] == 15
    for k in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        lo, hi = m["ci95"][k]
        assert lo <= m[k] <= hi
    assert m["ci_method"]["n_resamples"] == 300 and m["ci_method"]["unit"] in ("image", "patient")
    assert (out / "reliability.png").stat().st_size > 1000
    assert "[" in result.stderr and "threshold" in result.stderr

    out2 = tmp_path / "eval2"
    result = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", synth_root, "--out", out2,
                     "--device", "cpu", "--threshold", "0.3", "--bootstrap", "0")
    assert result.exit_code == 0, result.output
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["threshold"] == 0.3 and m2["threshold_source"] == "flag" and "ci95" not in m2


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--threshold", "youden"), ("evaluation data", "pneumoscope calibrate")),
        (("--threshold", "1.5"), ("--threshold", "(0, 1)")),
        (("--bootstrap", "50"), ("--bootstrap",)),
    ],
)
def test_evaluate_refuses_thresholds_from_the_test_set(run_cli, tiny_ckpt, synth_root, tmp_path, args, needles):
    result = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", synth_root, "--out", tmp_path / "e", *args)
    assert_user_error(result, *needles)
    assert not (tmp_path / "e").exists()


# --------------------------------------------------------------------------- calibrate


def test_calibrate_writes_a_new_checkpoint_with_the_new_operating_point(run_cli, tiny_run, synth_root, tmp_path):
    src = tiny_run / "best.ckpt"
    new = tmp_path / "screen.ckpt"
    result = run_cli("calibrate", "--checkpoint", src, "--data", synth_root, "--method", "sensitivity",
                     "--target-sensitivity", "1.0", "--out", new, "--device", "cpu", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    assert "operating point sensitivity" in result.stderr
    assert "warning: operating point chosen on only" in result.stderr  # a handful of val images
    op = read_metadata(new)["operating_point"]
    assert op["method"] == "sensitivity" and op["sensitivity"] == 1.0 and op["val_source"] == "val"
    assert read_metadata(src)["operating_point"]["method"] == "youden"  # original untouched
    # predict uses the new threshold.
    result = run_cli("predict", synth_root / "test", "--checkpoint", new, "--device", "cpu")
    assert result.exit_code == 0
    assert f",{read_metadata(new)['threshold']}," in result.stdout

    fixed = tmp_path / "fixed.ckpt"
    result = run_cli("calibrate", "--checkpoint", src, "--data", synth_root, "--threshold", "0.5",
                     "--no-temperature", "--out", fixed, "--device", "cpu")
    assert result.exit_code == 0, result.output
    meta = read_metadata(fixed)
    assert meta["threshold"] == 0.5 and meta["temperature"] == 1.0 and meta["operating_point"]["method"] == "fixed"


def test_calibrate_in_place(run_cli, tiny_run, synth_root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    result = run_cli("calibrate", "--checkpoint", run / "best.ckpt", "--data", synth_root, "--method", "fixed",
                     "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert read_metadata(run / "best.ckpt")["operating_point"]["method"] == "fixed"
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_calibrate_split_must_match_the_runs_splits_csv(run_cli, tiny_run, synth_root, tmp_path):
    # tiny_run validated on val/; the patient-level split of train is other images.
    result = run_cli("calibrate", "--checkpoint", tiny_run / "best.ckpt", "--data", synth_root,
                     "--val-source", "split", "--out", tmp_path / "x.ckpt")
    assert_user_error(result, "splits.csv", "trained on")
    assert not (tmp_path / "x.ckpt").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("--method", "youden", "--threshold", "0.4"), ("--method fixed",)),
        (("--method", "sensitivity", "--target-sensitivity", "1.2"), ("target_sensitivity",)),
    ],
)
def test_calibrate_user_errors(run_cli, tiny_ckpt, synth_root, tmp_path, args, needles):
    result = run_cli("calibrate", "--checkpoint", tiny_ckpt, "--data", synth_root, "--out", tmp_path / "x.ckpt", *args)
    assert_user_error(result, *needles)


def test_calibrate_missing_checkpoint(run_cli, synth_root, tmp_path):
    result = run_cli("calibrate", "--checkpoint", tmp_path / "nope.ckpt", "--data", synth_root)
    assert_user_error(result, "nope.ckpt", "not found")


def test_calibrate_refuses_a_single_class_validation_set(run_cli, tiny_ckpt, synth_root, tmp_path):
    # A manifest can hold a val split of one class (a folder layout cannot: see below), and then
    # the operating point itself must refuse it.
    rows = ["path,label,split"]
    for split in ("train", "val"):
        for f in sorted((synth_root / split).rglob("*.png")):
            if split == "train" or f.parent.name == "PNEUMONIA":
                rows.append(f"{f},{f.parent.name},{split}")
    manifest = tmp_path / "one-class-val.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    n_val = sum(1 for r in rows if r.endswith(",val"))
    out = tmp_path / "x.ckpt"
    before = tiny_ckpt.read_bytes()
    result = run_cli("calibrate", "--checkpoint", tiny_ckpt, "--data", manifest, "--out", out)
    assert_user_error(result, f"validation data has no NORMAL images ({n_val} images)", "needs both classes")
    assert not out.exists() and tiny_ckpt.read_bytes() == before

    # The same split as folders: the empty NORMAL/ folder is named before anything is computed.
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    shutil.rmtree(data / "val" / "NORMAL")
    (data / "val" / "NORMAL").mkdir()
    result = run_cli("calibrate", "--checkpoint", tiny_ckpt, "--data", data, "--out", out)
    assert_user_error(result, str(data / "val" / "NORMAL"), "no images of class NORMAL")
    assert not out.exists()


# --------------------------------------------------------------------------- report


def test_report_shows_intervals_operating_point_and_reliability(tmp_path):
    import numpy as np

    from pneumoscope.evaluation.bootstrap import bootstrap_ci
    from pneumoscope.evaluation.calibration import calibration_summary
    from pneumoscope.evaluation.metrics import compute_metrics
    from pneumoscope.evaluation.plots import plot_reliability
    from pneumoscope.report.html import write_report

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 80), 0, 1)
    m = compute_metrics(y, p, 0.3)
    m["ci95"], m["ci_method"] = bootstrap_ci(y, p, 0.3, n_resamples=200)
    m.update(threshold_source="checkpoint", temperature=1.5, operating_point={**OP, "val_source": "split"},
             calibration=calibration_summary(y, p))
    plot = plot_reliability(y, p, tmp_path / "reliability.png", temperature=1.5)
    text = write_report(tmp_path / "r", title="t", metrics=m, plots={"reliability": plot}).read_text()
    lo, hi = m["ci95"]["accuracy"]
    assert f"95% CI {lo:.4f} to {hi:.4f}" in text
    assert "Reliability diagram" in text and "data:image/png;base64" in text
    assert "chosen by <b>youden</b>" in text and "200 resamples of the 80 test images" in text
    assert f"{m['calibration']['ece']:.4f}" in text


def test_calibrate_on_the_rederived_patient_split(run_cli, tiny_ckpt, synth_root, tmp_path):
    from pneumoscope.data.dataset import load_splits
    from pneumoscope.training.run import _write_splits

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy2(tiny_ckpt, run / "best.ckpt")
    cfg = read_metadata(tiny_ckpt)["config"]
    splits = load_splits(synth_root, "split", cfg["data"]["val_fraction"], cfg["train"]["seed"])
    _write_splits(run / "splits.csv", {"train": splits.train, "val": splits.val})
    result = run_cli("calibrate", "--checkpoint", run / "best.ckpt", "--data", synth_root, "--val-source", "split",
                     "--method", "fixed", "--device", "cpu")
    assert result.exit_code == 0, result.output
    op = read_metadata(run / "best.ckpt")["operating_point"]
    assert op["val_source"] == "split" and op["n"] == len(splits.val)


def test_training_keeps_the_configured_threshold_when_validation_has_one_class(tiny_ckpt, synth_root, tmp_path):
    from pneumoscope.data.dataset import scan_split_folder
    from pneumoscope.training.run import _calibrate

    ckpt = tmp_path / "best.ckpt"
    shutil.copy2(tiny_ckpt, ckpt)
    only_pneumonia = [s for s in scan_split_folder(synth_root / "val") if s.label == 1]
    logits = torch.randn(len(only_pneumonia), 2)
    labels = np.array([s.label for s in only_pneumonia])
    cfg = load_config(None, {"train.threshold": 0.4})
    with pytest.warns(UserWarning, match="keeping threshold 0.4"):
        out = _calibrate(ckpt, logits, labels, cfg, "val")
    assert out == {"threshold": 0.4, "temperature": 1.0, "operating_point": None}
    assert read_metadata(ckpt)["operating_point"] == read_metadata(tiny_ckpt)["operating_point"]  # untouched


def test_augmented_validation_operating_point(run_cli, tiny_run, synth_root, tmp_path):
    """--augment-draws N: threshold chosen on N augmented passes, recorded, reproducible."""
    src = tiny_run / "best.ckpt"
    outs = []
    for name in ("a.ckpt", "b.ckpt"):
        new = tmp_path / name
        result = run_cli("calibrate", "--checkpoint", src, "--data", synth_root, "--augment-draws", "3",
                         "--out", new, "--device", "cpu", "--precision", "fp32")
        assert result.exit_code == 0, result.output
        assert "on 3 augmented passes" in result.stderr
        outs.append(read_metadata(new))
    op = outs[0]["operating_point"]
    assert op["augment_draws"] == 3 and op["method"] == "youden"
    # The recorded validation figures are those of the plain validation images at that threshold.
    n_val = len(list((synth_root / "val").rglob("*.png")))
    assert op["n"] == n_val
    assert outs[0]["threshold"] == outs[1]["threshold"]  # seeded: same config, same threshold
    plain = tmp_path / "plain.ckpt"
    assert run_cli("calibrate", "--checkpoint", src, "--data", synth_root, "--out", plain,
                   "--device", "cpu", "--precision", "fp32").exit_code == 0
    assert read_metadata(plain)["operating_point"]["augment_draws"] == 0


def test_augmented_logits_follow_the_augmentation():
    from pneumoscope.training.calibrate import augmented_logits

    m = pneumoscope.create_model("vgg_tiny").eval()
    pred = Predictor.__new__(Predictor)  # a bare Predictor around an in-memory model

    class _Ck:
        model = m
        preprocessing = Preprocessing(32)

    pred.ckpt, pred.batch_size, pred.device, pred.precision = _Ck, 8, torch.device("cpu"), "fp32"
    images = torch.randint(0, 256, (5, 32, 32), dtype=torch.uint8)
    off = load_config("demo", {"data.augment.hflip": False, "data.augment.rotation_deg": 0.0, "data.augment.zoom": 0.0})
    on = load_config("demo", {"data.augment.gamma": 0.5, "data.augment.translate": 0.1})
    same = augmented_logits(pred, images, off, 2)
    assert same.shape == (10, 2)
    torch.testing.assert_close(same[:5], same[5:])  # identity augmentation: both passes equal
    moved = augmented_logits(pred, images, on, 2)
    assert not torch.allclose(moved[:5], moved[5:])
    torch.testing.assert_close(moved, augmented_logits(pred, images, on, 2))  # seeded
