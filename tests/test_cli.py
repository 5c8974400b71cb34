"""End-to-end tests of the ``pneumoscope`` CLI, in-process with typer's CliRunner.

Contract under test: user mistakes print one ``error: …`` line naming the file/problem and exit 2
with no traceback; ``predict``/``explain`` report per-file failures in their rows and exit 1;
warnings print as ``warning: …``. Sized for a 2-core CPU (vgg_tiny, 32 px, 1 epoch per stage).
"""

from __future__ import annotations

import csv
import io
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TINY_BACKBONE,
    TINY_IMAGE_SIZE,
    assert_user_error,
    copy_tree,
    tiny_train_args,
    write_dicom_without_pixels,
    write_random_bytes,
    write_text_as_image,
    write_truncated_jpeg,
    write_zero_byte,
)

PRED_COLUMNS = ["path", "label", "prob_pneumonia", "threshold", "error"]
CLASSES = {"NORMAL", "PNEUMONIA"}


def _ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        assert reader.fieldnames == PRED_COLUMNS
    return rows


# --------------------------------------------------------------------------- 1. train + info


def test_train_writes_run_folder(tiny_run):
    for name in ("best.ckpt", "config.yaml", "metrics.csv", "summary.json"):
        assert (tiny_run / name).is_file(), name
        assert (tiny_run / name).stat().st_size > 0, name

    with open(tiny_run / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["epoch"], r["stage"]) for r in rows] == [("1", "stage1"), ("2", "stage2")]
    for r in rows:
        assert np.isfinite(float(r["train_loss"])) and np.isfinite(float(r["val_loss"]))

    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["backbone"] == TINY_BACKBONE
    assert summary["image_size"] == TINY_IMAGE_SIZE
    assert summary["val_source"] == "val"
    assert summary["epochs_run"] == 2
    assert summary["best_epoch"] in (1, 2)

    import yaml

    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg["model"]["backbone"] == TINY_BACKBONE
    assert cfg["data"]["image_size"] == TINY_IMAGE_SIZE
    assert [s["epochs"] for s in cfg["train"]["stages"]] == [1, 1]


