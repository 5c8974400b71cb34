"""Config: dataclass defaults ← YAML ← overrides; the seed config holds SEED.md's values."""

from __future__ import annotations

import pytest

from pneumoscope.config import load_config, parse_set_overrides
from pneumoscope.errors import ConfigError


def test_seed_config_holds_every_seed_value():
    cfg = load_config("configs/seed.yaml")
    assert cfg.data.image_size == 256 and cfg.train.batch_size == 32 and cfg.train.seed == 42
    assert cfg.data.augment.hflip and cfg.data.augment.rotation_deg == 18.0 and cfg.data.augment.zoom == 0.1
    assert cfg.train.label_smoothing == 0.05 and cfg.train.class_weights == "balanced"
    assert cfg.train.head_l2 == 1e-4
    s1, s2 = cfg.train.stages
    assert (s1.epochs, s1.lr, s1.trainable_from, s1.min_lr) == (7, 3e-4, None, 1e-6)
    assert (s2.epochs, s2.lr, s2.trainable_from, s2.grad_clip_norm, s2.min_lr) == (14, 1e-5, "block5_conv1", 1.0, 1e-7)
    for s in (s1, s2):
        assert (s.early_stopping_patience, s.plateau_patience, s.plateau_factor) == (5, 2, 0.5)
    assert cfg.model.backbone == "vgg19" and cfg.model.cam_layer == "block5_conv3"
    assert cfg.data.val_source == "split"  # the seed's test-as-validation leak is opt-in only


def test_bundled_name_and_overrides_take_precedence(tmp_path):
    cfg = load_config("seed", {"data.image_size": 224, "model.weights": "none"})
    assert cfg.data.image_size == 224 and cfg.model.weights == "none"
    over = parse_set_overrides(["train.batch_size=8", "data.augment.hflip=false"])
    cfg = load_config("seed", over)
    assert cfg.train.batch_size == 8 and cfg.data.augment.hflip is False


def test_bad_configs_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        load_config(bad)
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="val_source"):
        load_config(None, {"data.val_source": "holdout"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(None, {"train.batch_size": "many"})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_overrides(["train.batch_size"])


def test_bundled_name_wins_over_a_folder_of_that_name(tmp_path, monkeypatch):
    from pneumoscope.config import load_config

    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("demo").model.backbone == "vgg_mini"


def test_overrides_index_into_the_list_of_stages():
    cfg = load_config("offline", {"train.stages.0.lr": 1e-4, "model.backbone": "vgg19"})
    assert cfg.train.stages[0].lr == 1e-4 and cfg.model.backbone == "vgg19"
    assert cfg.train.stages[0].epochs == 8 and cfg.train.stages[0].image_size == 96  # the rest is kept
    # With no stages in the file, the defaults are indexed.
    cfg = load_config(None, {"train.stages.1.epochs": 3})
    assert [s.epochs for s in cfg.train.stages][1] == 3 and len(cfg.train.stages) == 2
    with pytest.raises(ConfigError, match=r"train.stages has 2 entries, indexed 0..1"):
        load_config("offline", {"train.stages.2.lr": 1e-4})
    with pytest.raises(ConfigError, match="train.batch_size is not a section"):
        load_config("offline", {"train.batch_size.x": 1})


def test_an_indexed_override_leaves_the_callers_stages_alone():
    stages = [{"name": "a", "epochs": 2}, {"name": "b", "epochs": 1}]
    overrides = {"train.stages": stages, "train.stages.0.epochs": 5}
    assert [s.epochs for s in load_config(None, overrides).train.stages] == [5, 1]
    assert stages == [{"name": "a", "epochs": 2}, {"name": "b", "epochs": 1}]
    assert [s.epochs for s in load_config(None, {"train.stages": stages}).train.stages] == [2, 1]
