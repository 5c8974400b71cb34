"""Datasets, manifests and patient-level splits (synthetic and, when present, real data)."""

from __future__ import annotations

import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pneumoscope.data.dataset import (
    load_splits,
    read_manifest,
    resolve_eval_samples,
    scan_split_folder,
)
from pneumoscope.data.splits import (
    merge_duplicate_groups,
    patient_id_from_name,
    patient_split,
)
from pneumoscope.data.transforms import Preprocessing, random_flip_rotate_zoom
from pneumoscope.errors import DataError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray_224"


def test_patient_ids_from_kaggle_names():
    assert patient_id_from_name("person1000_bacteria_2931.jpeg") == "person1000"
    assert patient_id_from_name("x/person1000_virus_1681.jpeg") == "person1000"
    assert patient_id_from_name("IM-0115-0001.jpeg") == "IM-0115"
    assert patient_id_from_name("NORMAL2-IM-0115-0001.jpeg") == "IM-0115"
    assert patient_id_from_name("scan_42.png") == "scan_42"


def test_duplicates_pull_patients_together(tmp_path):
    files = []
    for name, content in [("a1", b"x"), ("b1", b"y"), ("c1", b"x"), ("d1", b"z")]:
        p = tmp_path / f"{name}.png"
        p.write_bytes(content)
        files.append(p)
    groups = merge_duplicate_groups(files, ["a", "b", "c", "d"])
    assert groups[0] == groups[2] and len(set(groups)) == 3


def test_patient_split_is_disjoint_and_stratified():
    labels = [0] * 40 + [1] * 80
    groups = [f"p{i // 2}" for i in range(120)]  # two images per patient
    tr, va = patient_split(labels, groups, 0.2, seed=1)
    assert not {groups[i] for i in tr} & {groups[i] for i in va}
    assert len(tr) + len(va) == 120 and 0.1 < len(va) / 120 < 0.3
    assert Counter(labels[i] for i in va)[0] > 0 and Counter(labels[i] for i in va)[1] > 0
    with pytest.raises(DataError, match="too few"):
        patient_split([0, 1, 0], ["a", "b", "c"], 0.1, seed=0)


def test_scan_errors_name_what_is_missing(tmp_path, synth_root):
    with pytest.raises(DataError, match="no such folder"):
        scan_split_folder(tmp_path / "nope")
    root = tmp_path / "ds"
    shutil.copytree(synth_root / "train", root / "train")
    for f in (root / "train" / "PNEUMONIA").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="no images of class PNEUMONIA"):
        load_splits(root, "split")
    with pytest.raises(DataError, match="train/"):
        load_splits(tmp_path, "split")


def test_manifest_with_splits_and_eval_resolution(tmp_path, synth_root):
    csv_path = tmp_path / "m.csv"
    lines = ["path,label,patient_id,split"]
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            for p in sorted((synth_root / split / cls).glob("*.png")):
                lines.append(f"{p},{cls},{p.stem},{split}")
    csv_path.write_text("\n".join(lines) + "\n")
    rows = read_manifest(csv_path)
    assert {sp for _, sp in rows} == {"train", "val", "test"}
    s = load_splits(csv_path, "val")
    assert s.val and s.test and all(x.path.is_file() for x in s.train)
    samples, _ = resolve_eval_samples(csv_path)
    assert len(samples) == len(s.test)
    assert len(resolve_eval_samples(synth_root)[0]) == len(resolve_eval_samples(synth_root / "test")[0])
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nnope.png,COVID\n")
    with pytest.raises(DataError, match="bad.csv:2"):
        read_manifest(bad)


def test_val_source_test_warns_about_the_leak(synth_root):
    with pytest.warns(UserWarning, match="test split"):
        load_splits(synth_root, "test")


def test_augmentation_keeps_shape_and_identity_when_disabled():
    import torch

    from pneumoscope.config import AugmentConfig

    x = torch.rand(4, 1, 16, 16)
    same = random_flip_rotate_zoom(x, AugmentConfig(hflip=False, rotation_deg=0.0, zoom=0.0))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(0)
    aug = random_flip_rotate_zoom(x, AugmentConfig(), generator=g)
    assert aug.shape == x.shape and not torch.allclose(aug, x)


