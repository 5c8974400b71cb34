"""Shipped models: compact checkpoints, loading by name, `pneumoscope models`, `pneumoscope compact`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import pneumoscope
from pneumoscope import zoo
from pneumoscope.checkpoint import compact_checkpoint, read_metadata, save_checkpoint, update_checkpoint
from pneumoscope.data.transforms import Preprocessing
from pneumoscope.errors import CheckpointError

from conftest import assert_user_error


def _full(tmp_path, arch="vgg_small", size=64):
    torch.manual_seed(0)
    m = pneumoscope.create_model(arch)
    # Non-trivial BatchNorm statistics, so their rounding is exercised too.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    p = tmp_path / "best.ckpt"
    save_checkpoint(p, m, architecture=arch, preprocessing=Preprocessing(size), target_layer="block4_conv2",
                    threshold=0.37, temperature=1.2, info={"summary": "a test model"})
    return m.eval(), p


@pytest.fixture
def shipped_dir(tmp_path, monkeypatch):
    """An empty zoo folder standing in for the package's."""
    d = tmp_path / "zoo"
    d.mkdir()
    monkeypatch.setattr(zoo, "ZOO_DIR", d.resolve())
    return d


def test_compact_halves_the_file_and_predicts_the_same(tmp_path):
    m, p = _full(tmp_path)
    r = compact_checkpoint(p, tmp_path / "small.safetensors")
    assert r["dtype"] == "fp16" and r["kept_fp32"] == []
    assert r["bytes_after"] < 0.55 * r["bytes_before"]
    ck = pneumoscope.load_checkpoint(r["path"])
    assert all(t.dtype == torch.float32 for t in ck.model.state_dict().values() if t.is_floating_point())
    assert ck.threshold == 0.37 and ck.temperature == 1.2 and ck.info["storage_dtype"] == "fp16"
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        full, small = m(x).softmax(1), ck.model(x).softmax(1)
    assert (full - small).abs().max() < 2e-3
    assert not torch.equal(full, small)  # the weights really were rounded


def test_compact_bf16_and_overflow_stays_fp32(tmp_path):
    m, p = _full(tmp_path, arch="vgg_tiny", size=32)
    with torch.no_grad():
        next(m.parameters()).view(-1)[0] = 1e6  # beyond float16's range
    save_checkpoint(p, m, architecture="vgg_tiny", preprocessing=Preprocessing(32), target_layer="block3_conv1")
    r = compact_checkpoint(p, tmp_path / "fp16.safetensors")
    assert len(r["kept_fp32"]) == 1
    assert pneumoscope.load_checkpoint(r["path"]).model.state_dict()[r["kept_fp32"][0]].view(-1)[0] == 1e6
    r = compact_checkpoint(p, tmp_path / "bf16.safetensors", dtype="bf16")
    assert r["dtype"] == "bf16" and read_metadata(r["path"])["info"]["storage_dtype"] == "bf16"
    with pytest.raises(CheckpointError, match="not over its source"):
        compact_checkpoint(p, p)
    with pytest.raises(CheckpointError, match="storage dtype"):
        compact_checkpoint(p, tmp_path / "x", dtype="int8")


def test_a_shipped_name_loads_everywhere_a_path_does(tmp_path, shipped_dir):
    _, p = _full(tmp_path)
    compact_checkpoint(p, shipped_dir / "test-model-v1.safetensors")
    (shipped_dir / "test-model-v1.md").write_text("# test-model-v1\n\nA card.\n")
    assert [m.name for m in zoo.shipped_models()] == ["test-model-v1"]
    ck = pneumoscope.load_checkpoint("test-model-v1")
    assert ck.path == (shipped_dir / "test-model-v1.safetensors").resolve() and ck.threshold == 0.37
    assert read_metadata("test-model-v1.safetensors")["architecture"] == "vgg_small"
    # A file of that name in the working folder wins over the shipped model.
    local = tmp_path / "test-model-v1"
    shutil.copy(p, local)
    assert zoo.resolve_checkpoint(local) == local
    # Unknown names say what is shipped.
    with pytest.raises(CheckpointError, match=r"no-such-model: checkpoint not found.*test-model-v1"):
        pneumoscope.load_checkpoint("no-such-model")


