"""Read chest X-ray images of every supported format into one grey representation.

Every reader here returns the same thing: a 2-D ``float32`` array in ``[0, 1]`` with
bright bone, i.e. the image "as a radiologist would see it" on a display. Models,
Grad-CAM overlays and reports can then treat a JPEG exported from a PACS viewer and
the original DICOM alike.

Formats:

* JPEG, PNG, BMP and TIFF are decoded by Pillow. EXIF orientation is applied; 8-bit
  data is divided by 255 and 16-bit data by 65535 with no contrast stretching, so the
  exported appearance is kept; colour is reduced to luminance (ITU-R BT.601 weights,
  the ones Pillow and JPEG use); an alpha channel is dropped, not composited.
* DICOM is decoded by pydicom: Modality LUT (Rescale Slope/Intercept), then VOI LUT or
  window (Window Center/Width), then a linear map of the VOI output range to
  ``[0, 1]``; MONOCHROME1 is inverted. Multi-frame files give their first frame.

Every problem a user can fix (missing, empty, truncated or unsupported file, missing
decoder, oversized image) is raised as :class:`~pneumoscope.errors.ImageReadError`
naming the file and what was expected, never as a raw library exception.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as dicom_uid
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    get_decoder,
)

from pneumoscope.errors import DataError, ImageReadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "is_dicom",
    "list_images",
    "read_dicom",
    "read_image",
    "to_uint8",
]

logger = logging.getLogger(__name__)

#: File suffixes (lower case) that :func:`list_images` picks up when it walks a folder.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)

#: Default upper bound on width x height, checked from the header before decoding.
DEFAULT_MAX_PIXELS: int = 100_000_000

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})

# Pillow is asked for these formats only: its other plugins (TGA in particular) identify
# files on weak evidence and could claim a preamble-less DICOM or random bytes. (A JPEG
# with a multi-picture segment is opened as MPO by the JPEG opener, so it is covered.)
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "TIFF")

_EXPECTED = "expected a JPEG, PNG or DICOM image"
_EXPECTED_ANY = "expected a JPEG, PNG, BMP, TIFF or DICOM image"

_DICM_OFFSET = 128
_HEAD_BYTES = _DICM_OFFSET + 4

# ITU-R BT.601 luma weights: what Pillow's convert("L") and JPEG's YCbCr use, so a colour
# export of a grey radiograph comes back to the same grey values.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# DICOM elements that any image object carries; a forced parse of a file that is not
# DICOM produces a handful of garbage elements but never these.
_DICOM_EVIDENCE = ("SOPClassUID", "Rows", "Columns", "StudyInstanceUID", "Modality")

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


# --------------------------------------------------------------------------- public API


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a chest X-ray (JPEG, PNG, BMP, TIFF or DICOM) as a display-ready grey image.

    DICOM is recognised by content (``DICM`` at byte 128), by a ``.dcm``/``.dicom``
    suffix, or, for preamble-less files, by parsing when Pillow cannot identify the file;
    anything else must be a JPEG, PNG, BMP or TIFF whatever its suffix.

    Args:
        path: The image file.
        max_pixels: Refuse images with more than this many pixels (width x height of the
            decoded frame). Checked from the header before any pixel is decoded, so a
            decompression bomb costs nothing. For Pillow formats, Pillow's own bomb limit
            (``2 * PIL.Image.MAX_IMAGE_PIXELS``) also applies and is reported the same way.

    Returns:
        A C-contiguous ``(H, W)`` ``float32`` array in ``[0, 1]`` with bright bone.

    Raises:
        ImageReadError: The file is missing, a directory, empty, not a supported image,
            truncated or corrupt, a DICOM without pixel data or whose compression has no
            decoder installed, has a zero dimension, or exceeds ``max_pixels``.
        ValueError: ``max_pixels`` is not a positive integer (a programming error).
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    p = _check_file(path)
    head = _read_head(p)
    if _has_dicm_marker(head):
        ds = _parse_dicom(p, has_marker=True)
        return _dicom_to_gray(ds, p, max_pixels)

    image = _open_with_pillow(p)
    if image is not None:
        with image:
            return _pil_to_gray(image, p, max_pixels)

    if p.suffix.lower() in _DICOM_SUFFIXES or _looks_like_raw_dicom(p, head):
        ds = _parse_dicom(p, has_marker=False)
        return _dicom_to_gray(ds, p, max_pixels)
    raise ImageReadError(p, f"not a recognised image ({_describe_head(head)}); {_EXPECTED_ANY}")


def read_dicom(path: str | Path) -> Dataset:
    """Parse a DICOM image file, keeping every element (for DICOM output built from it).

    Pixel data is parsed but not decoded; use :func:`read_image` for the pixels.

    Args:
        path: The DICOM file (with or without the 128-byte preamble).

    Returns:
        The parsed dataset. Its ``file_meta.TransferSyntaxUID`` is always set (it is
        inferred from the encoding for preamble-less files that lack it).

    Raises:
        ImageReadError: The file is missing, a directory, empty, not DICOM, truncated, or
            has no pixel data.
    """
    p = _check_file(path)
    ds = _parse_dicom(p, has_marker=_has_dicm_marker(_read_head(p)))
    _require_pixel_data(ds, p)
    return ds


def is_dicom(path: str | Path) -> bool:
    """Tell whether a file holds DICOM, judging by content rather than by suffix.

    Args:
        path: Any path; a missing or unreadable path is simply not DICOM.

    Returns:
        True for a file with ``DICM`` at byte 128, or a preamble-less file that parses
        as a DICOM dataset carrying image/SOP attributes.
    """
    p = Path(path)
    try:
        head = _read_head(p)
    except ImageReadError:
        return False
    return _has_dicm_marker(head) or _looks_like_raw_dicom(p, head)


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders into the list of image files to read.

    A file is taken as is, whatever its suffix (the caller named it, so it is meant to be
    read; :func:`read_image` judges its content). A folder is walked recursively for files
    whose lower-cased suffix is in :data:`IMAGE_SUFFIXES`, skipping hidden files and
    folders (name starting with ``.``: ``.DS_Store``, ``.ipynb_checkpoints``, ``.git``),
    and its images are sorted by path so runs are reproducible.

    Args:
        inputs: Files and/or folders. A single ``str`` or ``Path`` is accepted as a
            one-element list (a bare string would otherwise be iterated per character).

    Returns:
        The image paths, without duplicates (same absolute path), in input order.

    Raises:
        DataError: An input does not exist, or an input folder holds no image.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    result: list[Path] = []
    seen: set[str] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = _walk_images(p)
            if not found:
                accepted = " ".join(sorted(IMAGE_SUFFIXES))
                raise DataError(
                    f"{p}: no images found in this folder or below "
                    f"(accepted suffixes: {accepted}; hidden files and folders are skipped)"
                )
        elif p.exists():
            found = [p]
        else:
            raise DataError(f"{p}: no such file or folder")
        for f in found:
            # abspath, not resolve(): collapse "a/x.png" vs "./a/x.png" without following
            # symlinks, so two deliberately distinct links stay distinct entries.
            key = os.path.abspath(f)
            if key not in seen:
                seen.add(key)
                result.append(f)
    return result


def to_uint8(gray: np.ndarray) -> np.ndarray:
    """Convert a ``[0, 1]`` float image to ``uint8`` (for saving or overlays).

    Args:
        gray: Float array of any shape, nominally in ``[0, 1]``; values outside are
            clipped and NaN becomes 0.

    Returns:
        A ``uint8`` array of the same shape, ``round(255 * clip(gray, 0, 1))``.
    """
    scaled = np.nan_to_num(np.asarray(gray, dtype=np.float32), nan=0.0)
    # Clip before the cast: casting an out-of-range float to uint8 wraps around.
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


# ------------------------------------------------------------------------ file checks


def _check_file(path: str | Path) -> Path:
    """Return ``path`` as a Path if it is a non-empty file, else raise ImageReadError."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageReadError(p, f"no such file; {_EXPECTED}") from None
    except OSError as exc:
        raise ImageReadError(p, f"cannot access file ({_os_reason(exc)}); {_EXPECTED}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(
            p, "is a directory, not an image file; pass the image files (or use list_images)"
        )
    if st.st_size == 0:
        raise ImageReadError(p, f"file is empty (0 bytes); {_EXPECTED}")
    return p


