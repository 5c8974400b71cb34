"""Self-describing, safe checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import pneumoscope
from pneumoscope.checkpoint import read_metadata, save_checkpoint
from pneumoscope.data.transforms import Preprocessing
from pneumoscope.errors import CheckpointError


def _save(tmp_path, arch="vgg_tiny", claim=None, **kw):
    m = pneumoscope.create_model(arch)
    p = tmp_path / "best.ckpt"
    save_checkpoint(p, m, architecture=claim or arch, preprocessing=Preprocessing(32), target_layer="block3_conv1",
                    threshold=0.3, config={"model": {"backbone": arch}}, **kw)
    return m, p


def test_roundtrip_carries_the_whole_contract(tmp_path):
    m, p = _save(tmp_path)
    ck = pneumoscope.load_checkpoint(p)
    assert ck.architecture == "vgg_tiny" and ck.threshold == 0.3 and ck.target_layer == "block3_conv1"
    assert ck.preprocessing == Preprocessing(32) and ck.class_names == ("NORMAL", "PNEUMONIA")
    assert not ck.model.training
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ck.model(x), m.eval()(x))
    meta = read_metadata(p)
    assert meta["versions"]["torch"] == torch.__version__ and meta["config"]["model"]["backbone"] == "vgg_tiny"
    assert not list(tmp_path.glob(".best.ckpt.*"))  # no temp file left behind


def test_a_gem_head_round_trips_and_an_older_checkpoint_pools_by_average(tmp_path):
    from safetensors.torch import load_file, save_file

    m = pneumoscope.create_model("vgg_tiny", global_pool="gem")
    p = tmp_path / "gem.ckpt"
    save_checkpoint(p, m, architecture="vgg_tiny", preprocessing=Preprocessing(32), target_layer="block3_conv1")
    ck = pneumoscope.load_checkpoint(p)
    assert ck.model.global_pool == "gem" and read_metadata(p)["global_pool"] == "gem"
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(ck.model(x), m.eval()(x))
    # A version-2 checkpoint has no global_pool: its head averages, as it did when it was written.
    meta = read_metadata(p)
    del meta["global_pool"]
    meta["format_version"] = 2
    save_file(load_file(str(p)), str(p), metadata={"pneumoscope": json.dumps(meta)})
    old = pneumoscope.load_checkpoint(p)
    assert old.model.global_pool == "avg" and isinstance(old.model.head.pool, torch.nn.AdaptiveAvgPool2d)
    assert not torch.allclose(old.model(x), ck.model(x))


def test_file_is_safetensors_not_pickle(tmp_path):
    _, p = _save(tmp_path)
    head = p.read_bytes()[:16]
    assert head[8:9] == b"{"  # safetensors header: u64 length + JSON
    with pytest.raises(Exception):
        torch.load(p, weights_only=True)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x80\x04\x95" + b"\x00" * 64])
def test_unreadable_checkpoints_fail_clearly(tmp_path, content):
    p = tmp_path / "best.ckpt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="best.ckpt"):
        pneumoscope.load_checkpoint(p)


def test_foreign_safetensors_and_other_architecture(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a pneumoscope checkpoint"):
        pneumoscope.load_checkpoint(foreign)
    _, p = _save(tmp_path, arch="vgg_tiny", claim="vgg_small")
    with pytest.raises(CheckpointError, match="architecture 'vgg_small'"):
        pneumoscope.load_checkpoint(p)
    with pytest.raises(CheckpointError, match="not found"):
        pneumoscope.load_checkpoint(tmp_path / "missing.ckpt")


def test_newer_format_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    _, p = _save(tmp_path)
    meta = read_metadata(p)
    meta["format_version"] = 99
    save_file(load_file(str(p)), str(p), metadata={"pneumoscope": json.dumps(meta)})
    with pytest.raises(CheckpointError, match="upgrade"):
        pneumoscope.load_checkpoint(p)


def test_a_run_folder_given_as_checkpoint_points_at_its_best_ckpt(tiny_run):
    with pytest.raises(CheckpointError, match=r"is a folder; expected a checkpoint file .*holds best.ckpt"):
        read_metadata(tiny_run)
