"""Tests for pneumoscope.data.io: every format reads to (H, W) float32 in [0, 1], bad input fails clearly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEGBaseline8Bit,
    generate_uid,
)

from pneumoscope.data.io import (
    IMAGE_SUFFIXES,
    is_dicom,
    list_images,
    read_dicom,
    read_image,
    to_uint8,
)
from pneumoscope.errors import DataError, ImageReadError

H, W = 16, 20  # deliberately non-square so transposition bugs show
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/kaggle_val_fullres"


# ----------------------------------------------------------------------------- helpers


def gradient_u8() -> np.ndarray:
    """(H, W) uint8 with distinct values, asymmetric in both axes."""
    return (np.arange(H * W, dtype=np.int64).reshape(H, W) * 255 // (H * W - 1)).astype(np.uint8)


def blocks_u8() -> np.ndarray:
    """(H, W) uint8 of flat 8x? blocks (JPEG-friendly) with one bright top-left corner."""
    img = np.full((H, W), 40, dtype=np.uint8)
    img[:8, :8] = 230  # bright top-left block
    img[8:, 12:] = 130  # mid-grey bottom-right block
    return img


def assert_gray01(arr: np.ndarray, shape: tuple[int, int] = (H, W)) -> None:
    assert isinstance(arr, np.ndarray)
    assert arr.dtype == np.float32
    assert arr.shape == shape
    assert np.all(np.isfinite(arr))
    assert arr.min() >= 0.0 and arr.max() <= 1.0


def write_dicom(
    path: Path,
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    signed: bool = False,
    slope: float | None = None,
    intercept: float | None = None,
    center: float | None = None,
    width: float | None = None,
    frames: int = 1,
) -> Path:
    """Write an uncompressed DICOM (with preamble and file meta) holding ``pixels``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Test^Patient"
    if pixels is not None:
        bits_allocated = pixels.dtype.itemsize * 8
        ds.Rows, ds.Columns = pixels.shape[-3:-1] if pixels.ndim == 3 + (frames > 1) else pixels.shape[-2:]
        ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
        if photometric == "RGB":
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits_stored or bits_allocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if signed else 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept if intercept is not None else 0
        ds.RescaleType = "US"
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_bytes(img: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95, **kwargs)
    return buf.getvalue()


def write_encapsulated_dicom(path: Path, fragment: bytes, transfer_syntax: str, shape=(H, W)) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([fragment])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


# ------------------------------------------------------------------------- Pillow formats


def test_png_8bit_grey_is_exact(tmp_path: Path) -> None:
    src = gradient_u8()
    path = tmp_path / "grey.png"
    Image.fromarray(src, mode="L").save(path)
    out = read_image(path)
    assert_gray01(out)
    np.testing.assert_array_equal(out, src.astype(np.float32) / 255.0)  # no contrast stretch


def test_png_8bit_is_not_stretched(tmp_path: Path) -> None:
    # A low-contrast image must stay low-contrast: 8-bit is /255, never min-max.
    src = np.full((H, W), 100, dtype=np.uint8)
    src[0, 0] = 110
    path = tmp_path / "flat.png"
    Image.fromarray(src).save(path)
    out = read_image(path)
    assert out.max() == pytest.approx(110 / 255)
    assert out.min() == pytest.approx(100 / 255)


def test_jpeg_8bit_grey_round_trip(tmp_path: Path) -> None:
    src = blocks_u8()
    path = tmp_path / "grey.jpg"
    path.write_bytes(jpeg_bytes(src))
    out = read_image(path)
    assert_gray01(out)
    assert np.abs(out - src / 255.0).max() < 0.05


