"""Grad-CAM: equal to a plain full-backward reference, batched targets, no leaks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pneumoscope
from pneumoscope.errors import ConfigError


def log_prob_score(logits, c):
    return torch.log(logits.softmax(1)[0, c] + 1e-8)


def logit_score(logits, c):
    return logits[0, c]


def reference_gradcam(model, x, layer, target, score=log_prob_score):
    """Textbook Grad-CAM with a full loss.backward(), one image at a time."""
    maps = []
    for i in range(len(x)):
        store = {}
        h = layer.register_forward_hook(lambda m, a, o: store.__setitem__("a", o))
        try:
            xi = x[i : i + 1].clone().requires_grad_(True)
            model.zero_grad()
            logits = model(xi)
            act = store["a"]
            act.retain_grad()
            score(logits, target[i]).backward()
        finally:
            h.remove()
        w = act.grad.mean(dim=(2, 3), keepdim=True)
        maps.append(F.relu((w * act).sum(1))[0].detach())
    return torch.stack(maps)


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = pneumoscope.create_model("vgg_tiny")
    # Non-inplace ReLUs for the reference, so retain_grad sees the true activation.
    for mod in m.modules():
        if isinstance(mod, torch.nn.ReLU):
            mod.inplace = False
    return m.eval()


def test_matches_full_backward_reference_with_mixed_targets(model):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    targets = torch.tensor([0, 1, 1, 0])
    exp = pneumoscope.explain(model, x, layer="block3_conv1", target=targets)
    ref = reference_gradcam(model, x, pneumoscope.resolve_layer(model, "block3_conv1"), targets)
    assert exp.raw.shape == ref.shape == (4, 8, 8)
    torch.testing.assert_close(exp.raw, ref, atol=1e-5, rtol=1e-4)
    assert exp.targets.tolist() == [0, 1, 1, 0]
    assert exp.maps.shape == (4, 32, 32)
    assert float(exp.maps.min()) >= 0.0 and float(exp.maps.max()) <= 1.0


def test_predicted_target_and_named_target(model):
    x = torch.randn(3, 3, 32, 32)
    exp = pneumoscope.explain(model, x)
    assert torch.equal(exp.targets, exp.probs.argmax(1))
    normal = pneumoscope.explain(model, x, target="NORMAL")
    assert normal.targets.tolist() == [0, 0, 0]
    # A threshold decides the predicted class by P(PNEUMONIA) instead of argmax.
    assert pneumoscope.explain(model, x, threshold=1e-6).targets.tolist() == [1, 1, 1]


def test_logit_score_differs_from_log_prob_and_each_is_its_own_reference(model):
    torch.manual_seed(2)
    x = torch.randn(3, 3, 32, 32)
    layer = pneumoscope.resolve_layer(model, "block3_conv1")
    targets = torch.tensor([1, 1, 1])
    a = pneumoscope.explain(model, x, layer="block3_conv1", target=1, score="log_prob")
    b = pneumoscope.explain(model, x, layer="block3_conv1", target=1, score="logit")
    ref_log_prob = reference_gradcam(model, x, layer, targets, log_prob_score)
    ref_logit = reference_gradcam(model, x, layer, targets, logit_score)
    # Tolerances scaled to the maps (a random tiny model's maps are ~1e-3).
    atol = 1e-3 * float(ref_logit.abs().max())
    torch.testing.assert_close(a.raw, ref_log_prob, atol=atol, rtol=1e-4)
    torch.testing.assert_close(b.raw, ref_logit, atol=atol, rtol=1e-4)
    # d log p1 = (1 - p1) (d z1 - d z0): the two scores' maps differ by far more than the
    # tolerance, so the checks above tell the scores apart.
    assert float((ref_logit - ref_log_prob).abs().max()) > 50 * atol
    with pytest.raises(ConfigError, match="score"):
        pneumoscope.explain(model, x, score="prob")


def test_state_restored_and_hooks_removed_even_after_an_exception(model):
    model.train()
    model.features[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    layer = pneumoscope.resolve_layer(model, "block3_conv1")

    def boom(*_):
        raise RuntimeError("boom")

    h = model.head.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        pneumoscope.explain(model, torch.randn(1, 3, 32, 32), layer="block3_conv1")
    h.remove()
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not layer._forward_hooks
    pneumoscope.explain(model, torch.randn(1, 3, 32, 32), layer="block3_conv1")
    assert not layer._forward_hooks and model.training
    assert all(p.grad is None for p in model.parameters())


def test_inplace_relu_after_hooked_conv_does_not_corrupt_the_map(model):
    import copy

    inplace = copy.deepcopy(model)
    for mod in inplace.modules():  # as built: VGG's ReLUs work in place
        if isinstance(mod, torch.nn.ReLU):
            mod.inplace = True
    assert isinstance(inplace.features[7], torch.nn.ReLU) and inplace.features[7].inplace
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([1, 0])
    for name in ("features.6", "block3_conv1"):  # the conv before an in-place ReLU, and that ReLU
        got = pneumoscope.explain(inplace, x, layer=name, target=targets)
        # The reference model has no in-place ops (see the fixture).
        ref = reference_gradcam(model, x, pneumoscope.resolve_layer(model, name), targets)
        torch.testing.assert_close(got.raw, ref, atol=1e-5, rtol=1e-4, msg=name)
    # The conv's map sees its negative outputs too: it differs from the ReLU's.
    assert not torch.allclose(
        pneumoscope.explain(inplace, x, layer="features.6", target=targets).raw,
        pneumoscope.explain(inplace, x, layer="block3_conv1", target=targets).raw, atol=1e-4,
    )


def test_bad_arguments(model):
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ConfigError, match="method"):
        pneumoscope.explain(model, x, method="nope")
    with pytest.raises(ConfigError, match="valid layers"):
        pneumoscope.explain(model, x, layer="block8_conv1")
    with pytest.raises(ConfigError, match="one per image"):
        pneumoscope.explain(model, x, target=[0, 1, 1])
    with pytest.raises(ConfigError, match="unknown target"):
        pneumoscope.explain(model, x, target="COVID")


def test_works_under_inference_mode_and_on_cuda_when_present(model):
    torch.manual_seed(4)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        x_inf = x.clone()
    exp = pneumoscope.explain(model, x_inf, target=1)
    ref = reference_gradcam(model, x, pneumoscope.resolve_layer(model, "block3_conv1"), torch.tensor([1, 1]))
    torch.testing.assert_close(exp.raw, ref, atol=1e-5, rtol=1e-4)
    assert float(ref.abs().max()) > 0  # a map of zeros would match anything
    if torch.cuda.is_available():
        gpu = pneumoscope.explain(model.cuda(), x.cuda(), target=1)
        torch.testing.assert_close(gpu.raw.cpu(), exp.raw, atol=1e-4, rtol=1e-3)
