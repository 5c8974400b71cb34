"""Reduced-size decoding (``max_side``) and header-only sizes (``read_image_size``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_io import write_dicom

from pneumoscope.data.io import read_image, read_image_bytes, read_image_size, read_image_size_bytes
from pneumoscope.errors import ImageReadError, ImageTooLargeError

SRC_H, SRC_W = 400, 600
OUT = (100, 150)  # what max_side=150 must give for a 600 x 400 source


def smooth(scale: float = 1.0) -> np.ndarray:
    """A smooth, asymmetric (SRC_H, SRC_W) float image in [0, 255 * scale]."""
    yy, xx = np.mgrid[0:SRC_H, 0:SRC_W]
    base = 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + 40 * (xx / SRC_W) - 20 * (yy / SRC_H)
    return np.clip(base, 0, 255) * scale


def reference(full: np.ndarray, size: tuple[int, int] = OUT) -> np.ndarray:
    """Full decode then the model preprocessing's resize (torch bilinear, antialiased)."""
    t = torch.from_numpy(np.ascontiguousarray(full))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()


def encoded(mode: str, fmt: str) -> bytes:
    base = smooth()
    if mode == "I;16":
        img = Image.fromarray((base * 257).astype(np.uint16))
    elif mode == "L":
        img = Image.fromarray(base.astype(np.uint8))
    else:
        img = Image.fromarray(np.stack([base, base * 0.9, base * 0.7], -1).astype(np.uint8))
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


CASES = [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("I;16", "PNG"),
         ("L", "JPEG"), ("RGB", "JPEG"), ("L", "BMP"), ("RGB", "TIFF")]


@pytest.mark.parametrize(("mode", "fmt"), CASES)
def test_reduced_decode_matches_full_decode_then_resize(mode, fmt) -> None:
    data = encoded(mode, fmt)
    full = read_image_bytes(data)
    small = read_image_bytes(data, max_side=150)
    assert small.shape == OUT and small.dtype == np.float32 and small.flags.c_contiguous
    diff = np.abs(small - reference(full))
    # 8-bit rounding of the shrunk image (and, for JPEG, libjpeg's DCT scaling): ~1/255.
    assert diff.max() < 0.01 and diff.mean() < 0.003, (diff.max(), diff.mean())
    # An image that already fits is decoded exactly as without max_side.
    assert np.array_equal(read_image_bytes(data, max_side=600), full)


def test_jpeg_is_decoded_at_reduced_scale(monkeypatch) -> None:
    """Draft mode: libjpeg hands over 1/4 of the width, not the full image shrunk afterwards."""
    seen: list[tuple[int, int]] = []
    original = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        seen.append(self.size)
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    read_image_bytes(encoded("RGB", "JPEG"), max_side=150)
    assert seen == []  # decoded at 1/4 scale: already the target size, nothing left to shrink
    read_image_bytes(encoded("RGB", "JPEG"), max_side=160)
    assert seen == [(300, 200)]  # 1/4 (150 px) would not cover 160 px: decoded at 1/2, then shrunk


def test_exif_orientation_is_applied_after_shrinking() -> None:
    img = Image.fromarray(smooth().astype(np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    full = read_image_bytes(buf.getvalue())
    small = read_image_bytes(buf.getvalue(), max_side=150)
    assert full.shape == (SRC_W, SRC_H) and small.shape == (150, 100)
    assert np.abs(small - reference(full, (150, 100))).max() < 0.01


def _dicom_cases(tmp_path: Path) -> dict[str, Path]:
    u16 = (smooth() * 12).astype(np.uint16)  # 0 .. ~3060, 12 bits
    lut = write_dicom(tmp_path / "voilut.dcm", u16, bits_stored=12)
    ds = pydicom.dcmread(lut)
    item = Dataset()
    item.LUTDescriptor = [2000, 500, 16]
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(100, 4000, 2000)])
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(lut)
    return {
        "min-max": write_dicom(tmp_path / "m2.dcm", u16, bits_stored=12),
        "monochrome1": write_dicom(tmp_path / "m1.dcm", u16, bits_stored=12, photometric="MONOCHROME1"),
        "rescale+window": write_dicom(tmp_path / "rw.dcm", u16, bits_stored=12, slope=2.0, intercept=-1024.0,
                                      center=1500.0, width=3000.0),
        "signed": write_dicom(tmp_path / "s.dcm", (u16.astype(np.int16) - 1500).astype(np.int16), signed=True),
        "voi-lut": lut,
        "rgb": write_dicom(tmp_path / "rgb.dcm", np.stack([smooth().astype(np.uint8)] * 3, -1), photometric="RGB"),
        "multiframe": write_dicom(tmp_path / "mf.dcm", np.stack([u16, u16[::-1].copy()]), bits_stored=12, frames=2),
    }


