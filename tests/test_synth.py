"""Tests for the synthetic chest-radiograph phantoms (pneumoscope.data.synth)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from pneumoscope.data import synth
from pneumoscope.data.synth import (
    CLASS_NAMES,
    Phantom,
    SynthSummary,
    make_phantom,
    synth_dataset,
)
from pneumoscope.errors import ConfigError, DataError


def _phantoms(seed: int, count: int, *, label: int, difficulty: float = 0.5, size: int = 128) -> list[Phantom]:
    rng = np.random.default_rng(seed)
    return [make_phantom(rng, size=size, label=label, difficulty=difficulty) for _ in range(count)]


def _lesion_contrast(ph: Phantom) -> float:
    """Mean lesion brightness minus mean brightness of the rest of the lung."""
    img = ph.image.astype(float)
    return float(img[ph.lesion_mask].mean() - img[ph.lung_mask & ~ph.lesion_mask].mean())


# --------------------------------------------------------------------------- make_phantom


@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("size", [64, 128])
def test_shapes_and_dtypes(label: int, size: int) -> None:
    ph = make_phantom(np.random.default_rng(0), size=size, label=label)
    assert ph.image.shape == ph.lesion_mask.shape == ph.lung_mask.shape == (size, size)
    assert ph.image.dtype == np.uint8
    assert ph.lesion_mask.dtype == bool and ph.lung_mask.dtype == bool
    assert ph.label == label
    # Two lung fields covering a plausible part of the image, darker than the body.
    n_lungs = ndimage.label(ph.lung_mask)[1]
    assert n_lungs >= 2
    assert 0.12 < ph.lung_mask.mean() < 0.45
    # Radiograph polarity: corners (air outside the body) dark, the image centre-bottom
    # (abdomen / heart) bright, the lungs in between.
    corners = np.concatenate([ph.image[:6, :6].ravel(), ph.image[:6, -6:].ravel()]).astype(float)
    abdomen = ph.image[int(size * 0.85) :, int(size * 0.4) : int(size * 0.6)].astype(float)
    assert corners.mean() < ph.image[ph.lung_mask].mean() < abdomen.mean()


def test_normal_has_empty_lesion_mask() -> None:
    for ph in _phantoms(1, 10, label=0):
        assert not ph.lesion_mask.any()
        assert ph.lung_mask.any()


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_pneumonia_lesion_nonempty_and_inside_lung(difficulty: float) -> None:
    for ph in _phantoms(2, 15, label=1, difficulty=difficulty):
        assert ph.lesion_mask.any()
        inside = (ph.lesion_mask & ph.lung_mask).sum() / ph.lesion_mask.sum()
        assert inside >= 0.95
        # Visible but not trivial: a lesion covers a few percent of the lung, never all of it.
        assert 0.005 < ph.lesion_mask.sum() / ph.lung_mask.sum() < 0.5


def test_lesions_brighter_than_surrounding_lung() -> None:
    for ph in _phantoms(3, 20, label=1):
        img = ph.image.astype(float)
        # The lung ring just around the lesion: same region, same ribs, same exposure.
        ring = ndimage.binary_dilation(ph.lesion_mask, iterations=5) & ph.lung_mask & ~ph.lesion_mask
        assert ring.sum() > 0
        assert img[ph.lesion_mask].mean() > img[ring].mean() + 5.0


def test_lesion_contrast_falls_with_difficulty() -> None:
    easy = np.mean([_lesion_contrast(ph) for ph in _phantoms(4, 20, label=1, difficulty=0.0)])
    hard = np.mean([_lesion_contrast(ph) for ph in _phantoms(4, 20, label=1, difficulty=1.0)])
    assert hard > 0  # still a signal at the hardest setting
    assert easy > 1.5 * hard


def test_noise_grows_with_difficulty() -> None:
    def hf_noise(ph: Phantom) -> float:
        img = ph.image.astype(float)
        # High-pass residual inside the (eroded) lungs: dominated by the quantum noise.
        resid = img - ndimage.gaussian_filter(img, 1.5)
        return float(resid[ndimage.binary_erosion(ph.lung_mask, iterations=3)].std())

    easy = np.mean([hf_noise(ph) for ph in _phantoms(5, 10, label=0, difficulty=0.0)])
    hard = np.mean([hf_noise(ph) for ph in _phantoms(5, 10, label=0, difficulty=1.0)])
    assert hard > 1.5 * easy


def test_deterministic_for_seed_and_different_across_seeds() -> None:
    a = make_phantom(np.random.default_rng(42), label=1)
    b = make_phantom(np.random.default_rng(42), label=1)
    c = make_phantom(np.random.default_rng(43), label=1)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.lesion_mask, b.lesion_mask)
    np.testing.assert_array_equal(a.lung_mask, b.lung_mask)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.lesion_mask, c.lesion_mask)


def test_consecutive_phantoms_vary_in_pose_and_exposure() -> None:
    rng = np.random.default_rng(7)
    phs = [make_phantom(rng, label=0) for _ in range(6)]
    centroids = np.array([ndimage.center_of_mass(ph.lung_mask) for ph in phs])
    lung_brightness = np.array([ph.image[ph.lung_mask].mean() for ph in phs])
    assert not np.array_equal(phs[0].lung_mask, phs[1].lung_mask)
    assert np.ptp(centroids, axis=0).max() > 1.0  # lungs move by more than a pixel
    assert np.ptp(lung_brightness) > 5.0  # exposure / gamma varies


def test_shortcut_marker_only_on_pneumonia() -> None:
    size = 128
    with_marker = make_phantom(np.random.default_rng(9), size=size, label=1, shortcut=True)
    without = make_phantom(np.random.default_rng(9), size=size, label=1, shortcut=False)
    diff = with_marker.image != without.image
    assert diff.any()
    rows, cols = np.nonzero(diff)
    # The marker is a small square in the top-left corner and nothing else changes.
    assert rows.max() < size // 6 and cols.max() < size // 6
    assert with_marker.image[rows, cols].min() >= 240
    np.testing.assert_array_equal(with_marker.lesion_mask, without.lesion_mask)
    # The corner is dark without the marker, so the cue is conspicuous.
    assert without.image[: size // 8, : size // 8].mean() < 100
    # NORMAL images never get it.
    normal_sc = make_phantom(np.random.default_rng(9), size=size, label=0, shortcut=True)
    normal = make_phantom(np.random.default_rng(9), size=size, label=0, shortcut=False)
    np.testing.assert_array_equal(normal_sc.image, normal.image)


@pytest.mark.parametrize("difficulty", [-0.01, 1.01, float("nan"), "hard"])
def test_invalid_difficulty_raises_config_error(difficulty: object) -> None:
    with pytest.raises(ConfigError, match="difficulty"):
        make_phantom(np.random.default_rng(0), label=1, difficulty=difficulty)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"label": 2}, {"label": -1}, {"label": 1, "size": 16}])
def test_invalid_label_or_size_raises_config_error(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        make_phantom(np.random.default_rng(0), **kwargs)


def test_trivial_statistic_separates_classes() -> None:
    """The lesion is a real signal: 'bright fraction of the lung' alone gives AUC > 0.8."""
    rng = np.random.default_rng(11)
    scores, labels = [], []
    for i in range(100):
        ph = make_phantom(rng, label=i % 2, difficulty=0.3)
        img = ph.image.astype(float)
        lung = img[ph.lung_mask]
        median = np.median(lung)
        # "Bright" relative to this image's own exposure: a third of the way from the
        # lung's median to the dense tissue.
        threshold = median + 0.35 * (np.percentile(img, 90) - median)
        scores.append(float(np.mean(lung > threshold)))
        labels.append(ph.label)
    assert roc_auc_score(labels, scores) > 0.8


# --------------------------------------------------------------------------- synth_dataset


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_synth_dataset_layout_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    summary = synth_dataset(out, n=14, size=64, seed=3, splits=(0.6, 0.2, 0.2))
    assert isinstance(summary, SynthSummary)
    assert summary.root == out and summary.seconds > 0
    assert sum(sum(c.values()) for c in summary.counts.values()) == 14
    assert set(summary.counts) == {"train", "val", "test"}
    for split, per_class in summary.counts.items():
        assert set(per_class) == set(CLASS_NAMES)
        assert min(per_class.values()) >= 1, split

    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "label", "patient_id", "split", "mask_path"]
        rows = list(reader)
    assert len(rows) == 14
    assert len({r["patient_id"] for r in rows}) == 14

    images = {f for f in _files(out) if f.split("/")[0] in ("train", "val", "test")}
    assert images == {r["path"] for r in rows}
    for r in rows:
        split, cls, name = r["path"].split("/")
        assert (split, cls) == (r["split"], r["label"])
        assert name == f"{r['patient_id']}.png"
        assert r["patient_id"].startswith("synth-") and len(r["patient_id"]) == len("synth-00000")
        img = Image.open(out / r["path"])
        assert img.mode == "L" and img.size == (64, 64)
        lung = np.asarray(Image.open(out / "lungs" / r["path"]))
        assert set(np.unique(lung)) <= {0, 255} and lung.any()
        if cls == "PNEUMONIA":
            assert r["mask_path"] == f"masks/{r['path']}"
            mask = np.asarray(Image.open(out / r["mask_path"]))
            assert set(np.unique(mask)) == {0, 255}
        else:
            assert r["mask_path"] == ""
    counted = {s: {c: 0 for c in CLASS_NAMES} for s in summary.counts}
    for r in rows:
        counted[r["split"]][r["label"]] += 1
    assert counted == summary.counts
    # Nothing left beside the dataset (the temporary folder was renamed into place).
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_synth_dataset_is_byte_deterministic(tmp_path: Path) -> None:
    a = synth_dataset(tmp_path / "a", n=6, size=48, seed=5, shortcut=True, progress=True)
    b = synth_dataset(tmp_path / "b", n=6, size=48, seed=5, shortcut=True)
    c = synth_dataset(tmp_path / "c", n=6, size=48, seed=6, shortcut=True)
    files = _files(a.root)
    assert files == _files(b.root)
    assert all((a.root / f).read_bytes() == (b.root / f).read_bytes() for f in files)
    assert any((a.root / f).read_bytes() != (c.root / f).read_bytes() for f in files & _files(c.root))


def test_synth_dataset_accepts_existing_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    synth_dataset(out, n=6, size=48)
    assert (out / "manifest.csv").is_file()


def test_synth_dataset_refuses_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="taken"):
        synth_dataset(out, n=6, size=48)
    assert _files(out) == {"keep.txt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_synth_dataset_failure_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]
) -> None:
    real = synth.make_phantom
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> Phantom:
        calls["n"] += 1
        if calls["n"] > 3:
            raise exc("boom")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synth, "make_phantom", flaky)
    with pytest.raises(exc, match="boom"):
        synth_dataset(tmp_path / "ds", n=10, size=48)
    assert calls["n"] == 4
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor the temporary folder


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 5}, "n must be"),
        ({"n": 0}, "n must be"),
        ({"difficulty": 1.5}, "difficulty"),
        ({"splits": (0.8, 0.2, 0.0)}, "splits"),
        ({"splits": (0.5, 0.2, 0.2)}, "splits"),
        ({"pneumonia_fraction": 1.0}, "pneumonia_fraction"),
    ],
)
def test_synth_dataset_invalid_config(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        synth_dataset(tmp_path / "ds", **{"size": 48, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_synth_dataset_minimum_n_has_both_classes_everywhere(tmp_path: Path) -> None:
    summary = synth_dataset(tmp_path / "ds", n=6, size=48, pneumonia_fraction=0.1)
    assert summary.counts == {s: {"NORMAL": 1, "PNEUMONIA": 1} for s in ("train", "val", "test")}


def test_synth_dataset_files_do_not_depend_on_the_number_of_processes(tmp_path: Path) -> None:
    one = synth_dataset(tmp_path / "one", n=24, size=48, seed=3, workers=1)
    two = synth_dataset(tmp_path / "two", n=24, size=48, seed=3, workers=2)
    files = _files(one.root)
    assert files == _files(two.root) and len(files) > 24
    assert all((one.root / f).read_bytes() == (two.root / f).read_bytes() for f in files)


@pytest.mark.skipif(__import__("multiprocessing").get_start_method() != "fork",
                    reason="the failing phantom is planted by monkeypatch, which only forked workers inherit")
def test_synth_dataset_failure_in_a_worker_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> Phantom:
        raise RuntimeError("boom in a worker")

    monkeypatch.setattr(synth, "make_phantom", broken)
    with pytest.raises(RuntimeError, match="boom in a worker"):
        synth_dataset(tmp_path / "ds", n=24, size=48, workers=2)
    assert list(tmp_path.iterdir()) == []


def test_synth_dataset_rejects_zero_workers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        synth_dataset(tmp_path / "ds", n=6, size=48, workers=0)
    assert list(tmp_path.iterdir()) == []


def test_synth_dataset_only_draws_the_named_splits_as_a_full_draw_would(tmp_path: Path) -> None:
    full = synth_dataset(tmp_path / "full", n=24, size=48, seed=3, shortcut=True)
    part = synth_dataset(tmp_path / "part", n=24, size=48, seed=3, shortcut=True, only=("test",))
    files = _files(part.root)
    assert files and all(f.startswith(("test/", "masks/test/", "lungs/test/")) or f == "manifest.csv" for f in files)
    assert {f for f in _files(full.root) if "test/" in f} == files - {"manifest.csv"}
    assert all((full.root / f).read_bytes() == (part.root / f).read_bytes() for f in files if f != "manifest.csv")
    rows = (part.root / "manifest.csv").read_text().splitlines()[1:]
    assert len(rows) == sum(part.counts["test"].values()) and all(",test," in r for r in rows)
    with pytest.raises(ConfigError, match="only must name some of the splits"):
        synth_dataset(tmp_path / "bad", n=24, size=48, only=("tset",))
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_synth_dataset_runs_meanwhile_once_and_still_writes_everything(tmp_path: Path, workers: int) -> None:
    calls: list[bool] = []
    summary = synth_dataset(tmp_path / "ds", n=24, size=48, seed=3, workers=workers,
                            meanwhile=lambda: calls.append((tmp_path / "ds").exists()))
    assert calls == [False]  # once, before the dataset is renamed into place
    assert len(list((summary.root / "train").rglob("*.png"))) == sum(summary.counts["train"].values())