def test_info_prints_checkpoint_metadata(run_cli, tiny_ckpt):
    result = run_cli("info", tiny_ckpt)
    _ok(result)
    meta = json.loads(result.stdout)
    assert meta["architecture"] == TINY_BACKBONE
    assert meta["preprocessing"]["image_size"] == TINY_IMAGE_SIZE
    assert meta["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert meta["target_layer"] == "block3_conv1"
    assert "config" not in meta  # info drops the bulky config


def test_info_missing_checkpoint(run_cli, tmp_path):
    missing = tmp_path / "nope.ckpt"
    assert_user_error(run_cli("info", missing), str(missing), "not found")


# --------------------------------------------------------------------------- 2. out folder / resume


def test_train_refuses_non_empty_out(run_cli, synth_root, tiny_run, tiny_config):
    before = (tiny_run / "best.ckpt").read_bytes()
    result = run_cli(*tiny_train_args(synth_root, tiny_run, tiny_config, "--val-source", "val"))
    assert_user_error(result, str(tiny_run), "--resume")
    assert (tiny_run / "best.ckpt").read_bytes() == before


def test_train_resume_finished_run(run_cli, synth_root, tiny_run, tiny_config, tmp_path):
    run = copy_tree(tiny_run, tmp_path / "run")
    ckpt_before = (run / "best.ckpt").read_bytes()
    metrics_before = (run / "metrics.csv").read_text()
    result = run_cli(*tiny_train_args(synth_root, run, tiny_config, "--val-source", "val", "--resume"))
    _ok(result)
    # Both stages were already complete: nothing retrained, nothing re-exported.
    assert (run / "metrics.csv").read_text() == metrics_before
    assert (run / "best.ckpt").read_bytes() == ckpt_before
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2


def test_train_resume_without_state(run_cli, synth_root, tiny_config, tmp_path):
    out = tmp_path / "fresh"
    result = run_cli(*tiny_train_args(synth_root, out, tiny_config, "--val-source", "val", "--resume"))
    assert_user_error(result, str(out), "nothing to resume")


# --------------------------------------------------------------------------- 3. evaluate


EXPECTED_METRIC_KEYS = {
    "accuracy", "precision", "recall", "f1", "specificity", "roc_auc", "pr_auc",
    "threshold", "n", "confusion_matrix", "per_class", "macro",
}


@pytest.mark.parametrize("which", ["split_folder", "root"])
def test_evaluate_writes_metrics_and_plots(run_cli, tiny_ckpt, synth_root, tmp_path, which):
    data = synth_root / "test" if which == "split_folder" else synth_root
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", data, "--out", out,
                     "--precision", "fp32", "--device", "cpu")
    _ok(result)
    n_test = len(list((synth_root / "test").rglob("*.png")))

    m = json.loads((out / "metrics.json").read_text())
    assert EXPECTED_METRIC_KEYS <= set(m), EXPECTED_METRIC_KEYS - set(m)
    assert m["n"] == n_test
    cm = np.asarray(m["confusion_matrix"])
    assert cm.shape == (2, 2)
    assert cm.sum() == m["n"]
    # Row sums are the true class counts of the test split.
    n_pneu = len(list((synth_root / "test" / "PNEUMONIA").glob("*.png")))
    assert cm[1].sum() == n_pneu and cm[0].sum() == n_test - n_pneu
    assert set(m["per_class"]) == CLASSES
    assert {"precision", "recall", "f1"} <= set(m["macro"])
    # The operating point chosen on validation at the end of training, not 0.5.
    from pneumoscope.checkpoint import read_metadata

    assert m["threshold"] == read_metadata(tiny_ckpt)["threshold"] and m["threshold_source"] == "checkpoint"
    assert 0.0 <= m["accuracy"] <= 1.0
    # Every headline figure is a number computed from the confusion matrix, not metadata.
    tn, fp, fn, tp = cm.ravel()
    assert m["precision"] == pytest.approx(tp / (tp + fp) if tp + fp else 0.0)
    assert m["recall"] == pytest.approx(tp / (tp + fn)) and m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["compute_precision"] == "fp32"
    assert m["roc_auc"] is not None and 0.0 <= m["roc_auc"] <= 1.0
    # Root resolves to its test/ split.
    assert Path(m["data"]) == synth_root / "test"

    for png in ("confusion_matrix.png", "roc.png", "pr.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    with open(out / "predictions.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == n_test
    assert "accuracy" in result.stderr


# --------------------------------------------------------------------------- 4. predict


def test_predict_folder_with_bad_file_csv(run_cli, tiny_ckpt, copy_images, tmp_path):
    folder = copy_images(4)
    bad = write_text_as_image(folder / "zz-bad.jpeg")
    out = tmp_path / "preds.csv"
    result = run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--out", out, "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)

    rows = _read_csv(out)
    assert len(rows) == 5
    by_path = {r["path"]: r for r in rows}
    assert by_path[str(bad)]["error"]
    assert by_path[str(bad)]["label"] == ""
    assert by_path[str(bad)]["prob_pneumonia"] == ""
    good = [r for r in rows if r["path"] != str(bad)]
    for r in good:
        assert r["error"] == ""
        assert r["label"] in CLASSES
        p = float(r["prob_pneumonia"])
        assert 0.0 <= p <= 1.0
        assert r["label"] == ("PNEUMONIA" if p >= float(r["threshold"]) else "NORMAL")
    # The failure is reported on stderr, naming the file.
    assert any(line.startswith("error: ") and str(bad) in line for line in result.stderr.splitlines())


def test_predict_all_good_exits_zero_stdout_csv(run_cli, tiny_ckpt, copy_images):
    folder = copy_images(3)
    result = run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--device", "cpu")
    _ok(result)
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 3
    assert list(rows[0]) == PRED_COLUMNS
    assert all(r["label"] in CLASSES and r["error"] == "" for r in rows)


def test_predict_json_output(run_cli, tiny_ckpt, copy_images, tmp_path):
    folder = copy_images(3)
    out = tmp_path / "sub" / "x.json"
    result = run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--out", out, "--device", "cpu")
    _ok(result)
    data = json.loads(out.read_text())
    assert isinstance(data, list) and len(data) == 3
    for row in data:
        assert set(row) == set(PRED_COLUMNS)
        assert row["label"] in CLASSES and row["error"] == ""
        assert 0.0 <= row["prob_pneumonia"] <= 1.0


