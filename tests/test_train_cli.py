"""`pneumoscope train` from the command line: flag and --set precedence, the default recipe on
any backbone, up-front checks, and run folders that a failure leaves behind (or not)."""

from __future__ import annotations

import pytest
import yaml

from conftest import TINY_BACKBONE, TINY_IMAGE_SIZE, assert_user_error, tiny_train_args


def _base(data, out) -> list[object]:
    return ["train", "--data", data, "--backbone", TINY_BACKBONE, "--weights", "none", "--image-size",
            TINY_IMAGE_SIZE, "--precision", "fp32", "--device", "cpu", "--val-source", "val", "--no-progress",
            "--out", out]


def test_default_recipe_trains_any_backbone_and_set_comes_after_the_flags(run_cli, synth_root, tmp_path):
    # The default config is the seed's two stages; its second trains from the backbone's own
    # fine-tuning layer ("finetune"), so another backbone needs no layer name of VGG19's.
    out = tmp_path / "run"
    result = run_cli(*_base(synth_root, out), "--epochs", "1", "--batch-size", "8", "--set", "train.batch_size=4",
                     "--set", "train.stages.1.epochs=2")
    assert result.exit_code == 0, result.stderr
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["train"]["batch_size"] == 4  # --set after --batch-size
    assert [st["epochs"] for st in cfg["train"]["stages"]] == [1, 2]  # --epochs, except where --set gave them
    assert cfg["train"]["stages"][1]["trainable_from"] == "finetune"


def test_a_set_value_is_checked_even_where_a_flag_gave_the_key(run_cli, synth_root, tmp_path):
    result = run_cli(*_base(synth_root, tmp_path / "run"), "--set", "data.image_size=0")
    assert_user_error(result, "data.image_size must be positive")
    assert not (tmp_path / "run").exists()


def test_a_layer_of_another_backbone_names_its_config_key(run_cli, synth_root, tmp_path):
    # The seed's config names VGG19's layers: each error says which key to change.
    seed = [*_base(synth_root, tmp_path / "run"), "--config", "seed", "--epochs", "1"]
    assert_user_error(run_cli(*seed), "model.cam_layer", "unknown layer 'block5_conv3' for vgg_tiny")
    result = run_cli(*seed, "--set", "model.cam_layer=block3_conv1")
    assert_user_error(result, "train.stages[1].trainable_from", "unknown layer 'block5_conv1' for vgg_tiny")
    assert not (tmp_path / "run").exists()


def test_finetune_resolves_to_the_backbones_layer():
    from pneumoscope.models import create_model

    for arch, layer in (("resnet18", "layer4"), ("vgg_tiny", "block3_conv1")):
        a, b = create_model(arch, weights=None), create_model(arch, weights=None)
        a.set_trainable("finetune")
        b.set_trainable(layer)
        assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()]
        assert 0 < sum(p.requires_grad for p in a.parameters()) < len(list(a.parameters()))


@pytest.mark.parametrize(("extra", "needle"), [
    (["--epochs", "0"], "no stage at data.image_size has an epoch to train"),
    (["--limit-train-batches", "0"], "train.limit_train_batches must be above 0"),
])
def test_runs_that_cannot_make_a_checkpoint_are_refused_up_front(run_cli, synth_root, tiny_config, tmp_path,
                                                                 extra, needle):
    args = tiny_train_args(synth_root, tmp_path / "run", tiny_config, "--val-source", "val")
    if "--epochs" in extra:
        args[args.index("--epochs") + 1] = extra[1]
    else:
        args += extra
    assert_user_error(run_cli(*args), needle)
    assert not (tmp_path / "run").exists()


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(synth_root, tmp_path, monkeypatch):
    from pneumoscope.config import load_config
    from pneumoscope.training import train
    from pneumoscope.training.module import ClassifierModule

    def boom(self, batch, idx):
        raise RuntimeError("a failure inside the first step")

    monkeypatch.setattr(ClassifierModule, "training_step", boom)
    cfg = load_config(None, {"model.backbone": TINY_BACKBONE, "model.weights": "none", "data.image_size": 32,
                             "data.val_source": "val", "train.precision": "fp32", "train.device": "cpu"})
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    for out in (fresh, existing):
        with pytest.raises(RuntimeError, match="first step"):
            train(cfg, synth_root, out, progress=False)
    assert not fresh.exists()  # made by the run: removed
    assert existing.is_dir() and not any(existing.iterdir())  # the user's empty folder: kept, emptied


def test_a_run_that_fails_after_an_epoch_keeps_its_state(synth_root, tmp_path, monkeypatch):
    from pneumoscope.config import load_config
    from pneumoscope.training import train
    from pneumoscope.training.module import ClassifierModule

    real = ClassifierModule.training_step

    def fail_in_second_stage(self, batch, idx):
        if self.stage.name == "stage2":
            raise RuntimeError("a failure in the second stage")
        return real(self, batch, idx)

    monkeypatch.setattr(ClassifierModule, "training_step", fail_in_second_stage)
    cfg = load_config(None, {"model.backbone": TINY_BACKBONE, "model.weights": "none", "data.image_size": 32,
                             "data.val_source": "val", "train.precision": "fp32", "train.device": "cpu",
                             "train.stages.0.epochs": 1, "train.stages.1.epochs": 1})
    with pytest.raises(RuntimeError, match="second stage"):
        train(cfg, synth_root, tmp_path / "run", progress=False)
    # Resumable: the first stage's checkpoint and state stay for --resume.
    assert (tmp_path / "run" / "best.ckpt").is_file() and (tmp_path / "run" / "state" / "progress.json").is_file()


def test_an_out_path_under_a_file_is_one_line(run_cli, synth_root, tiny_config, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_cli(*tiny_train_args(synth_root, blocker / "run", tiny_config, "--val-source", "val"))
    assert_user_error(result, str(blocker), "is a file, not a folder", "run folder")
    result = run_cli(*tiny_train_args(synth_root, blocker, tiny_config, "--val-source", "val"))
    assert_user_error(result, str(blocker), "is a file; expected the run folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing made on the way