def test_translation_shifts_content_by_the_configured_fraction():
    import torch

    from pneumoscope.config import AugmentConfig

    x = torch.zeros(1, 1, 20, 20)
    x[0, 0, 10, 10] = 1.0
    cfg = AugmentConfig(hflip=False, rotation_deg=0.0, zoom=0.0, translate=0.25, padding_mode="zeros")
    out = random_flip_rotate_zoom(x, cfg, generator=torch.Generator().manual_seed(3))
    row, col = divmod(int(out[0, 0].argmax()), 20)
    shift = max(abs(row - 10), abs(col - 10))
    assert 0 < shift <= 5  # at most 25 % of 20 px, and it did move


def test_zoom_range_draws_scales_inside_it_and_random_crop_moves_the_view():
    import torch

    from pneumoscope.config import AugmentConfig
    from pneumoscope.data.transforms import random_flip_rotate_zoom as geo

    # A centred bright square: its area after zoom tells the scale (area ∝ scale²).
    x = torch.zeros(64, 1, 64, 64)
    x[:, :, 24:40, 24:40] = 1.0
    cfg = AugmentConfig(hflip=False, rotation_deg=0.0, zoom=0.0, zoom_range=(0.5, 2.0), padding_mode="zeros")
    out = geo(x, cfg, generator=torch.Generator().manual_seed(0))
    scale = (out.sum(dim=(1, 2, 3)) / 256.0).sqrt()
    assert scale.min() >= 0.5 - 0.05 and scale.max() <= 2.0 + 0.05
    assert scale.min() < 0.8 and scale.max() > 1.25  # both directions are drawn
    # Without random_crop a zoom-in stays centred; with it the square's centre moves.
    def centres(img):
        ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        m = img[:, 0].sum(dim=(1, 2)).clamp(min=1e-6)
        return (img[:, 0] * xs).sum(dim=(1, 2)) / m, (img[:, 0] * ys).sum(dim=(1, 2)) / m

    zoom_in = AugmentConfig(hflip=False, rotation_deg=0.0, zoom=0.0, zoom_range=(1.5, 1.5), padding_mode="zeros")
    cx, _ = centres(geo(x, zoom_in, generator=torch.Generator().manual_seed(1)))
    assert float((cx - 31.5).abs().max()) < 0.5
    crop = AugmentConfig(hflip=False, rotation_deg=0.0, zoom=0.0, zoom_range=(1.5, 1.5), random_crop=True,
                         padding_mode="zeros")
    cx, _ = centres(geo(x, crop, generator=torch.Generator().manual_seed(1)))
    assert float((cx - 31.5).abs().max()) > 3.0


def test_intensity_augmentation_is_off_by_default_and_bounded_when_on():
    import torch

    from pneumoscope.config import AugmentConfig
    from pneumoscope.data.transforms import augment_batch, random_intensity

    x = torch.rand(8, 1, 24, 24)
    torch.testing.assert_close(random_intensity(x, AugmentConfig()), x)
    cfg = AugmentConfig(gamma=0.5, contrast=0.3, brightness=0.1, sharpness=1.0, noise=0.03)
    g = torch.Generator().manual_seed(1)
    out = random_intensity(x, cfg, generator=g)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x)
    # Each image draws its own parameters: the per-image change in mean differs.
    delta = (out - x).mean(dim=(1, 2, 3))
    assert delta.std() > 1e-3
    # Seeded generators make it reproducible, geometric and photometric together.
    a = augment_batch(x, cfg, generator=torch.Generator().manual_seed(5))
    b = augment_batch(x, cfg, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)


def test_gamma_brightens_or_darkens_monotonically():
    import torch

    from pneumoscope.config import AugmentConfig
    from pneumoscope.data.transforms import random_intensity

    x = torch.linspace(0.01, 1, 100).view(1, 1, 10, 10).repeat(16, 1, 1, 1)
    out = random_intensity(x, AugmentConfig(gamma=1.0), generator=torch.Generator().manual_seed(0))
    flat = out.flatten(1)
    assert bool((flat[:, 1:] >= flat[:, :-1] - 1e-6).all())  # order of grey levels is kept


