"""Device, precision and memory-format choices shared by every compute path."""

from __future__ import annotations

import pytest
import torch

import pneumoscope
from pneumoscope.checkpoint import save_checkpoint
from pneumoscope.data.transforms import Preprocessing
from pneumoscope.errors import ConfigError
from pneumoscope.inference import Predictor
from pneumoscope.runtime import channels_last_preferred, resolve_precision, to_memory_format


def test_channels_last_is_preferred_on_cpu_and_cuda():
    assert channels_last_preferred(torch.device("cpu"))
    assert channels_last_preferred(torch.device("cuda"))
    assert not channels_last_preferred(torch.device("meta"))


def test_inputs_follow_the_models_memory_format():
    model = pneumoscope.create_model("vgg_tiny")
    x = torch.randn(2, 3, 32, 32)
    assert to_memory_format(x, model) is x  # contiguous model: untouched
    model.to(memory_format=torch.channels_last)
    y = to_memory_format(x, model)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert torch.equal(y, x)


def test_predictor_runs_channels_last_with_the_same_answers(tmp_path):
    torch.manual_seed(0)
    model = pneumoscope.create_model("vgg_tiny").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, model, architecture="vgg_tiny", preprocessing=Preprocessing(32), target_layer="block3_conv1")
    pred = Predictor(path, device="cpu", precision="fp32")
    first = next(p for p in pred.ckpt.model.parameters() if p.dim() == 4)
    assert first.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(pred.logits(x), reference, atol=1e-4, rtol=1e-4)
    # explanations take the same path and still match the contiguous model's
    a = pneumoscope.explain(model, x, target=1, layer="block3_conv1")
    b = pneumoscope.explain(pred.ckpt.model, x, target=1, layer="block3_conv1")
    assert float((a.maps - b.maps).abs().max()) < 1e-3


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ConfigError, match="expected one of auto, fp32, bf16"):
        resolve_precision("fp16", torch.device("cpu"))