def test_predict_with_explain_writes_overlays(run_cli, tiny_ckpt, copy_images, tmp_path):
    folder = copy_images(2)
    cams = tmp_path / "cams"
    out = tmp_path / "preds.csv"
    result = run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--out", out, "--explain", cams, "--device", "cpu")
    _ok(result)
    assert len(_read_csv(out)) == 2
    assert len(list(cams.glob("*.overlay.png"))) == 2
    assert len(list(cams.glob("*.cam.npy"))) == 2
    assert (cams / "manifest.json").is_file()


BAD_FILES = [
    ("zero_byte", write_zero_byte, "x.jpeg", ("empty",)),
    ("text_as_jpeg", write_text_as_image, "x.jpeg", ("not a recognised image",)),
    ("truncated_jpeg", write_truncated_jpeg, "x.jpeg", ("truncated",)),
    ("dicom_no_pixels", write_dicom_without_pixels, "x.dcm", ("pixel data",)),
]


@pytest.mark.parametrize("kind,writer,name,needles", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_predict_bad_file_row_error(run_cli, tiny_ckpt, test_images, tmp_path, kind, writer, name, needles):
    bad = writer(tmp_path / name)
    good = test_images[0]
    out = tmp_path / "preds.csv"
    result = run_cli("predict", good, bad, "--checkpoint", tiny_ckpt, "--out", out, "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    rows = _read_csv(out)
    assert [r["path"] for r in rows] == [str(good), str(bad)]
    assert rows[0]["error"] == "" and rows[0]["label"] in CLASSES
    err = rows[1]["error"]
    assert err and rows[1]["label"] == ""
    assert "\n" not in err
    for needle in needles:
        assert needle in err.lower(), err


def test_predict_missing_input(run_cli, tiny_ckpt, tmp_path):
    missing = tmp_path / "nothing-here.png"
    assert_user_error(run_cli("predict", missing, "--checkpoint", tiny_ckpt), str(missing))


# --------------------------------------------------------------------------- 5. explain


def test_explain_writes_overlays_maps_manifest(run_cli, tiny_ckpt, copy_images, tmp_path):
    folder = copy_images(3)
    out = tmp_path / "exp"
    result = run_cli("explain", folder, "--checkpoint", tiny_ckpt, "--out", out, "--device", "cpu",
                     "--precision", "fp32")
    _ok(result)
    inputs = sorted(folder.iterdir())
    for p in inputs:
        overlay = out / f"{p.stem}.overlay.png"
        cam = out / f"{p.stem}.cam.npy"
        assert overlay.read_bytes()[:4] == b"\x89PNG", overlay
        arr = np.load(cam)
        assert arr.ndim == 2 and np.isfinite(arr).all()
    assert len(list(out.glob("*.overlay.png"))) == 3
    assert len(list(out.glob("*.cam.npy"))) == 3

    man = json.loads((out / "manifest.json").read_text())
    assert man["method"] == "gradcam"
    assert man["layer"] == "block3_conv1"
    assert man["target"] == "predicted"
    assert man["architecture"] == TINY_BACKBONE
    assert {"pneumoscope", "torch", "torchvision"} <= set(man["versions"])
    assert len(man["images"]) == 3
    for entry in man["images"]:
        probs = entry["probabilities"]
        assert set(probs) == CLASSES
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert entry["prob_pneumonia"] == pytest.approx(probs["PNEUMONIA"])
        assert entry["target"] == entry["label"]  # target "predicted" explains the predicted class
        assert (out / entry["overlay"]).is_file() and (out / entry["raw_map"]).is_file()


def test_explain_heatmap_style_and_target(run_cli, tiny_ckpt, copy_images, tmp_path):
    folder = copy_images(2)
    out = tmp_path / "exp"
    result = run_cli("explain", folder, "--checkpoint", tiny_ckpt, "--out", out, "--device", "cpu",
                     "--style", "heatmap", "--target", "NORMAL")
    _ok(result)
    man = json.loads((out / "manifest.json").read_text())
    assert man["style"] == "heatmap"
    assert man["target"] == "NORMAL"
    assert all(e["target"] == "NORMAL" for e in man["images"])
    assert len(list(out.glob("*.overlay.png"))) == 2


def test_explain_unknown_layer_lists_valid_layers(run_cli, tiny_ckpt, copy_images, tmp_path):
    folder = copy_images(1)
    out = tmp_path / "exp"
    result = run_cli("explain", folder, "--checkpoint", tiny_ckpt, "--out", out, "--layer", "nope")
    line = assert_user_error(result, "nope", "block1_conv1", "block3_conv1")
    assert "valid layers" in line
    assert not out.exists()


def test_explain_unknown_target(run_cli, tiny_ckpt, copy_images, tmp_path):
    folder = copy_images(1)
    out = tmp_path / "exp"
    result = run_cli("explain", folder, "--checkpoint", tiny_ckpt, "--out", out, "--target", "COVID")
    assert_user_error(result, "COVID", "PNEUMONIA")
    assert not out.exists()


def test_explain_bad_file_is_per_row(run_cli, tiny_ckpt, copy_images, tmp_path):
    folder = copy_images(2)
    bad = write_zero_byte(folder / "zz-empty.png")
    out = tmp_path / "exp"
    result = run_cli("explain", folder, "--checkpoint", tiny_ckpt, "--out", out, "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    man = json.loads((out / "manifest.json").read_text())
    errs = [e for e in man["images"] if "error" in e]
    assert [e["path"] for e in errs] == [str(bad)]
    assert len(list(out.glob("*.overlay.png"))) == 2


# --------------------------------------------------------------------------- 6. bad input → exit 2


def test_train_missing_data_folder(run_cli, tiny_config, tmp_path):
    missing = tmp_path / "no-such-data"
    out = tmp_path / "run"
    result = run_cli(*tiny_train_args(missing, out, tiny_config))
    assert_user_error(result, str(missing))


def test_train_class_without_images(run_cli, synth_root, tiny_config, tmp_path):
    data = copy_tree(synth_root, tmp_path / "data", ignore=("masks", "lungs", "manifest.csv"))
    for p in (data / "train" / "PNEUMONIA").iterdir():
        p.unlink()
    result = run_cli(*tiny_train_args(data, tmp_path / "run", tiny_config, "--val-source", "val"))
    assert_user_error(result, str(data / "train" / "PNEUMONIA"), "PNEUMONIA")


def test_evaluate_unreadable_checkpoint(run_cli, synth_root, tmp_path):
    ckpt = write_random_bytes(tmp_path / "best.ckpt")
    result = run_cli("evaluate", "--checkpoint", ckpt, "--data", synth_root, "--out", tmp_path / "eval")
    assert_user_error(result, str(ckpt), "checkpoint")
    assert not (tmp_path / "eval").exists()


def test_evaluate_foreign_safetensors(run_cli, synth_root, tmp_path):
    from safetensors.torch import save_file

    ckpt = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(ckpt))
    result = run_cli("evaluate", "--checkpoint", ckpt, "--data", synth_root, "--out", tmp_path / "eval")
    assert_user_error(result, str(ckpt), "not a pneumoscope checkpoint")


def test_evaluate_checkpoint_claiming_other_architecture(run_cli, synth_root, tiny_ckpt, tmp_path):
    from pneumoscope.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    meta = read_metadata(tiny_ckpt)
    ck = load_checkpoint(tiny_ckpt)
    fake = save_checkpoint(
        tmp_path / "liar.ckpt", ck.model, architecture="vgg_small", preprocessing=ck.preprocessing,
        target_layer=meta["target_layer"], threshold=meta["threshold"], config=meta["config"], info=meta["info"],
    )
    result = run_cli("evaluate", "--checkpoint", fake, "--data", synth_root, "--out", tmp_path / "eval")
    assert_user_error(result, str(fake), "architecture", "vgg_small")
    # predict goes through the same loader.
    result = run_cli("predict", synth_root / "test", "--checkpoint", fake)
    assert_user_error(result, str(fake), "architecture")


def test_train_image_size_below_minimum(run_cli, synth_root, tiny_config, tmp_path):
    out = tmp_path / "run"
    args = tiny_train_args(synth_root, out, tiny_config)
    args[args.index("--image-size") + 1] = 4
    line = assert_user_error(run_cli(*args), "minimum", "8")
    assert "--image-size 4" in line
    assert not out.exists()


def test_train_imagenet_offline_fails_fast(run_cli, monkeypatch, tmp_path):
    import torch.hub
    import torchvision.models._api as tv_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    # torchvision binds the name at import time, so patch its copy as well.
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    # A data path that does not exist: the weights error must come first (no data is read).
    missing = tmp_path / "no-data-yet"
    result = run_cli("train", "--data", missing, "--backbone", "vgg19", "--weights", "imagenet",
                     "--image-size", "32", "--out", tmp_path / "run", "--device", "cpu")
    line = assert_user_error(result, "--weights none", "--weights PATH", "offline")
    assert str(missing) not in line


def test_train_unknown_backbone_lists_models(run_cli, synth_root, tmp_path):
    result = run_cli("train", "--data", synth_root, "--backbone", "resnet9000", "--weights", "none",
                     "--out", tmp_path / "run")
    assert_user_error(result, "resnet9000", "vgg19", "vgg_tiny")
    assert not (tmp_path / "run").exists()


def test_train_bad_set_override(run_cli, synth_root, tmp_path):
    result = run_cli("train", "--data", synth_root, "--set", "train.nosuchkey=3", "--out", tmp_path / "run")
    assert_user_error(result, "nosuchkey")


def test_train_unknown_config_file(run_cli, synth_root, tmp_path):
    missing = tmp_path / "missing.yaml"
    result = run_cli("train", "--data", synth_root, "--config", missing, "--out", tmp_path / "run")
    assert_user_error(result, str(missing), "config")


def test_train_unreadable_image_in_data(run_cli, synth_root, tiny_config, tmp_path):
    data = copy_tree(synth_root, tmp_path / "data", ignore=("masks", "lungs", "manifest.csv"))
    bad = write_text_as_image(data / "train" / "NORMAL" / "zz-bad.png")
    result = run_cli(*tiny_train_args(data, tmp_path / "run", tiny_config, "--val-source", "val"))
    assert_user_error(result, str(bad), "not a recognised image")


def test_evaluate_unreadable_image_in_data(run_cli, synth_root, tiny_ckpt, tmp_path):
    data = copy_tree(synth_root / "test", tmp_path / "test")
    bad = write_zero_byte(data / "NORMAL" / "zz-empty.png")
    result = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", data, "--out", tmp_path / "eval")
    assert_user_error(result, str(bad), "empty")


def test_train_set_overrides_apply_without_flags(run_cli, synth_root, tiny_config, tmp_path):
    """``--set`` for a key that also has a flag (data.image_size, train.batch_size) must not be dropped."""
    import yaml

    out = tmp_path / "run"
    result = run_cli("train", "--data", synth_root, "--config", tiny_config, "--out", out, "--epochs", "1,0",
                     "--set", "data.image_size=24", "--set", "train.batch_size=8", "--set", "train.label_smoothing=0.1")
    _ok(result)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["data"]["image_size"] == 24
    assert cfg["train"]["batch_size"] == 8
    assert cfg["train"]["label_smoothing"] == pytest.approx(0.1)
    assert json.loads((out / "summary.json").read_text())["image_size"] == 24


def test_train_bad_set_value(run_cli, synth_root, tiny_config, tmp_path):
    result = run_cli("train", "--data", synth_root, "--config", tiny_config, "--out", tmp_path / "run",
                     "--set", "data.image_size=abc")
    assert_user_error(result, "data.image_size", "abc")


def test_failed_train_does_not_block_retry(run_cli, synth_root, tiny_config, tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "typo"
    assert_user_error(run_cli(*tiny_train_args(missing, out, tiny_config, "--val-source", "val")), str(missing))
    assert not out.exists()
    result = run_cli(*tiny_train_args(synth_root, out, tiny_config, "--val-source", "val"))
    _ok(result)


# --------------------------------------------------------------------------- 7. synth


def test_synth_creates_layout_and_refuses_rerun(run_cli, tmp_path):
    out = tmp_path / "D"
    result = run_cli("synth", "--out", out, "--n", 12, "--size", 32)
    _ok(result)
    total = 0
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            files = list((out / split / cls).glob("*.png"))
            assert files, f"{split}/{cls} empty"
            total += len(files)
        assert list((out / "masks" / split / "PNEUMONIA").glob("*.png"))
    assert total == 12
    from PIL import Image

    with Image.open(next((out / "train" / "NORMAL").glob("*.png"))) as im:
        assert im.size == (32, 32)

    listing = sorted(p.relative_to(out) for p in out.rglob("*"))
    result = run_cli("synth", "--out", out, "--n", 12, "--size", 32)
    assert_user_error(result, str(out), "not empty")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == listing


def test_synth_bad_size(run_cli, tmp_path):
    result = run_cli("synth", "--out", tmp_path / "D", "--n", 12, "--size", 8)
    assert_user_error(result, "size")
    assert not (tmp_path / "D").exists()


# --------------------------------------------------------------------------- 8. models


def test_models_lists_registered_models(run_cli):
    result = run_cli("models")
    _ok(result)
    names = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"vgg19", "vgg_tiny"} <= names


# --------------------------------------------------------------------------- 9. warnings


def test_val_source_test_warns_about_leak(run_cli, synth_root, tiny_config, tmp_path):
    out = tmp_path / "run"
    args = tiny_train_args(synth_root, out, tiny_config, "--val-source", "test")
    args[args.index("--epochs") + 1] = "1,0"  # one stage, one epoch
    result = run_cli(*args)
    _ok(result)
    warnings_ = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert any("test" in w and "optimistic" in w for w in warnings_), result.stderr
    assert json.loads((out / "summary.json").read_text())["val_source"] == "test"


def test_no_args_shows_help(run_cli, cli_app):
    import typer

    commands = sorted(typer.main.get_command(cli_app).commands)
    assert {"train", "predict", "explain", "serve", "models"} <= set(commands)
    result = run_cli()
    # Click's no_args_is_help: the full help on stdout, exit 2 (no command is a usage error).
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stderr == "" and "Traceback" not in result.output
    assert "Usage:" in result.stdout and "COMMAND [ARGS]" in result.stdout
    listed = {line.strip("│ ").split()[0] for line in result.stdout.splitlines() if line.strip("│ ")}
    assert set(commands) <= listed, set(commands) - listed
    unknown = run_cli("nope")
    assert unknown.exit_code == 2 and unknown.stdout == ""
    assert "No such command 'nope'" in unknown.stderr and "Traceback" not in unknown.output


# --------------------------------------------------------------------------- DICOM end to end


def _write_dicom(path: Path, pixels: np.ndarray, photometric: str) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "TEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_predict_dicom_monochrome1_matches_its_monochrome2_twin(run_cli, tiny_ckpt, test_images, tmp_path):
    from PIL import Image

    gray = np.asarray(Image.open(test_images[-1]).convert("L"), dtype=np.float64) / 255.0
    mono2 = np.round(gray * 4095)
    folder = tmp_path / "dicoms"
    folder.mkdir()
    _write_dicom(folder / "mono2.dcm", mono2, "MONOCHROME2")
    _write_dicom(folder / "mono1.dcm", 4095 - mono2, "MONOCHROME1")  # same image, inverted storage
    result = run_cli("predict", "--checkpoint", tiny_ckpt, folder, "--out", tmp_path / "p.json",
                     "--precision", "fp32", "--explain", tmp_path / "cams")
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in json.loads((tmp_path / "p.json").read_text())}
    assert rows["mono1.dcm"]["label"] == rows["mono2.dcm"]["label"]
    assert rows["mono1.dcm"]["prob_pneumonia"] == pytest.approx(rows["mono2.dcm"]["prob_pneumonia"], abs=1e-4)
    # And it is the same answer as for the PNG the DICOMs were made from.
    png = run_cli("predict", "--checkpoint", tiny_ckpt, test_images[-1], "--out", tmp_path / "png.json",
                  "--precision", "fp32")
    assert png.exit_code == 0
    p_png = json.loads((tmp_path / "png.json").read_text())[0]["prob_pneumonia"]
    assert rows["mono2.dcm"]["prob_pneumonia"] == pytest.approx(p_png, abs=2e-3)
    assert (tmp_path / "cams" / "mono1.overlay.png").is_file()


def test_predict_and_evaluate_agree_exactly_on_the_same_files(run_cli, tiny_ckpt, synth_root, tmp_path):
    result = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", synth_root / "test", "--out", tmp_path / "ev",
                     "--precision", "fp32")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "ev" / "predictions.csv", newline="") as fh:
        evaluated = {r["path"]: float(r["prob_pneumonia"]) for r in csv.DictReader(fh)}
    result = run_cli("predict", "--checkpoint", tiny_ckpt, synth_root / "test", "--out", tmp_path / "p.csv",
                     "--precision", "fp32")
    assert result.exit_code == 0, result.output
    with open(tmp_path / "p.csv", newline="") as fh:
        predicted = {r["path"]: float(r["prob_pneumonia"]) for r in csv.DictReader(fh)}
    assert predicted.keys() == evaluated.keys()
    for path, p in predicted.items():
        assert p == pytest.approx(evaluated[path], abs=2e-6), path