def test_png_16bit_uses_full_16bit_scale(tmp_path: Path) -> None:
    src = np.zeros((H, W), dtype=np.uint16)
    src[0, 0] = 65535
    src[1, 1] = 32768
    src[2, 2] = 1000
    path = tmp_path / "deep.png"
    Image.fromarray(src).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really a 16-bit image on disk
    out = read_image(path)
    assert_gray01(out)
    assert out[0, 0] == pytest.approx(1.0)
    assert out[1, 1] == pytest.approx(0.5, abs=1e-4)
    assert out[2, 2] == pytest.approx(1000 / 65535, abs=1e-6)
    assert out[3, 3] == 0.0


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "1", "LA"])
def test_other_png_modes_give_gray(tmp_path: Path, mode: str) -> None:
    grey = gradient_u8()
    rgb = np.stack([grey, grey, grey], axis=-1)
    if mode == "RGBA":
        rgba = np.dstack([rgb, np.full((H, W), 7, dtype=np.uint8)])  # nearly transparent
        im = Image.fromarray(rgba, mode="RGBA")
    elif mode == "LA":
        im = Image.fromarray(np.dstack([grey, np.full((H, W), 7, np.uint8)]), mode="LA")
    elif mode == "P":
        im = Image.fromarray(rgb, mode="RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    else:
        im = Image.fromarray(rgb, mode="RGB").convert(mode)
    path = tmp_path / f"img_{mode}.png"
    im.save(path)
    with Image.open(path) as check:
        assert check.mode == mode
    out = read_image(path)
    assert_gray01(out)
    if mode in ("RGB", "RGBA", "LA"):
        # Grey stored as colour comes back exactly; alpha is dropped, not composited.
        np.testing.assert_allclose(out, grey / 255.0, atol=1e-5)
    elif mode == "1":
        assert set(np.unique(out)) <= {0.0, 1.0}
        assert out[0, 0] == 0.0 and out[-1, -1] == 1.0
    else:  # palette: adaptive quantisation of a grey ramp stays close to it
        assert np.abs(out - grey / 255.0).max() < 0.03


def test_rgb_colour_uses_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[..., 1] = 255  # pure green
    path = tmp_path / "green.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_allclose(read_image(path), 0.587, atol=1e-5)


@pytest.mark.parametrize("fmt,suffix", [("BMP", ".bmp"), ("TIFF", ".tif")])
def test_bmp_and_tiff(tmp_path: Path, fmt: str, suffix: str) -> None:
    src = gradient_u8()
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(src).save(path, format=fmt)
    out = read_image(path)
    np.testing.assert_array_equal(out, src / np.float32(255.0))


@pytest.mark.parametrize("orientation,k", [(6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int, k: int) -> None:
    src = blocks_u8()
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    path = tmp_path / f"rot{orientation}.jpg"
    path.write_bytes(jpeg_bytes(src, exif=exif.tobytes()))
    out = read_image(path)
    # 6: stored image must be turned 90 deg clockwise for display; 8: counter-clockwise.
    expected = np.rot90(src, k=k) / 255.0
    assert out.shape == (W, H)
    assert np.abs(out - expected).max() < 0.08
    # The bright block moved to the top-right (6) or bottom-left (8) corner.
    corner = out[:8, -8:] if orientation == 6 else out[-8:, :8]
    assert corner.mean() > 0.8


# --------------------------------------------------------------------------------- DICOM


def ramp_u16() -> np.ndarray:
    return (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 10)  # 0 .. 3190


def test_dicom_monochrome2_16bit_min_max(tmp_path: Path) -> None:
    src = ramp_u16()
    path = write_dicom(tmp_path / "m2.dcm", src, bits_stored=12)
    out = read_image(path)
    assert_gray01(out)
    # No window: the image's own min..max maps to 0..1.
    np.testing.assert_allclose(out, src / src.max(), atol=1e-6)
    assert is_dicom(path)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    src = ramp_u16()
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", src, photometric="MONOCHROME2"))
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", src, photometric="MONOCHROME1"))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == pytest.approx(1.0)  # lowest stored value is white in MONOCHROME1


def test_dicom_rescale_applied_before_window(tmp_path: Path) -> None:
    src = np.zeros((H, W), dtype=np.uint16)
    src[0, 0] = 1000  # -> 2*1000 - 1024 = 976  (inside the window: centre)
    src[0, 1] = 1512  # -> 2000                  (above the window: clipped to 1)
    src[0, 2] = 500  # -> -24                    (below the window: clipped to 0)
    src[0, 3] = 1050  # -> 1076                  (centre + 100: 0.5 + 100/400)
    path = write_dicom(
        tmp_path / "rescaled.dcm", src, slope=2.0, intercept=-1024.0, center=976.0, width=400.0
    )
    out = read_image(path)
    assert_gray01(out)
    assert out[0, 0] == pytest.approx(0.5, abs=0.01)
    assert out[0, 1] == 1.0
    assert out[0, 2] == 0.0
    assert out[0, 3] == pytest.approx(0.75, abs=0.01)
    # Had the window been applied to raw stored values, (0,0)=1000 would not sit at 0.5.


def test_dicom_window_clips_outside_range(tmp_path: Path) -> None:
    src = ramp_u16()  # 0 .. 3190
    path = write_dicom(tmp_path / "win.dcm", src, center=1000.0, width=1000.0)
    out = read_image(path)
    assert_gray01(out)
    assert np.all(out[src <= 500] == 0.0)
    assert np.all(out[src >= 1500] == 1.0)
    mid = (src > 600) & (src < 1400)
    np.testing.assert_allclose(out[mid], (src[mid] - 500.0) / 1000.0, atol=0.002)


def test_dicom_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    src = ramp_u16()  # 0 .. 3190
    path = write_dicom(tmp_path / "voilut.dcm", src)
    ds = pydicom.dcmread(path)
    item = Dataset()
    # 1000 entries starting at stored value 500, rising linearly 100 -> 4000.
    item.LUTDescriptor = [1000, 500, 16]
    item.add_new(0x00283006, "US", [int(v) for v in np.linspace(100, 4000, 1000)])  # LUTData
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(path)
    out = read_image(path)
    assert_gray01(out)
    assert np.all(out[src <= 500] == 0.0)  # below the LUT: first entry
    assert np.all(out[src >= 1499] == 1.0)  # above the LUT: last entry
    assert out[src == 1000][0] == pytest.approx(0.5, abs=0.01)


def test_dicom_signed_pixels(tmp_path: Path) -> None:
    src = (ramp_u16().astype(np.int16) - 1000).astype(np.int16)
    out = read_image(write_dicom(tmp_path / "signed.dcm", src, signed=True))
    np.testing.assert_allclose(out, (src - src.min()) / (src.max() - src.min()), atol=1e-6)


def test_dicom_jpeg_baseline_decodes(tmp_path: Path) -> None:
    src = blocks_u8()
    path = write_encapsulated_dicom(tmp_path / "jpeg.dcm", jpeg_bytes(src), JPEGBaseline8Bit)
    out = read_image(path)
    assert_gray01(out)
    # No window: min..max over the decoded image, so compare with the stretched source.
    expected = (src - src.min()) / float(src.max() - src.min())
    assert np.abs(out - expected).max() < 0.06


def test_dicom_missing_decoder_names_syntax_and_package(tmp_path: Path) -> None:
    from pydicom.pixels import get_decoder

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("an HTJ2K decoder is installed here; cannot exercise the missing-decoder path")
    path = write_encapsulated_dicom(tmp_path / "htj2k.dcm", b"\xff\x4f\xff\x51" + b"\0" * 16, HTJ2KLossless)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert "htj2k.dcm" in message
    assert "High-Throughput JPEG 2000" in message and str(HTJ2KLossless) in message
    assert "pylibjpeg-openjpeg" in message


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(ImageReadError, match="pixel data") as info:
        read_image(path)
    assert "nopix.dcm" in str(info.value)
    with pytest.raises(ImageReadError, match="pixel data"):
        read_dicom(path)


def test_dicom_without_suffix_is_recognised(tmp_path: Path) -> None:
    src = ramp_u16()
    path = write_dicom(tmp_path / "IM000123", src)
    assert is_dicom(path)
    np.testing.assert_allclose(read_image(path), src / src.max(), atol=1e-6)


def test_dicom_without_preamble_is_recognised(tmp_path: Path) -> None:
    # Raw dataset: no 128-byte preamble, no 'DICM', no file meta, odd suffix.
    src = ramp_u16()
    ds = Dataset()
    ds.SOPClassUID = DX_SOP_CLASS
    ds.Rows, ds.Columns = src.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = src.tobytes()
    path = tmp_path / "raw.img"
    ds.save_as(path, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    assert is_dicom(path)
    np.testing.assert_allclose(read_image(path), src / src.max(), atol=1e-6)


def test_dicom_multiframe_uses_first_frame(tmp_path: Path) -> None:
    first = ramp_u16()
    second = first[::-1, ::-1].copy()
    path = write_dicom(tmp_path / "multi.dcm", np.stack([first, second]), frames=2)
    out = read_image(path)
    np.testing.assert_allclose(out, first / first.max(), atol=1e-6)


def test_dicom_rgb_gives_gray(tmp_path: Path) -> None:
    grey = gradient_u8()
    path = write_dicom(tmp_path / "rgb.dcm", np.stack([grey] * 3, axis=-1), photometric="RGB")
    np.testing.assert_allclose(read_image(path), grey / 255.0, atol=1e-5)


def test_read_dicom_returns_dataset(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "meta.dcm", ramp_u16())
    ds = read_dicom(path)
    assert isinstance(ds, pydicom.Dataset)
    assert ds.Modality == "DX" and ds.Rows == H and ds.Columns == W


def test_is_dicom_false_for_non_dicom(tmp_path: Path) -> None:
    png = tmp_path / "x.png"
    Image.fromarray(gradient_u8()).save(png)
    assert not is_dicom(png)
    assert not is_dicom(tmp_path / "missing.dcm")
    assert not is_dicom(tmp_path)


# ---------------------------------------------------------------------------- bad input


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty \(0 bytes\)") as info:
        read_image(path)
    assert "empty.png" in str(info.value)


def test_text_file_named_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpeg"
    path.write_text("patient notes, definitely not an image\n")
    with pytest.raises(ImageReadError, match="not a recognised image") as info:
        read_image(path)
    assert "notes.jpeg" in str(info.value)


def test_text_file_named_dcm(tmp_path: Path) -> None:
    path = tmp_path / "notes.dcm"
    path.write_text("patient notes, definitely not an image\n")
    with pytest.raises(ImageReadError, match="not a valid DICOM") as info:
        read_image(path)
    assert "notes.dcm" in str(info.value)
    assert not is_dicom(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = jpeg_bytes(gradient_u8())
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as info:
        read_image(path)
    assert "cut.jpg" in str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="no such file") as info:
        read_image(tmp_path / "ghost.png")
    assert "ghost.png" in str(info.value)


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "scans.png"
    folder.mkdir()
    with pytest.raises(ImageReadError, match="directory") as info:
        read_image(folder)
    assert "scans.png" in str(info.value)


def test_too_many_pixels_checked_before_decoding(tmp_path: Path) -> None:
    png = tmp_path / "big.png"
    Image.fromarray(gradient_u8()).save(png)
    with pytest.raises(ImageReadError, match="max_pixels") as info:
        read_image(png, max_pixels=H * W - 1)
    assert "big.png" in str(info.value)
    assert read_image(png, max_pixels=H * W).shape == (H, W)  # the limit is inclusive
    dcm = write_dicom(tmp_path / "big.dcm", ramp_u16())
    with pytest.raises(ImageReadError, match="max_pixels") as info:
        read_image(dcm, max_pixels=100)
    assert "big.dcm" in str(info.value)


def test_decompression_bomb_header_is_not_decoded(tmp_path: Path) -> None:
    # A tiny PNG whose header claims 100000 x 100000 pixels: must fail fast, from the header.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "bomb.png" in str(info.value)
    assert "decompression bomb" in str(info.value) or "too large" in str(info.value)


def test_zero_dimension_dicom(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "flat.dcm", np.zeros((0, W), dtype=np.uint16))
    with pytest.raises(ImageReadError, match="zero dimension") as info:
        read_image(path)
    assert "flat.dcm" in str(info.value)


def test_corrupt_jpeg_dicom_fragment(tmp_path: Path) -> None:
    data = jpeg_bytes(blocks_u8())
    path = write_encapsulated_dicom(tmp_path / "badjpeg.dcm", data[: len(data) // 2], JPEGBaseline8Bit)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert "badjpeg.dcm" in str(info.value)


def test_max_pixels_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        read_image(tmp_path / "any.png", max_pixels=0)


# --------------------------------------------------------------------------- list_images


def test_list_images_recurses_filters_and_sorts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "b_sub" / "deeper").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    for rel in ["z.png", "a.JPG", "b_sub/c.dcm", "b_sub/deeper/d.tiff", ".hidden_dir/e.png", ".f.png", "notes.txt"]:
        (root / rel).write_bytes(b"x")
    found = list_images([root])
    assert found == sorted(found)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "a.JPG",
        "b_sub/c.dcm",
        "b_sub/deeper/d.tiff",
        "z.png",
    ]


def test_list_images_keeps_explicit_files_and_dedups(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "x.png").write_bytes(b"x")
    odd = tmp_path / "scan.weird"
    odd.write_bytes(b"x")
    found = list_images([odd, root, root / "x.png", str(root)])
    assert found == [odd, root / "x.png"]
    assert list_images(str(odd)) == [odd]  # a bare string is one input, not characters


def test_list_images_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder") as info:
        list_images([tmp_path / "nowhere"])
    assert "nowhere" in str(info.value)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        list_images([empty])
    assert "empty_folder" in str(info.value) and ".png" in str(info.value)


def test_image_suffixes_are_lower_case() -> None:
    assert ".dcm" in IMAGE_SUFFIXES and ".jpeg" in IMAGE_SUFFIXES
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)


# ------------------------------------------------------------------------------ to_uint8


def test_to_uint8_rounds_and_clips() -> None:
    gray = np.array([[-0.5, 0.0, 0.5, 1.0, 2.0, np.nan]], dtype=np.float32)
    out = to_uint8(gray)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 128, 255, 255, 0]]
    src = gradient_u8()
    np.testing.assert_array_equal(to_uint8(src / 255.0), src)


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_kaggle_fullres_images() -> None:
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    files = list_images([REAL_DATA])
    assert files
    for path in files:
        arr = read_image(path)
        assert arr.ndim == 2 and arr.dtype == np.float32, path
        assert 0.0 <= arr.min() and arr.max() <= 1.0, path
        assert max(arr.shape) >= 900, path