def test_a_shipped_model_is_read_only(tmp_path, shipped_dir):
    _, p = _full(tmp_path)
    compact_checkpoint(p, shipped_dir / "m.safetensors")
    before = (shipped_dir / "m.safetensors").read_bytes()
    with pytest.raises(CheckpointError, match="read-only"):
        update_checkpoint("m", threshold=0.5, temperature=1.0, operating_point=None)
    assert (shipped_dir / "m.safetensors").read_bytes() == before
    out = update_checkpoint("m", tmp_path / "mine.ckpt", threshold=0.5, temperature=1.0, operating_point=None)
    assert pneumoscope.load_checkpoint(out).threshold == 0.5


def test_calibrate_refuses_a_shipped_model_in_place_before_any_work(run_cli, tmp_path, shipped_dir, tiny_ckpt):
    compact_checkpoint(tiny_ckpt, shipped_dir / "tiny-v1.safetensors")
    # --data does not exist: the read-only refusal must come first, before anything is read.
    result = run_cli("calibrate", "--checkpoint", "tiny-v1", "--data", tmp_path / "absent")
    assert_user_error(result, "tiny-v1: a shipped model is read-only", "--out")


def test_models_command_lists_shipped_models_and_prints_cards(run_cli, tmp_path, shipped_dir):
    result = run_cli("models")
    assert result.exit_code == 0 and "(none in this installation)" in result.stdout
    _, p = _full(tmp_path)
    compact_checkpoint(p, shipped_dir / "test-model-v1.safetensors")
    (shipped_dir / "test-model-v1.md").write_text("# test-model-v1\n\nIntended use: tests.\n")
    result = run_cli("models")
    assert result.exit_code == 0
    line = next(ln for ln in result.stdout.splitlines() if "test-model-v1" in ln)
    assert "vgg_small" in line and "64 px" in line and "threshold 0.370" in line and "a test model" in line
    assert "vgg19" in result.stdout  # the architectures are still listed
    result = run_cli("models", "test-model-v1")
    assert result.exit_code == 0 and "Intended use: tests." in result.stdout
    assert_user_error(run_cli("models", "nope"), "nope: not a shipped model", "test-model-v1")


def test_compact_command_and_predict_by_name(run_cli, tmp_path, shipped_dir, tiny_ckpt, test_images):
    out = shipped_dir / "tiny-v1.safetensors"
    result = run_cli("compact", tiny_ckpt, out)
    assert result.exit_code == 0 and "MB" in result.output and out.is_file()
    csv = tmp_path / "preds.csv"
    result = run_cli("predict", "--checkpoint", "tiny-v1", "--out", csv, "--no-progress", *test_images[:3])
    assert result.exit_code == 0, result.output
    assert len(csv.read_text().splitlines()) == 4
    assert_user_error(run_cli("compact", tmp_path / "missing.ckpt", tmp_path / "o"), "missing.ckpt", "not found")


# --------------------------------------------------------------------------- the models in the package

SHIPPED = zoo.shipped_models()
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.parametrize("model", SHIPPED, ids=[m.name for m in SHIPPED])
def test_shipped_model_is_compact_loadable_and_carded(model):
    assert model.size_bytes <= 25_000_000
    meta = model.metadata()
    assert meta["info"]["storage_dtype"] == "fp16"
    figures = meta["info"]["card_figures"]
    card = model.card_text()
    assert card.startswith(f"# {model.name}") and "CC BY 4.0" in card
    for key in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        assert f"{figures[key]:.3f}" in card, f"the card does not state the {key} the checkpoint records"
    ck = pneumoscope.load_checkpoint(model.name)
    assert ck.model(torch.zeros(1, 3, ck.preprocessing.image_size, ck.preprocessing.image_size)).shape == (1, 2)


@pytest.mark.parametrize("model", SHIPPED, ids=[m.name for m in SHIPPED])
def test_shipped_model_evaluates_to_its_card(model, tmp_path):
    """The card's development-half figures, re-measured in fp32 from the shipped file."""
    from pneumoscope.evaluation.evaluate import evaluate

    figures = model.metadata()["info"]["card_figures"]
    test = REAL_DATA / figures["split"]
    if not test.is_dir():
        pytest.skip(f"{test} not found: the real Kaggle images are not beside this checkout")
    m = evaluate(model.name, test, tmp_path, precision="fp32", progress=False, bootstrap=0).metrics
    assert m["n"] == figures["n"]
    # One image either side of the threshold is allowed for another CPU's rounding.
    assert abs(m["accuracy"] - figures["accuracy"]) <= 1.0 / figures["n"] + 1e-9
    assert abs(m["roc_auc"] - figures["roc_auc"]) <= 2e-3