def test_reduced_dicom_matches_full_decode_then_resize(tmp_path) -> None:
    for name, path in _dicom_cases(tmp_path).items():
        full = read_image(path)
        small = read_image(path, max_side=150)
        assert small.shape == OUT and small.dtype == np.float32, name
        diff = np.abs(small - reference(full))
        # Shrinking the stored values before the LUTs: exact for linear maps, within a
        # LUT step otherwise.
        # The window's clipping is not linear, so pixels next to a clipped edge may differ by a bit more.
        assert diff.max() < 0.02 and diff.mean() < 0.002, (name, diff.max(), diff.mean())
        assert np.array_equal(read_image(path, max_side=600), full), name


def test_header_only_size(tmp_path) -> None:
    png = encoded("L", "PNG")
    assert read_image_size_bytes(png, "a.png") == (SRC_W, SRC_H)
    path = tmp_path / "a.png"
    path.write_bytes(png)
    assert read_image_size(path) == (SRC_W, SRC_H)
    # A DICOM claiming 20000 x 20000 with 16 bytes of pixels: the size comes from the header.
    dcm = write_dicom(tmp_path / "big.dcm", np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(dcm)
    ds.Rows = ds.Columns = 20_000
    ds.save_as(dcm)
    assert read_image_size(dcm, max_pixels=10**9) == (20_000, 20_000)
    with pytest.raises(ImageTooLargeError, match="400,000,000 pixels"):
        read_image_size(dcm)
    with pytest.raises(ImageReadError, match="not a recognised image"):
        read_image_size_bytes(b"hello, not an image at all", "x.png")


def test_header_only_size_decodes_no_pixel(monkeypatch, tmp_path) -> None:
    jpeg, png = encoded("RGB", "JPEG"), encoded("L", "PNG")
    dcm = write_dicom(tmp_path / "a.dcm", np.zeros((SRC_H, SRC_W), np.uint16)).read_bytes()

    def boom(*_a, **_k):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", boom)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(boom))
    assert read_image_size_bytes(jpeg, "a.jpg") == (SRC_W, SRC_H)
    assert read_image_size_bytes(png, "a.png") == (SRC_W, SRC_H)
    assert read_image_size_bytes(dcm, "a.dcm") == (SRC_W, SRC_H)
    with pytest.raises(ImageReadError, match="pixels were decoded"):
        read_image_bytes(png, "a.png")  # the guard itself works


def test_bad_max_side() -> None:
    with pytest.raises(ValueError, match="max_side"):
        read_image_bytes(encoded("L", "PNG"), max_side=0)


_PEAK_SCRIPT = textwrap.dedent("""
    import gc, json, sys
    from pathlib import Path
    from pneumoscope.data.io import read_image_bytes

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB

    peaks = {}
    for spec in sys.argv[1:]:
        path, max_side = spec.split("@")
        path = Path(path)
        read_image_bytes(path.with_name("warm" + path.suffix).read_bytes(), max_side=64)  # decoder set-up
        data = path.read_bytes()
        gc.collect()
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak (VmHWM) to the current resident size
        before = status("VmRSS")
        out = read_image_bytes(data, max_side=None if max_side == "none" else int(max_side))
        peaks[spec] = status("VmHWM") - before
        del out, data
    print(json.dumps(peaks))
""")


def _write_big(folder: Path, fmt: str, side: int) -> Path:
    from PIL import ImageDraw

    for name, size in (("warm", 256), ("big", side)):
        img = Image.new("L", (size, size), 60)
        ImageDraw.Draw(img).ellipse((size // 8, size // 8, size * 7 // 8, size * 5 // 8), fill=180)
        img.save(folder / f"{name}.{fmt.lower()}", format=fmt)
    return folder / f"big.{fmt.lower()}"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-RSS reset")
def test_peak_memory_follows_the_output_not_the_source(tmp_path) -> None:
    """A 5000 x 5000 (25 MP) 8-bit image: the full decode holds 25 MB of 8-bit and several float32 copies."""
    png, jpeg = _write_big(tmp_path, "PNG", 5000), _write_big(tmp_path, "JPEG", 5000)
    specs = [f"{png}@1024", f"{jpeg}@1024", f"{png}@none"]
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, *specs], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    small_png, small_jpeg, full_png = json.loads(proc.stdout.strip().splitlines()[-1]).values()
    print(f"peak MB: full PNG {full_png:.0f}, reduced PNG {small_png:.0f}, reduced JPEG {small_jpeg:.0f}")
    assert full_png > 25 + 100, full_png  # the default path: 8-bit decode plus float32 copies (4 bytes/px each)
    assert small_png < 25 + 30, small_png  # one 8-bit copy of the source, nothing at float size
    assert small_jpeg < 25, small_jpeg  # decoded at 1/4 scale: not even one 8-bit copy of the source
