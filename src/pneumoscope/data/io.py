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
  The DICOM decoding lives in :mod:`pneumoscope.data.dicom`.

Reduced-size decoding (``max_side``): a reader asked for at most ``max_side`` pixels on the
long side decodes as little of the source as the format allows and never holds a
full-size ``float32`` copy: JPEG is decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT
scaling (Pillow's ``draft``), straight to luminance; PNG, BMP and TIFF are decoded in their
own 8/16-bit mode and shrunk before conversion to float; DICOM pixels are shrunk in their
stored integer form, in bands of rows, before the Modality and VOI LUTs. Memory per image
is then about one copy of the source in its stored bit depth (PNG, DICOM) or a fraction of
it (JPEG), plus the output. :func:`read_image_size` reads only the header, for callers that
must account for an image's pixels before decoding it (the server's budget).

Every problem a user can fix (missing, empty, truncated or unsupported file, missing
decoder, oversized image) is raised as :class:`~pneumoscope.errors.ImageReadError`
naming the file and what was expected, never as a raw library exception.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset

from pneumoscope.errors import DataError, ImageReadError, ImageTooLargeError

from ._common import (
    _EXPECTED,
    _LUMA,
    _check_dimensions,
    _finish,
    _min_max,
    _one_line,
    _target_size,
)
from .dicom import (
    _DICOM_SUFFIXES,
    _dicom_size,
    _dicom_to_gray,
    _looks_like_raw_dicom,
    _parse_dicom,
    _require_pixel_data,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "is_dicom",
    "list_images",
    "read_dicom",
    "read_dicom_bytes",
    "read_image",
    "read_image_bytes",
    "read_image_size",
    "read_image_size_bytes",
    "to_uint8",
]

#: File suffixes (lower case) that :func:`list_images` picks up when it walks a folder.
IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
)

#: Default upper bound on width x height, checked from the header before decoding.
DEFAULT_MAX_PIXELS: int = 100_000_000

# Pillow is asked for these formats only: its other plugins (TGA in particular) identify
# files on weak evidence and could claim a preamble-less DICOM or random bytes. (A JPEG
# with a multi-picture segment is opened as MPO by the JPEG opener, so it is covered.)
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "DIB", "TIFF")

_EXPECTED_ANY = _EXPECTED  # one wording for every "expected ..." (data._common)

_DICM_OFFSET = 128
_HEAD_BYTES = _DICM_OFFSET + 4


# --------------------------------------------------------------------------- public API