def test_bad_augment_settings_are_config_errors():
    from pneumoscope.config import load_config
    from pneumoscope.errors import ConfigError

    with pytest.raises(ConfigError, match="padding_mode"):
        load_config("demo", {"data.augment.padding_mode": "wrap"})
    with pytest.raises(ConfigError, match="gamma"):
        load_config("demo", {"data.augment.gamma": -1})
    with pytest.raises(ConfigError, match="zoom_range"):
        load_config("demo", {"data.augment.zoom_range": [2.0, 1.0]})


def test_preprocessing_contract():
    prep = Preprocessing(32)
    t = prep(np.ones((50, 70), dtype=np.float32))
    assert t.shape == (3, 32, 32)
    expected = (1 - np.array(prep.mean)) / np.array(prep.std)
    assert np.allclose(t[:, 5, 5].numpy(), expected, atol=1e-5)


@pytest.mark.skipif(not REAL.is_dir(), reason=f"real data not found at {REAL}")
def test_real_train_split_is_patient_level_and_keeps_duplicates_together():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load_splits(REAL, "split", val_fraction=0.1, seed=42)
    assert len(s.train) + len(s.val) == 1341 + 3875
    assert not {x.patient_id for x in s.train} & {x.patient_id for x in s.val}
    from pneumoscope.data.splits import content_hash

    train_hashes = {content_hash(x.path) for x in s.train}
    assert not train_hashes & {content_hash(x.path) for x in s.val}
    frac_pneu = sum(x.label for x in s.val) / len(s.val)
    assert 0.65 < frac_pneu < 0.85 and 0.07 < len(s.val) / 5216 < 0.13
    assert len(s.test) == 118 + 196


