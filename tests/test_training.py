"""Training driver: stages, restore-best, class weights, resume, guards."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from pneumoscope.config import load_config
from pneumoscope.errors import ConfigError, DataError
from pneumoscope.training import train
from pneumoscope.training.module import ClassifierModule
from pneumoscope.training.run import _class_weights

TINY = {
    "model.backbone": "vgg_tiny", "model.weights": "none", "data.image_size": 32, "data.val_source": "val",
    "train.precision": "fp32", "train.device": "cpu", "train.batch_size": 16,
    "train.stages": [
        {"name": "stage1", "epochs": 2, "lr": 1e-3, "trainable_from": None},
        {"name": "stage2", "epochs": 1, "lr": 1e-4, "trainable_from": "block3_conv1", "grad_clip_norm": 1.0},
    ],
}


def test_class_weights_follow_the_seed_formula():
    # The seed's folder counts give {NORMAL: 1.9448, PNEUMONIA: 0.6730}.
    w = _class_weights([1341, 3875], "balanced")
    assert round(w[0], 4) == 1.9448 and round(w[1], 4) == 0.6730
    assert _class_weights([10, 30], "none") is None


def test_loss_is_weighted_mean_plus_head_l2():
    from pneumoscope.config import StageConfig
    from pneumoscope.data.transforms import Preprocessing
    from pneumoscope.models import create_model

    torch.manual_seed(0)
    model = create_model("vgg_tiny").eval()
    mod = ClassifierModule(model, Preprocessing(32), StageConfig(), None, [2.0, 0.5], 0.05, 1e-4)
    mod.log = lambda *a, **k: None  # not attached to a Trainer
    x = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 1, 0])
    loss = mod.training_step((x, y), 0)
    logits = model(Preprocessing(32).normalize(x.float() / 255))
    per = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.05, reduction="none")
    expected = (per * torch.tensor([2.0, 0.5])[y]).mean() + 1e-4 * (model.head.fc1.weight ** 2).sum()
    torch.testing.assert_close(loss, expected)


def test_mixup_blends_the_batch_and_both_labels():
    from pneumoscope.config import StageConfig
    from pneumoscope.data.transforms import Preprocessing
    from pneumoscope.models import create_model

    torch.manual_seed(0)
    model = create_model("vgg_tiny").eval()
    mod = ClassifierModule(model, Preprocessing(32), StageConfig(), None, [2.0, 0.5], 0.0, 0.0, mixup=0.4)
    mod.log = lambda *a, **k: None
    x = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    torch.manual_seed(5)
    loss = mod.training_step((x, y), 0)
    torch.manual_seed(5)  # the same draws: the weight, then the pairing
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(6)
    xn = Preprocessing(32).normalize(x.float() / 255)
    logits = model(lam * xn + (1 - lam) * xn[perm])
    w = torch.tensor([2.0, 0.5])

    def ce(t):
        return (torch.nn.functional.cross_entropy(logits, t, reduction="none") * w[t]).mean()

    torch.testing.assert_close(loss, lam * ce(y) + (1 - lam) * ce(y[perm]))
    assert 0.0 < lam < 1.0 and not torch.equal(perm, torch.arange(6))
    with pytest.raises(ConfigError, match="train.mixup"):
        load_config(None, {"train.mixup": -1})


def test_two_stages_write_a_run_and_resume_skips_finished_stages(tmp_path, synth_root):
    cfg = load_config(None, TINY)
    out = tmp_path / "run"
    r = train(cfg, synth_root, out, progress=False)
    assert r.checkpoint.is_file() and (out / "config.yaml").is_file() and (out / "splits.csv").is_file()
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [r["stage"] for r in rows] == ["stage1", "stage1", "stage2"]
    best = min(float(r["val_loss"]) for r in rows)
    assert abs(r.best_val_loss - best) < 1e-6
    assert r.best_epoch == 1 + [float(r["val_loss"]) for r in rows].index(best)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["n_train"] > 0
    # A finished run resumes without training again.
    before = (out / "best.ckpt").stat().st_mtime_ns
    r2 = train(cfg, synth_root, out, resume=True, progress=False)
    assert len(list(csv.DictReader(open(out / "metrics.csv")))) == 3
    assert (out / "best.ckpt").stat().st_mtime_ns == before and r2.best_epoch == r.best_epoch


def test_interrupted_stage_resumes_from_its_last_epoch(tmp_path, synth_root, monkeypatch):
    import pneumoscope.training.run as tr

    cfg = load_config(None, TINY)
    out = tmp_path / "run"
    real_fit = tr.L.Trainer.fit
    calls = {"n": 0}

    def flaky_fit(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # stage 2 "crashes" before it starts
            raise KeyboardInterrupt
        return real_fit(self, *a, **k)

    monkeypatch.setattr(tr.L.Trainer, "fit", flaky_fit)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, synth_root, out, progress=False)
    progress = json.loads((out / "state" / "progress.json").read_text())
    assert progress["completed"] == ["stage1"]
    monkeypatch.setattr(tr.L.Trainer, "fit", real_fit)
    r = train(cfg, synth_root, out, resume=True, progress=False)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [row["stage"] for row in rows] == ["stage1", "stage1", "stage2"]
    assert r.summary["epochs_run"] == 3


def test_guards(tmp_path, synth_root):
    with pytest.raises(ConfigError, match="minimum"):
        train(load_config(None, {**TINY, "data.image_size": 4}), synth_root, tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="valid layers"):
        train(load_config(None, {**TINY, "model.cam_layer": "nope"}), synth_root, tmp_path / "b", progress=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        train(load_config(None, TINY), synth_root, tmp_path / "c", progress=False)
    with pytest.raises(DataError, match="nothing to resume"):
        train(load_config(None, TINY), synth_root, tmp_path / "d", resume=True, progress=False)


def test_resume_refuses_a_changed_configuration(tmp_path, synth_root):
    out = tmp_path / "run"
    train(load_config(None, TINY), synth_root, out, progress=False)
    changed = load_config(None, {**TINY, "train.batch_size": 8})
    with pytest.raises(ConfigError, match="train.batch_size was 16, now 8"):
        train(changed, synth_root, out, resume=True, progress=False)


def test_onecycle_adamw_stage_warms_up_then_anneals(tmp_path, synth_root):
    cfg = load_config(None, {
        **TINY,
        "data.augment.gamma": 0.3, "data.augment.noise": 0.02, "data.augment.translate": 0.05,
        "train.stages": [{
            "name": "scratch", "epochs": 3, "lr": 2e-3, "trainable_from": "all", "optimizer": "adamw",
            "weight_decay": 0.01, "schedule": "onecycle", "warmup_fraction": 0.3, "early_stopping_patience": 10,
        }],
    })
    out = tmp_path / "run"
    train(cfg, synth_root, out, progress=False)
    with open(out / "metrics.csv") as fh:
        lrs = [float(r["lr"]) for r in csv.DictReader(fh)]
    # Per-batch one-cycle: the LR after epoch 1 is near the peak, and it ends far below it.
    assert len(lrs) == 3 and lrs[0] > lrs[2] and lrs[2] < 2e-3 * 0.2 and max(lrs) <= 2e-3 + 1e-9


def test_unknown_schedule_or_optimizer_is_a_config_error():
    from pneumoscope.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule"):
        load_config(None, {**TINY, "train.stages": [{"name": "s", "schedule": "linear"}]})
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, {**TINY, "train.stages": [{"name": "s", "optimizer": "rmsprop"}]})


def test_sgd_stage_uses_nesterov_momentum_and_its_decay():
    from pneumoscope.config import StageConfig
    from pneumoscope.data.transforms import Preprocessing
    from pneumoscope.models import create_model

    stage = StageConfig(optimizer="sgd", lr=0.05, weight_decay=5e-4, trainable_from="all")
    mod = ClassifierModule(create_model("vgg_tiny"), Preprocessing(32), stage, None, None, 0.0, 0.0)
    opt = mod.configure_optimizers()["optimizer"]
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD)
    assert group["nesterov"] and group["momentum"] == 0.9
    assert group["lr"] == 0.05 and group["weight_decay"] == 5e-4


def test_ema_tracks_the_weights_and_is_what_validation_sees():
    from pneumoscope.config import StageConfig
    from pneumoscope.data.transforms import Preprocessing
    from pneumoscope.models import create_model

    model = create_model("vgg_tiny")
    mod = ClassifierModule(model, Preprocessing(32), StageConfig(), None, None, 0.0, 0.0, ema_decay=0.9)
    assert mod.eval_model is mod.ema.module and mod.eval_model is not model
    before = {k: v.clone() for k, v in mod.ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    mod.on_train_batch_end(None, None, 0)  # first update copies the weights
    mod.on_train_batch_end(None, None, 1)  # then ema = 0.9 ema + 0.1 new (here: unchanged)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    mod.on_train_batch_end(None, None, 2)
    name, p = next(iter(model.named_parameters()))
    expected = 0.9 * (before[name] + 1.0) + 0.1 * (before[name] + 2.0)
    torch.testing.assert_close(dict(mod.ema.module.named_parameters())[name], expected)
    plain = ClassifierModule(create_model("vgg_tiny"), Preprocessing(32), StageConfig(), None, None, 0.0, 0.0)
    assert plain.ema is None and plain.eval_model is plain.model


def test_ema_run_exports_the_ema_weights_and_resumes(tmp_path, synth_root, monkeypatch):
    from pneumoscope.checkpoint import load_checkpoint
    from pneumoscope.training import run as run_module

    snapshots = []  # per validated epoch: (EMA weights, raw weights)

    class Recording(ClassifierModule):
        def on_validation_epoch_end(self) -> None:
            super().on_validation_epoch_end()
            if self.ema is None:  # the validation pass that gathers logits for calibration
                return
            snapshots.append(tuple({k: v.detach().clone() for k, v in m.state_dict().items()}
                                   for m in (self.ema.module, self.model)))

    monkeypatch.setattr(run_module, "ClassifierModule", Recording)
    cfg = load_config(None, {**TINY, "train.ema_decay": 0.8})
    out = tmp_path / "run"
    r = train(cfg, synth_root, out, progress=False)
    assert r.checkpoint.is_file() and r.best_epoch >= 1
    assert len(snapshots) == r.summary["epochs_run"] == 3
    ema, raw = snapshots[r.best_epoch - 1]
    exported = load_checkpoint(r.checkpoint).model.state_dict()
    assert exported.keys() == ema.keys()
    for k, v in exported.items():
        torch.testing.assert_close(v, ema[k], msg=k)
    # The EMA lags the trained weights, so holding the EMA is not the same as holding the model.
    assert any(not torch.allclose(ema[k], raw[k]) for k in ema if k.startswith("head."))
    r2 = train(cfg, synth_root, out, resume=True, progress=False)
    assert r2.best_epoch == r.best_epoch


def test_select_last_exports_the_final_epoch(tmp_path, synth_root):
    cfg = load_config(None, {**TINY, "train.select": "last", "train.stages": [
        {"name": "s", "epochs": 3, "lr": 1e-3, "trainable_from": "all", "early_stopping_patience": 5}]})
    r = train(cfg, synth_root, tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert r.best_epoch == 3 == len(rows)
    assert abs(r.best_val_loss - float(rows[-1]["val_loss"])) < 1e-4
    with pytest.raises(ConfigError, match="select"):
        load_config(None, {**TINY, "train.select": "median"})


def test_balanced_epochs_train_on_twice_the_smaller_class_with_unit_loss_weights(tmp_path, synth_root):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    for f in sorted((data / "train" / "NORMAL").iterdir())[:7]:  # 10 NORMAL against 17 PNEUMONIA
        f.unlink()
    cfg = load_config(None, {**TINY, "train.epoch_sampling": "balanced", "train.stages": [
        {"name": "s", "epochs": 2, "lr": 1e-3, "trainable_from": "all"}]})
    r = train(cfg, data, tmp_path / "run", progress=False)
    assert r.summary["train_counts"] == {"NORMAL": 10, "PNEUMONIA": 17}
    assert r.summary["samples_per_epoch"] == [20, 20]
    assert r.summary["class_weights"] is None
    with pytest.raises(ConfigError, match="epoch_sampling"):
        load_config(None, {**TINY, "train.epoch_sampling": "oversample"})


def test_without_progress_bars_each_epoch_prints_one_line(tmp_path, synth_root, capsys):
    cfg = load_config(None, TINY)
    train(cfg, synth_root, tmp_path / "run", progress=False)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1/2 (stage1)", "epoch 2/2 (stage1)", "epoch 1/1 (stage2)"]
    assert all("val_auc" in ln for ln in lines)


def test_a_low_resolution_stage_trains_smaller_and_never_becomes_best_ckpt(tmp_path, synth_root, monkeypatch):
    seen: list[tuple[str, int]] = []
    real = ClassifierModule.forward

    def spy(self, x):
        seen.append((self.stage.name, int(x.shape[-1])))
        return real(self, x)

    monkeypatch.setattr(ClassifierModule, "forward", spy)
    cfg = load_config(None, {**TINY, "train.stages": [
        {"name": "low", "epochs": 2, "lr": 1e-3, "trainable_from": "all", "image_size": 16},
        {"name": "full", "epochs": 1, "lr": 1e-4, "trainable_from": "all"},
    ]})
    r = train(cfg, synth_root, tmp_path / "run", progress=False)
    # Training and validation of the low stage see 16 px batches, the full stage 32 px ones.
    assert {s for n, s in seen if n == "low"} == {16} and {s for n, s in seen if n == "full"} == {32}
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert [row["stage"] for row in rows] == ["low", "low", "full"]
    # Only the full-size epoch may be exported, whatever the low stage's (incomparable) losses.
    assert r.best_epoch == 3 and abs(r.best_val_loss - float(rows[2]["val_loss"])) < 1e-6
    from pneumoscope.checkpoint import load_checkpoint

    assert load_checkpoint(r.checkpoint).preprocessing.image_size == 32


def test_a_stage_can_start_smaller_inside_its_schedule(tmp_path, synth_root, monkeypatch):
    seen: list[tuple[int, bool, int]] = []  # (epoch, train, side) of every batch the model gets
    real = ClassifierModule._inputs

    def spy(self, x, train, generator=None, size=None):
        out = real(self, x, train, generator, size)
        seen.append((self.current_epoch, train, int(out.shape[-1])))
        return out

    monkeypatch.setattr(ClassifierModule, "_inputs", spy)
    cfg = load_config(None, {**TINY, "train.stages": [
        {"name": "s", "epochs": 3, "lr": 1e-3, "trainable_from": "all", "start_size": 16, "start_epochs": 2,
         "schedule": "onecycle"},
    ]})
    r = train(cfg, synth_root, tmp_path / "run", progress=False)
    trained = {(e, side) for e, t, side in seen if t}
    assert trained == {(0, 16), (1, 16), (2, 32)}  # two epochs at 16 px, then the stage's 32 px
    assert {side for _e, t, side in seen if not t} == {32}  # validated at the stage's size throughout
    assert len(list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))) == 3 and r.checkpoint.is_file()


def test_stage_image_size_is_checked():
    with pytest.raises(ConfigError, match="the last stage must train at data.image_size"):
        load_config(None, {**TINY, "train.stages": [{"name": "low", "epochs": 1, "image_size": 16}]})
    with pytest.raises(ConfigError, match="image_size must be between"):
        load_config(None, {**TINY, "train.stages": [{"name": "up", "epochs": 1, "image_size": 64}, {"name": "full"}]})
    with pytest.raises(ConfigError, match="start_size and start_epochs go together"):
        load_config(None, {**TINY, "train.stages.0.start_size": 16})
    with pytest.raises(ConfigError, match=r"start_size must be between 1 and the stage's size \(16\)"):
        load_config(None, {**TINY, "train.stages": [
            {"name": "low", "epochs": 2, "image_size": 16, "start_size": 24, "start_epochs": 1}, {"name": "full"}]})
    with pytest.raises(ConfigError, match=r"start_epochs must be between 0 and epochs \(1\)"):
        load_config(None, {**TINY, "train.stages": [{"name": "s", "epochs": 1, "start_size": 16, "start_epochs": 2}]})


def test_a_stage_below_the_model_minimum_fails_before_training(tmp_path, synth_root):
    cfg = load_config(None, {**TINY, "train.stages": [{"name": "low", "epochs": 1, "image_size": 4}, {"name": "full"}]})
    with pytest.raises(ConfigError, match="stage 'low': image_size 4 is below vgg_tiny's minimum"):
        train(cfg, synth_root, tmp_path / "run", progress=False)
    cfg = load_config(None, {**TINY, "train.stages": [{"name": "s", "epochs": 2, "start_size": 4, "start_epochs": 1}]})
    with pytest.raises(ConfigError, match="stage 's': start_size 4 is below vgg_tiny's minimum"):
        train(cfg, synth_root, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_late_epochs_freeze_the_first_layers_inside_the_stage(tmp_path, synth_root, monkeypatch):
    seen: list[tuple[int, bool, torch.Tensor, torch.Tensor]] = []  # (epoch, first conv trains, its weight, the last conv's)
    real = ClassifierModule.training_step

    def spy(self, batch, batch_idx):
        convs = [m for m in self.model.features if isinstance(m, torch.nn.Conv2d)]
        seen.append((self.current_epoch, convs[0].weight.requires_grad, convs[0].weight.detach().clone(),
                     convs[-1].weight.detach().clone()))
        return real(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", spy)
    cfg = load_config(None, {**TINY, "train.batch_size": 4, "train.stages": [
        {"name": "s", "epochs": 3, "lr": 1e-2, "trainable_from": "all", "late_epochs": 1,
         "late_trainable_from": "block2_conv1", "schedule": "onecycle"},
    ]})
    r = train(cfg, synth_root, tmp_path / "run", progress=False)
    assert r.checkpoint.is_file()
    assert {e for e, on, _, _ in seen if on} == {0, 1} and {e for e, on, _, _ in seen if not on} == {2}
    last = [(w0, w1) for e, _, w0, w1 in seen if e == 2]
    assert len(last) >= 2
    assert torch.equal(last[0][0], last[-1][0])  # the first conv no longer moves in the last epoch
    assert not torch.equal(last[0][1], last[-1][1])  # the layers after it still train
    early = [w0 for e, _, w0, _ in seen if e == 0]
    assert not torch.equal(early[0], early[-1])  # and before it, everything trained


def test_late_epochs_are_checked_before_training(tmp_path, synth_root):
    with pytest.raises(ConfigError, match="late_epochs and late_trainable_from go together"):
        load_config(None, {**TINY, "train.stages.0.late_epochs": 1})
    with pytest.raises(ConfigError, match=r"late_epochs must be between 0 and epochs \(2\)"):
        load_config(None, {**TINY, "train.stages.0.late_epochs": 3, "train.stages.0.late_trainable_from": "block3_conv1"})
    cfg = load_config(None, {**TINY, "train.stages.1.late_epochs": 1, "train.stages.1.late_trainable_from": "block9_conv1"})
    with pytest.raises(ConfigError, match="unknown layer 'block9_conv1'"):
        train(cfg, synth_root, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_each_stage_can_train_in_its_own_precision(tmp_path, synth_root, monkeypatch):
    seen: list[tuple[str, bool]] = []  # (stage, bf16 autocast on) for every training batch
    real = ClassifierModule.training_step

    def spy(self, batch, batch_idx):
        seen.append((self.stage.name, torch.is_autocast_enabled("cpu")))
        return real(self, batch, batch_idx)

    monkeypatch.setattr(ClassifierModule, "training_step", spy)
    cfg = load_config(None, {**TINY, "train.precision": "bf16", "train.stages": [
        {"name": "low", "epochs": 1, "lr": 1e-3, "trainable_from": "all"},
        {"name": "last", "epochs": 1, "lr": 1e-4, "trainable_from": "all", "precision": "fp32"},
    ]})
    r = train(cfg, synth_root, tmp_path / "run", progress=False)
    assert {s for s, on in seen if on} == {"low"} and {s for s, on in seen if not on} == {"last"}
    assert r.summary["precision"] == "bf16" and r.summary["stage_precision"] == {"last": "fp32"}
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16"):
        load_config(None, {**TINY, "train.stages.1.precision": "fp16"})