def _read_head(p: Path) -> bytes:
    """Read the first bytes of a file: enough for the DICOM marker and format sniffing."""
    try:
        with p.open("rb") as fh:
            return fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise ImageReadError(p, f"cannot read file ({_os_reason(exc)}); {_EXPECTED}") from None


def _has_dicm_marker(head: bytes) -> bool:
    return head[_DICM_OFFSET:_HEAD_BYTES] == b"DICM"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _one_line(exc: BaseException) -> str:
    """First line of an exception message, bounded, for a one-line user-facing error."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _describe_head(head: bytes) -> str:
    """Say briefly what the file looks like, so "not an image" is actionable."""
    sample = head[:64]
    if sample.lstrip().startswith((b"<", b"{", b"[")):
        return "looks like HTML/XML/JSON text"
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "looks like a text file"
    return f"unknown content starting with {sample[:8].hex(' ')}"


def _check_dimensions(p: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(
            p, f"image has a zero dimension ({width}x{height} pixels); expected a non-empty image"
        )
    if width * height > max_pixels:
        raise ImageReadError(
            p,
            f"image is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,} (max_pixels); refusing to decode it (possible decompression bomb)",
        )


# ----------------------------------------------------------------------------- Pillow


def _open_with_pillow(p: Path) -> Image.Image | None:
    """Open (header only) with Pillow; None if Pillow does not recognise the format."""
    try:
        return Image.open(p, formats=_PIL_FORMATS)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(
            p, f"image is too large to decode safely ({_one_line(exc)}); {_EXPECTED}"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow plugins raise many types on malformed headers
        raise ImageReadError(
            p, f"image header is corrupt ({_one_line(exc)}); {_EXPECTED_ANY}"
        ) from None


def _pil_to_gray(image: Image.Image, p: Path, max_pixels: int) -> np.ndarray:
    width, height = image.size
    _check_dimensions(p, width, height, max_pixels)
    fmt = image.format or "image"
    try:
        # load() forces the full decode here, where a truncated stream must raise; we
        # never set ImageFile.LOAD_TRUNCATED_IMAGES, which would pad the image with grey.
        image.load()
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageReadError(
            p,
            f"image data is truncated or corrupt ({_one_line(exc)}); "
            f"expected a complete {fmt} file",
        ) from None
    try:
        # A phone photo of a film or a viewer export may be stored sideways with an EXIF
        # Orientation tag; honour it so the lungs are upright.
        oriented = ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageReadError(
            p, f"could not apply the EXIF orientation ({_one_line(exc)}); expected valid EXIF data"
        ) from None
    return _pil_array(oriented)


def _pil_array(image: Image.Image) -> np.ndarray:
    """Map a decoded Pillow image of any mode to (H, W) float32 in [0, 1]."""
    mode = image.mode
    if mode == "1":
        gray = np.asarray(image, dtype=np.float32)  # bool 0/1
    elif mode == "L":
        gray = np.asarray(image, dtype=np.float32) / 255.0
    elif mode == "LA":
        gray = np.asarray(image.getchannel("L"), dtype=np.float32) / 255.0
    elif mode.startswith("I;16"):
        # 16-bit grey (PNG, TIFF; any byte order): the full uint16 range is the scale.
        gray = np.asarray(image).astype(np.float32) / 65535.0
    elif mode == "I":
        # 32-bit int: in practice 16-bit data in a wider container (or signed 16-bit
        # TIFF). Keep the 16-bit scale when the values fit it; otherwise there is no
        # nominal range to honour, so stretch min-max.
        values = np.asarray(image).astype(np.float64)
        if values.min() >= 0 and values.max() <= 65535:
            gray = (values / 65535.0).astype(np.float32)
        else:
            gray = _min_max(values)
    elif mode == "F":
        values = np.asarray(image).astype(np.float64)
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            gray = values.astype(np.float32)
        else:
            gray = _min_max(values)
    else:
        if mode in ("RGB", "RGBA", "RGBX"):
            rgb_image = image
        elif mode in ("P", "PA"):
            # A palette may mark a transparent index; going through RGBA avoids Pillow's
            # warning about it, and the alpha is dropped below like any other.
            has_alpha = mode == "PA" or "transparency" in image.info
            rgb_image = image.convert("RGBA" if has_alpha else "RGB")
        else:  # CMYK, YCbCr, LAB, HSV, ...
            rgb_image = image.convert("RGB")
        rgb = np.asarray(rgb_image)[..., :3].astype(np.float32)  # alpha dropped
        gray = (rgb @ _LUMA) / 255.0
    return _finish(gray)


# ------------------------------------------------------------------------------ DICOM


def _looks_like_raw_dicom(p: Path, head: bytes) -> bool:
    """Recognise a DICOM dataset written without preamble and ``DICM`` marker."""
    if len(head) < 8:
        return False
    # A raw dataset starts with a group 0x0000 (command), 0x0002 (meta) or 0x0008 element
    # in either byte order; checking this first keeps a forced parse of arbitrary files
    # (which reads garbage lengths) off the common path.
    if head[:2] not in (b"\x00\x00", b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return False
    try:
        ds = pydicom.dcmread(p, force=True, stop_before_pixels=True)
    except MemoryError:
        raise
    except Exception:
        return False
    return _has_dicom_evidence(ds)


def _has_dicom_evidence(ds: Dataset) -> bool:
    try:
        return any(keyword in ds for keyword in _DICOM_EVIDENCE)
    except Exception:  # a garbage parse may hold elements that fail to look up
        return False


def _parse_dicom(p: Path, *, has_marker: bool) -> Dataset:
    """dcmread with user-facing errors; sets a missing Transfer Syntax UID."""
    try:
        # force is needed for preamble-less files; with a marker present keep pydicom's
        # own validation.
        ds = pydicom.dcmread(p, force=not has_marker)
    except InvalidDicomError as exc:
        raise ImageReadError(
            p, f"not a valid DICOM file ({_one_line(exc)}); {_EXPECTED}"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageReadError(
            p,
            f"DICOM file is truncated or corrupt ({_one_line(exc)}); "
            "expected a complete DICOM file",
        ) from None
    if not has_marker and not _has_dicom_evidence(ds):
        raise ImageReadError(
            p,
            "not a valid DICOM file (no 'DICM' marker at byte 128 and no DICOM image "
            f"attributes); {_EXPECTED}",
        )
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        # Preamble-less files often lack file meta; pydicom refuses to decode pixels
        # without a transfer syntax, so state the one the dataset was actually read with.
        implicit_vr, little_endian = ds.original_encoding
        if little_endian is False:
            meta.TransferSyntaxUID = dicom_uid.ExplicitVRBigEndian
        elif implicit_vr is False:
            meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
        else:
            meta.TransferSyntaxUID = dicom_uid.ImplicitVRLittleEndian
    return ds


def _require_pixel_data(ds: Dataset, p: Path) -> None:
    if not any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS):
        raise ImageReadError(
            p, "DICOM has no pixel data (PixelData missing); expected an image DICOM"
        )


def _decoder_install_hint(ts: dicom_uid.UID, missing: Sequence[str]) -> str:
    """Name the package(s) a user should install to decode transfer syntax ``ts``."""
    if ts in dicom_uid.JPEG2000TransferSyntaxes:  # includes HTJ2K
        return "pylibjpeg and pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg)"
    if ts in dicom_uid.JPEGTransferSyntaxes or ts in dicom_uid.JPEGLSTransferSyntaxes:
        return "pylibjpeg and pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg)"
    if ts in dicom_uid.RLETransferSyntaxes:
        return "pylibjpeg and pylibjpeg-rle (pip install pylibjpeg pylibjpeg-rle)"
    return "; ".join(missing) or "a pydicom pixel-data decoder plugin"


def _check_decoder(ts: dicom_uid.UID, p: Path) -> None:
    """Fail with an install hint, before decoding, when no decoder for ``ts`` is present."""
    name = ts.name if ts.name != str(ts) else "an unknown transfer syntax"
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise ImageReadError(
            p,
            f"DICOM pixel data uses {name} ({ts}), which pydicom cannot decode; expected an "
            "uncompressed, RLE, JPEG, JPEG-LS or JPEG 2000 DICOM (convert it, e.g. with "
            "dcmtk dcmdjpeg or gdcmconv --raw)",
        ) from None
    if not decoder.is_available:
        hint = _decoder_install_hint(ts, decoder.missing_dependencies)
        raise ImageReadError(
            p, f"DICOM pixel data is compressed with {name} ({ts}) and no decoder for it is "
            f"installed; install {hint}",
        )


def _dicom_to_gray(ds: Dataset, p: Path, max_pixels: int) -> np.ndarray:
    _require_pixel_data(ds, p)
    rows = int(ds.get("Rows", 0) or 0)
    columns = int(ds.get("Columns", 0) or 0)
    _check_dimensions(p, columns, rows, max_pixels)
    ts = dicom_uid.UID(ds.file_meta.TransferSyntaxUID)
    _check_decoder(ts, p)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    try:
        if frames > 1:
            # Decode only the first frame: cheaper, and max_pixels was checked per frame.
            ds.pixel_array_options(index=0)
        arr = ds.pixel_array
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageReadError(
            p,
            f"could not decode DICOM pixel data ({ts.name}): {_one_line(exc)}; expected "
            "a complete, valid DICOM image",
        ) from None
    if arr.ndim == (4 if samples > 1 else 3):  # a decoder ignored the frame index
        arr = arr[0]

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(arr, ds)
            gray = _rgb_to_gray(rgb, float(np.iinfo(rgb.dtype).max))
        elif samples > 1 or arr.ndim == 3:
            # pydicom has already converted YBR to RGB (as_rgb defaults to True).
            bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
            gray = _rgb_to_gray(arr, float(2**bits - 1))
        else:
            values = apply_modality_lut(arr, ds)
            gray = _voi_normalise(values, ds, p)
            if photometric == "MONOCHROME1":
                # MONOCHROME1 stores bone dark (minimum = white); invert after the
                # window, as the standard's display pipeline does.
                gray = 1.0 - gray
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise ImageReadError(
            p,
            f"invalid DICOM grey-scale attributes ({_one_line(exc)}); "
            "expected a valid image DICOM",
        ) from None
    return _finish(gray)


def _rgb_to_gray(rgb: np.ndarray, full_scale: float) -> np.ndarray:
    return (rgb[..., :3].astype(np.float32) @ _LUMA) / np.float32(full_scale)


def _voi_kind(ds: Dataset) -> str | None:
    """Which VOI transform apply_voi_lut will use (mirrors its prefer_lut=True choice)."""
    sequence = ds.get("VOILUTSequence")
    if sequence:
        item = sequence[0]
        if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None:
            return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _voi_normalise(values: np.ndarray, ds: Dataset, p: Path) -> np.ndarray:
    """Apply the VOI LUT/window and map its output range linearly onto [0, 1].

    pydicom's VOI functions output in a range that depends on Bits Stored, the rescale
    and the LUT depth. Rather than re-deriving it, push the extremes of the input domain
    through the same function: for a LINEAR window this maps [c - w/2, c + w/2] exactly
    onto [0, 1], and it stays right for SIGMOID windows and VOI LUT sequences.
    """
    kind = _voi_kind(ds)
    if kind == "lut":
        item = ds.VOILUTSequence[0]
        n_entries = int(item.LUTDescriptor[0]) or 65536
        first = int(item.LUTDescriptor[1])
        # A LUT is indexed by integer stored values; pydicom warns on (and mis-indexes)
        # float input, which a fractional rescale produces.
        indices = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
        out = apply_voi_lut(indices, ds).astype(np.float64)
        domain = apply_voi_lut(np.arange(first, first + n_entries, dtype=np.int64), ds)
        return _scale(out, float(domain.min()), float(domain.max()))
    if kind == "window":
        try:
            out = apply_voi_lut(values, ds)
            with np.errstate(over="ignore"):  # SIGMOID's exp() overflows to the asymptote
                lo, hi = apply_voi_lut(np.array([-1e30, 1e30]), ds)
        except ValueError as exc:
            # A broken window (e.g. width 0) should not make a readable image unreadable;
            # viewers fall back to the full range, and so do we, loudly.
            logger.warning(
                "%s: ignoring invalid DICOM window (%s); using min-max", p, _one_line(exc)
            )
        else:
            return _scale(out, float(lo), float(hi))
    return _min_max(values)


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi == lo:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((np.asarray(values, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(
        np.float32
    )


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretch the finite range of ``values`` onto [0, 1]; a flat image maps to 0."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    return _scale(values, float(finite.min()), float(finite.max()))


def _finish(gray: np.ndarray) -> np.ndarray:
    """Final contract: (H, W) C-contiguous float32, finite, within [0, 1]."""
    gray = np.nan_to_num(np.asarray(gray, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    # Float rounding (e.g. luma weights summing to 1 +- eps) can step just outside [0, 1].
    return np.ascontiguousarray(np.clip(gray, 0.0, 1.0))


def _walk_images(folder: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        # Prune hidden folders in place so os.walk does not descend into them.
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(root, name))
    found.sort()
    return found