def test_histogram_equalisation_spreads_a_dim_image_and_is_stored_with_the_checkpoint_contract():
    import torch

    from pneumoscope.data.transforms import equalize_histogram

    dim = torch.randint(40, 80, (64, 64), dtype=torch.uint8)
    eq = equalize_histogram(dim)
    assert eq.min() == 0 and eq.max() == 255
    # Monotone: a brighter input pixel is never darker after equalisation.
    order = dim.flatten().argsort()
    assert bool((eq.flatten()[order].diff().to(torch.int16) >= 0).all())
    # Roughly flat: each quarter of the grey range holds about a quarter of the pixels.
    quarters = torch.bincount(eq.flatten().long() // 64, minlength=4).float() / eq.numel()
    assert float((quarters - 0.25).abs().max()) < 0.06
    const = torch.full((8, 8), 7, dtype=torch.uint8)
    assert torch.equal(equalize_histogram(const), const)
    # Two exposures of the same anatomy become (nearly) the same model input.
    prep = Preprocessing(32, intensity="equalize")
    base = np.linspace(0.1, 0.9, 40 * 40, dtype=np.float32).reshape(40, 40)
    a, b = prep.to_uint8(base * 0.5), prep.to_uint8(base ** 0.7)
    assert float((a.float() - b.float()).abs().mean()) < 3.0
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    assert Preprocessing.from_dict({"image_size": 32, "mean": [0.5] * 3, "std": [0.2] * 3}).intensity == "none"


def test_unknown_intensity_mode_is_a_config_error():
    from pneumoscope.errors import ConfigError

    with pytest.raises(ConfigError, match="intensity"):
        Preprocessing(32, intensity="clahe2")


def test_random_erasing_fills_one_flat_rectangle_per_chosen_image():
    import torch

    from pneumoscope.data.transforms import ERASE_AREA, random_erase

    x = torch.rand(64, 1, 40, 40)
    torch.testing.assert_close(random_erase(x, 0.0), x)
    out = random_erase(x, 1.0, generator=torch.Generator().manual_seed(3))
    for img, orig in zip(out, x):
        changed = (img != orig)[0]
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        # One axis-aligned rectangle, all of it one grey, of 2-25 % of the image.
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert bool(box.all())
        assert ERASE_AREA[0] * 0.5 <= changed.float().mean() <= ERASE_AREA[1] * 1.2
        assert img[0][changed].unique().numel() == 1
    # p is a probability per image; seeded generators reproduce the draw.
    half = random_erase(x, 0.5, generator=torch.Generator().manual_seed(4))
    erased = int(((half != x).flatten(1).any(dim=1)).sum())
    assert 16 <= erased <= 48
    torch.testing.assert_close(half, random_erase(x, 0.5, generator=torch.Generator().manual_seed(4)))


def test_the_augmented_threshold_passes_leave_erasing_and_markers_out(monkeypatch):
    import torch

    import pneumoscope.evaluation.evaluate as ev
    from pneumoscope.config import load_config
    from pneumoscope.training.calibrate import augmented_logits

    seen: list[torch.Tensor] = []

    def image_logits(predictor, imgs, progress, transform):  # the batches the passes would score
        seen.append(transform(imgs[:, None].float() / 255))
        return torch.zeros(len(imgs), 2)

    monkeypatch.setattr(ev, "image_logits", image_logits)
    cfg = load_config(None, {"data.augment.erase": 1.0, "data.augment.markers": 1.0, "data.augment.hflip": False,
                             "data.augment.rotation_deg": 0.0, "data.augment.zoom": 0.0})
    augmented_logits(None, torch.full((4, 64, 64), 128, dtype=torch.uint8), cfg, draws=2)
    # Only erasing and markers are on, each at p = 1: the passes see the images untouched.
    assert len(seen) == 2 and all(torch.allclose(x, torch.full_like(x, 128 / 255)) for x in seen)


def test_markers_are_burned_in_near_a_corner_of_the_chosen_images():
    import torch

    from pneumoscope.data.transforms import MARKER_BAND, random_markers

    x = torch.full((48, 1, 64, 64), 0.3)
    torch.testing.assert_close(random_markers(x, 0.0), x)
    out = random_markers(x, 1.0, generator=torch.Generator().manual_seed(2))
    corners = set()
    for img in out[:, 0]:
        changed = (img - 0.3).abs() > 1e-6
        assert changed.sum() >= 4  # every image got a marker
        rows, cols = changed.any(dim=1).nonzero().flatten(), changed.any(dim=0).nonzero().flatten()
        band = int(MARKER_BAND * 64)
        top, left = int(rows.max()) < band, int(cols.max()) < band
        bottom, right = int(rows.min()) >= 64 - band, int(cols.min()) >= 64 - band
        assert (top or bottom) and (left or right)  # inside the band of one corner
        corners.add((top, left))
        assert float(img.max()) > 0.6  # bright, as lead markers are (small ones antialiased)
    assert len(corners) == 4  # all four corners get them
    half = random_markers(x, 0.5, generator=torch.Generator().manual_seed(3))
    marked = int(((half - x).abs().flatten(1) > 1e-6).any(dim=1).sum())
    assert 12 <= marked <= 36
    torch.testing.assert_close(half, random_markers(x, 0.5, generator=torch.Generator().manual_seed(3)))


def test_erase_and_markers_are_probabilities():
    from pneumoscope.config import load_config
    from pneumoscope.errors import ConfigError

    for key in ("erase", "markers"):
        with pytest.raises(ConfigError, match=f"data.augment.{key}"):
            load_config("demo", {f"data.augment.{key}": 1.5})


def test_balanced_epochs_show_every_minority_image_and_a_fresh_equal_draw_of_the_rest():
    import torch

    from pneumoscope.data.source import BalancedEpochSampler

    labels = torch.tensor([0] * 10 + [1] * 35)
    s = BalancedEpochSampler(labels, seed=7)
    assert len(s) == 20
    epochs = [list(s) for _ in range(3)]
    for ep in epochs:
        assert len(ep) == len(set(ep)) == 20
        assert sorted(i for i in ep if labels[i] == 0) == list(range(10))
        assert sum(1 for i in ep if labels[i] == 1) == 10
    majority = [frozenset(i for i in ep if labels[i] == 1) for ep in epochs]
    assert len(set(majority)) == 3  # a fresh draw each epoch
    again = BalancedEpochSampler(labels, seed=7)
    assert [list(again) for _ in range(3)] == epochs  # every rank draws the same epochs
