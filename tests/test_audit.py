"""The dataset audit finds acquisition cues that separate the classes or the collections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_user_error
from pneumoscope.data.audit import CUES, audit, image_cues


def _texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An isotropic smooth texture in [0, 1] of shape (h, w): blobs about 4 px across."""
    noise = (rng.random((h // 4, w // 4)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(noise).resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0


def _resized(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0


def _write_collection(
    root: Path, normal_shape: tuple[int, int], pneumonia_shape: tuple[int, int], stored: tuple[int, int] | None = None,
    n: int = 10, seed: int = 0,
) -> Path:
    """NORMAL and PNEUMONIA images of the same texture, each class acquired at its own shape (h, w);
    ``stored`` resizes every image to one shape afterwards, as a third party did to the Kaggle data."""
    rng = np.random.default_rng(seed)
    for cls, (h, w) in (("NORMAL", normal_shape), ("PNEUMONIA", pneumonia_shape)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = _texture(h, w, rng)
            if stored is not None:
                img = _resized(img, *stored)
            Image.fromarray((img * 255).astype(np.uint8)).save(root / cls / f"person{i}_{cls.lower()}_{i}.png")
    return root


def test_image_cues_measure_squash_and_black_margins():
    rng = np.random.default_rng(0)
    sq = _texture(128, 128, rng)
    base = image_cues(sq)
    assert base["aspect"] == 1.0
    assert base["megapixels"] == pytest.approx(128 * 128 / 1e6)
    assert base["border"] == pytest.approx(0.0, abs=1e-6)
    # An image 1.5x wider than tall is squashed horizontally into the square: steeper horizontal gradients.
    wide = _texture(128, 192, rng)
    assert image_cues(wide)["aspect"] == pytest.approx(1.5)
    assert image_cues(wide)["anisotropy"] > base["anisotropy"] * 1.2
    # Squashed already by whoever stored it: the aspect is gone, the squash stays visible.
    assert image_cues(_resized(wide, 128, 128))["anisotropy"] > base["anisotropy"] * 1.2
    tall = _texture(192, 128, rng)
    assert image_cues(tall)["anisotropy"] < base["anisotropy"] / 1.2
    # Black margins of a quarter of the width on each side: half the area is border.
    framed = sq.copy() * 0.8 + 0.2
    framed[:, :32] = 0.0
    framed[:, 96:] = 0.0
    assert image_cues(framed)["border"] == pytest.approx(0.5, abs=0.03)


def test_audit_flags_a_class_confound_and_leaves_neutral_cues_alone(tmp_path):
    # NORMAL acquired 1.5x wider than tall, PNEUMONIA square: the shape alone gives the class away.
    root = _write_collection(tmp_path / "data", normal_shape=(96, 144), pneumonia_shape=(96, 96))
    rep = audit(root, progress=False)
    rows = {r.cue: r for r in rep.rows}
    assert set(rows) == set(CUES)
    assert rep.counts == {"NORMAL": 10, "PNEUMONIA": 10}
    assert rows["aspect"].class_auc == 0.0 and rows["aspect"].flag == "strong"  # higher in NORMAL
    assert rows["anisotropy"].class_auc == pytest.approx(0.0) and rows["anisotropy"].flag == "strong"  # NORMAL squashed
    assert rows["brightness"].flag == "" and 0.3 < rows["brightness"].class_auc < 0.7
    text = "\n".join(rep.lines())
    assert "these cues alone separate the classes" in text
    assert "  aspect: AUC 0.000, higher in NORMAL" in text and "  brightness:" not in text
    assert "only 10 images in the smaller class" in text


def test_audit_reports_constant_cues_and_shift_against_a_second_collection(tmp_path):
    # Both collections resized to 96 x 96; the test site's NORMALs were acquired 1.5x wide.
    train = _write_collection(tmp_path / "ds" / "train", (96, 96), (96, 96), stored=(96, 96), seed=1)
    test = _write_collection(tmp_path / "ds" / "test", (96, 144), (96, 96), stored=(96, 96), n=6, seed=2)
    rep = audit(tmp_path / "ds", tmp_path / "ds", progress=False)  # a root: its train/, compared with its test/
    assert rep.data == str(train) and rep.compare == str(test)
    rows = {r.cue: r for r in rep.rows}
    assert rows["aspect"].flag == "constant" and rows["aspect"].class_auc is None
    assert rows["aspect"].shift_auc == {"NORMAL": 0.5, "PNEUMONIA": 0.5}
    assert rows["anisotropy"].shift_auc["NORMAL"] == pytest.approx(1.0)  # test NORMALs are squashed
    assert 0.2 < rows["anisotropy"].shift_auc["PNEUMONIA"] < 0.8
    assert rows["anisotropy"].flag == ""  # within train, the classes do not differ
    assert "aspect, megapixels, border: the same for every image; the images were stored at one shape" in "\n".join(rep.lines())


def test_audit_cli_writes_json_and_errors_are_one_line(run_cli, tmp_path):
    root = _write_collection(tmp_path / "data", normal_shape=(96, 144), pneumonia_shape=(96, 96), n=6)
    out = tmp_path / "reports" / "audit.json"
    r = run_cli("audit", root, "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "anisotropy" in r.stdout and "[strong]" in r.stdout
    saved = json.loads(out.read_text())
    assert [row["cue"] for row in saved["rows"]] == list(CUES)
    assert not list(out.parent.glob("*.tmp"))
    assert_user_error(run_cli("audit", tmp_path / "nowhere"), "nowhere", "no such folder")
    (tmp_path / "flat").mkdir()
    assert_user_error(run_cli("audit", tmp_path / "flat"), "flat", "NORMAL/ and PNEUMONIA/", "train/")
    assert_user_error(run_cli("audit", root, "--compare", tmp_path / "flat"), "flat", "test/")


def test_audit_reads_a_manifests_train_rows_and_compares_with_its_test_rows(tmp_path):
    root = _write_collection(tmp_path / "imgs", normal_shape=(96, 144), pneumonia_shape=(96, 96), n=4)
    files = sorted(root.rglob("*.png"))
    lines = ["path,label,split"] + [
        f"{f.relative_to(tmp_path)},{f.parent.name},{'train' if i % 2 else 'test'}" for i, f in enumerate(files)
    ]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    rep = audit(tmp_path / "m.csv", tmp_path / "m.csv", progress=False)
    assert rep.counts == {"NORMAL": 2, "PNEUMONIA": 2} and rep.compare_counts == {"NORMAL": 2, "PNEUMONIA": 2}
    assert {r.cue: r for r in rep.rows}["aspect"].class_auc == 0.0


def _marked(size: int, corner: str | None, rng: np.random.Generator) -> np.ndarray:
    """A smooth grey image (a soft body-like gradient), with a bright "R" burned in at ``corner``."""
    from PIL import ImageDraw, ImageFont

    yy, xx = np.mgrid[0:size, 0:size] / size
    base = 0.25 + 0.3 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.6) ** 2) / 0.15) + 0.02 * rng.random()
    im = Image.fromarray((base * 255).astype(np.uint8))
    if corner is not None:
        font = ImageFont.load_default(size=size // 8)
        x = size // 30 if corner[1] == "l" else size - size // 8
        y = size // 30 if corner[0] == "t" else size - size // 7
        ImageDraw.Draw(im).text((x, y), "R", fill=245, font=font)
    return np.asarray(im, dtype=np.float32) / 255.0


def test_corner_marks_find_a_burned_in_marker_and_the_audit_flags_it_where_one_class_has_it(tmp_path):
    rng = np.random.default_rng(0)
    for corner in ("tl", "tr", "bl", "br"):
        cues = image_cues(_marked(200, corner, rng))
        assert cues[f"marks_{corner}"] > 0.02
        assert all(cues[f"marks_{c}"] == 0.0 for c in ("tl", "tr", "bl", "br") if c != corner)
    assert all(image_cues(_marked(200, None, rng))[f"marks_{c}"] == 0.0 for c in ("tl", "tr", "bl", "br"))
    # Every PNEUMONIA image with a top-left marker, no NORMAL one: the cue alone gives the class away.
    root = tmp_path / "data"
    for cls, corner in (("NORMAL", None), ("PNEUMONIA", "tl")):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray((_marked(160, corner, rng) * 255).astype(np.uint8)).save(root / cls / f"p{i}_{cls}.png")
    rows = {r.cue: r for r in audit(root, progress=False).rows}
    assert rows["marks_tl"].class_auc == 1.0 and rows["marks_tl"].flag == "strong"
    assert all(rows[f"marks_{c}"].flag == "constant" for c in ("tr", "bl", "br"))