def read_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None
) -> np.ndarray:
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
        max_side: When set, an image whose longer side exceeds it is returned shrunk
            (antialiased bilinear, aspect kept, sides rounded) so that its longer side is
            ``max_side``, decoded at reduced size where the format allows (see the module
            notes); smaller images are returned exactly as without it. ``None`` (the
            default): full resolution.

    Returns:
        A C-contiguous ``(H, W)`` ``float32`` array in ``[0, 1]`` with bright bone.

    Raises:
        ImageReadError: The file is missing, a directory, empty, not a supported image,
            truncated or corrupt, a DICOM without pixel data or whose compression has no
            decoder installed, has a zero dimension, or exceeds ``max_pixels``.
        ValueError: ``max_pixels`` or ``max_side`` is not a positive integer (a programming error).
    """
    _check_limits(max_pixels, max_side)
    p = _check_file(path)
    return _decode(p, _read_head(p), None, max_pixels, max_side)


def read_image_bytes(
    data: bytes,
    name: str = "upload",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int | None = None,
) -> np.ndarray:
    """Like :func:`read_image`, for an image held in memory (an upload); nothing touches the disk.

    The bytes go through exactly the same format detection and decoding as a file, so the
    result and every error message are the same as for the same bytes saved to a file.

    Args:
        data: The encoded image (JPEG, PNG, BMP, TIFF or DICOM, as its file would hold it).
        name: What to call the input in messages (an upload's file name); only its last
            path component is used, and its suffix counts like a file's (``.dcm``).
        max_pixels: As for :func:`read_image`.
        max_side: As for :func:`read_image`.

    Returns:
        A C-contiguous ``(H, W)`` ``float32`` array in ``[0, 1]`` with bright bone.

    Raises:
        ImageReadError: As for :func:`read_image`; :class:`~pneumoscope.errors.ImageTooLargeError`
            (a subclass) when the image exceeds ``max_pixels``.
    """
    _check_limits(max_pixels, max_side)
    label = _label(name)
    data = bytes(data)
    if not data:
        raise ImageReadError(label, f"file is empty (0 bytes); {_EXPECTED}")
    return _decode(label, data[:_HEAD_BYTES], data, max_pixels, max_side)


def read_image_size(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Read only an image's header: its ``(width, height)`` in pixels, no pixel decoded.

    The format is recognised exactly as :func:`read_image` does. The size is the stored
    one (before any EXIF rotation; the pixel count is the same) and, for a multi-frame
    DICOM, that of one frame (the one :func:`read_image` decodes).

    Raises:
        ImageReadError: The file is missing, empty, not a supported image, its header is
            corrupt, a dimension is zero, or it is a DICOM without pixel data (long DICOM
            values, the pixel data above all, are left unread);
            :class:`~pneumoscope.errors.ImageTooLargeError`
            when it has more than ``max_pixels`` pixels. A file whose pixel data is
            truncated passes here and fails in :func:`read_image`.
    """
    _check_limits(max_pixels, None)
    p = _check_file(path)
    return _probe(p, _read_head(p), None, max_pixels)


def read_image_size_bytes(
    data: bytes, name: str = "upload", *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Like :func:`read_image_size`, for an image held in memory (an upload)."""
    _check_limits(max_pixels, None)
    label = _label(name)
    if not data:
        raise ImageReadError(label, f"file is empty (0 bytes); {_EXPECTED}")
    data = bytes(data)
    return _probe(label, data[:_HEAD_BYTES], data, max_pixels)


def _decode(p: Path, head: bytes, data: bytes | None, max_pixels: int, max_side: int | None) -> np.ndarray:
    """The one decoding path: ``data`` (in memory) when given, else the file ``p``."""
    if _has_dicm_marker(head):
        ds = _parse_dicom(p, has_marker=True, data=data)
        return _dicom_to_gray(ds, p, max_pixels, max_side)

    image = _open_with_pillow(p, data)
    if image is not None:
        with image:
            return _pil_to_gray(image, p, max_pixels, max_side)

    if p.suffix.lower() in _DICOM_SUFFIXES or _looks_like_raw_dicom(p, head, data):
        ds = _parse_dicom(p, has_marker=False, data=data)
        return _dicom_to_gray(ds, p, max_pixels, max_side)
    raise ImageReadError(p, f"not a recognised image ({_describe_head(head)}); {_EXPECTED_ANY}")


def _probe(p: Path, head: bytes, data: bytes | None, max_pixels: int) -> tuple[int, int]:
    """The header-only twin of :func:`_decode`: same dispatch, no pixel data read."""
    if _has_dicm_marker(head):
        return _dicom_header_size(_parse_dicom(p, has_marker=True, data=data, header_only=True), p, max_pixels)
    image = _open_with_pillow(p, data)
    if image is not None:
        with image:
            width, height = image.size
        _check_dimensions(p, width, height, max_pixels)
        return width, height
    if p.suffix.lower() in _DICOM_SUFFIXES or _looks_like_raw_dicom(p, head, data):
        return _dicom_header_size(_parse_dicom(p, has_marker=False, data=data, header_only=True), p, max_pixels)
    raise ImageReadError(p, f"not a recognised image ({_describe_head(head)}); {_EXPECTED_ANY}")


def _dicom_header_size(ds: Dataset, p: Path, max_pixels: int) -> tuple[int, int]:
    _require_pixel_data(ds, p)  # the same first check, and message, as decoding it
    return _dicom_size(ds, p, max_pixels)


def _check_limits(max_pixels: int, max_side: int | None) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}")


def _label(name: str) -> Path:
    """An upload's name reduced to its last component (client paths mean nothing here)."""
    base = str(name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return Path(base or "upload")


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


def read_dicom_bytes(data: bytes, name: str = "upload") -> Dataset:
    """Like :func:`read_dicom`, for a DICOM file held in memory (an upload).

    Raises:
        ImageReadError: The bytes are empty, not DICOM, truncated, or have no pixel data.
    """
    label = _label(name)
    data = bytes(data)
    if not data:
        raise ImageReadError(label, f"file is empty (0 bytes); {_EXPECTED}")
    ds = _parse_dicom(label, has_marker=_has_dicm_marker(data[:_HEAD_BYTES]), data=data)
    _require_pixel_data(ds, label)
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


def _describe_head(head: bytes) -> str:
    """Say briefly what the file looks like, so "not an image" is actionable."""
    sample = head[:64]
    if sample.lstrip().startswith((b"<", b"{", b"[")):
        return "looks like HTML/XML/JSON text"
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "looks like a text file"
    return f"unknown content starting with {sample[:8].hex(' ')}"


# ----------------------------------------------------------------------------- Pillow


def _open_with_pillow(p: Path, data: bytes | None = None) -> Image.Image | None:
    """Open (header only) with Pillow; None if Pillow does not recognise the format.

    ``data``, when given, is opened instead of the file ``p`` (which then only names it).
    """
    try:
        return Image.open(p if data is None else io.BytesIO(data), formats=_PIL_FORMATS)
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            p, f"image is too large to decode safely ({_one_line(exc)}); {_EXPECTED}"
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # Pillow plugins raise many types on malformed headers
        raise ImageReadError(
            p, f"image header is corrupt ({_one_line(exc)}); {_EXPECTED_ANY}"
        ) from None


def _pil_to_gray(image: Image.Image, p: Path, max_pixels: int, max_side: int | None = None) -> np.ndarray:
    width, height = image.size
    _check_dimensions(p, width, height, max_pixels)
    fmt = image.format or "image"
    target = _target_size(width, height, max_side)
    if target is not None and image.mode in ("L", "RGB", "YCbCr"):
        # JPEG only (a no-op for other formats): let libjpeg decode at the smallest of
        # 1/1, 1/2, 1/4, 1/8 scale that still covers the target, straight to luminance
        # (the Y channel is BT.601 luma, the weights used below), so a huge JPEG never
        # exists at full size in memory.
        image.draft("L", target)
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
    if target is not None:
        image = _shrink_pil(image, target)
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


# Modes Pillow resizes as they are; every other mode is reduced to 8-bit luminance first
# (one byte per source pixel), rather than to RGB or float at full size.
_RESIZABLE_MODES = ("L", "RGB", "I", "F", "I;16", "I;16L", "I;16B")


def _shrink_pil(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """Resize a decoded image to ``target`` (antialiased bilinear) in its own bit depth.

    Pillow's BILINEAR widens its triangle filter by the scale factor when it shrinks,
    exactly like ``torch.nn.functional.interpolate(..., antialias=True)`` in the model's
    preprocessing, so the reduced image is what that resize would have seen.
    """
    if image.mode not in _RESIZABLE_MODES:
        # 1, P, PA, LA, RGBA, RGBX, CMYK, YCbCr, ...: Pillow's convert("L") drops alpha and
        # uses the BT.601 weights, like _pil_array's own luminance (up to 8-bit rounding).
        converted = image.convert("L")
        converted.info = dict(image.info)  # keep the EXIF orientation for the caller
        image = converted
    if image.size == target:
        return image
    return image.resize(target, Image.Resampling.BILINEAR)


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
