"""Decode DICOM files into the package's grey representation (used by :mod:`.io`).

Recognises DICOM with and without the 128-byte preamble, parses it with pydicom (with
user-facing errors and a Transfer Syntax UID set when the file lacks one), checks that a
decoder for the pixel data's compression is installed (naming the package to install
otherwise), and maps pixels to a ``float32`` image in ``[0, 1]`` with bright bone:
Modality LUT, then VOI LUT or window, then a linear map of the VOI output range;
MONOCHROME1 is inverted; multi-frame files give their first frame.

The public entry points are :func:`pneumoscope.data.io.read_image`,
:func:`~pneumoscope.data.io.read_dicom` and :func:`~pneumoscope.data.io.is_dicom`.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid as dicom_uid
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    get_decoder,
)

from pneumoscope.errors import ImageReadError

from ._common import (
    _EXPECTED,
    _LUMA,
    _check_dimensions,
    _finish,
    _min_max,
    _one_line,
    _scale,
    _shrink_array,
    _target_size,
)

logger = logging.getLogger(__name__)

_DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})

# DICOM elements that any image object carries; a forced parse of a file that is not
# DICOM produces a handful of garbage elements but never these.
_DICOM_EVIDENCE = ("SOPClassUID", "Rows", "Columns", "StudyInstanceUID", "Modality")

_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _source(p: Path, data: bytes | None) -> Path | io.BytesIO:
    """What pydicom reads: the file, or a fresh in-memory stream over uploaded bytes."""
    return p if data is None else io.BytesIO(data)


def _looks_like_raw_dicom(p: Path, head: bytes, data: bytes | None = None) -> bool:
    """Recognise a DICOM dataset written without preamble and ``DICM`` marker.

    ``p`` names the input in messages; ``data``, when given, holds its bytes (an upload
    that never touches the disk) and is read instead of the file.
    """
    if len(head) < 8:
        return False
    # A raw dataset starts with a group 0x0000 (command), 0x0002 (meta) or 0x0008 element
    # in either byte order; checking this first keeps a forced parse of arbitrary files
    # (which reads garbage lengths) off the common path.
    if head[:2] not in (b"\x00\x00", b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return False
    try:
        ds = pydicom.dcmread(_source(p, data), force=True, stop_before_pixels=True)
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


def _parse_dicom(
    p: Path, *, has_marker: bool, data: bytes | None = None, header_only: bool = False
) -> Dataset:
    """dcmread with user-facing errors; sets a missing Transfer Syntax UID.

    ``data``, when given, is parsed instead of the file ``p`` (which then only names it).
    ``header_only`` leaves every long value (the pixel data above all) unread, while still
    recording that the element is there (unlike ``stop_before_pixels``).
    """
    try:
        # force is needed for preamble-less files; with a marker present keep pydicom's
        # own validation.
        ds = pydicom.dcmread(_source(p, data), force=not has_marker, defer_size=4096 if header_only else None)
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


def _dicom_size(ds: Dataset, p: Path, max_pixels: int) -> tuple[int, int]:
    """(Columns, Rows) of one frame, checked against ``max_pixels``."""
    try:
        rows = int(ds.get("Rows", 0) or 0)
        columns = int(ds.get("Columns", 0) or 0)
    except (TypeError, ValueError) as exc:
        raise ImageReadError(
            p, f"invalid DICOM Rows/Columns ({_one_line(exc)}); expected a valid image DICOM"
        ) from None
    _check_dimensions(p, columns, rows, max_pixels)
    return columns, rows


def _dicom_to_gray(ds: Dataset, p: Path, max_pixels: int, max_side: int | None = None) -> np.ndarray:
    _require_pixel_data(ds, p)
    columns, rows = _dicom_size(ds, p, max_pixels)
    target = _target_size(columns, rows, max_side)
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
            gray = _rgb_to_gray(_shrink_channels(rgb, target), float(np.iinfo(rgb.dtype).max))
        elif samples > 1 or arr.ndim == 3:
            # pydicom has already converted YBR to RGB (as_rgb defaults to True).
            bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
            gray = _rgb_to_gray(_shrink_channels(arr, target), float(2**bits - 1))
        else:
            if target is not None:
                # Shrink the stored values before the LUTs: the rescale and a linear
                # window commute with averaging, and every LUT then runs on the small
                # image instead of making float64 copies of the full one.
                arr = _shrink_array(arr, target)
                if "ModalityLUTSequence" in ds:
                    arr = np.rint(arr).astype(np.int64)  # a LUT is indexed by integers
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


def _shrink_channels(rgb: np.ndarray, target: tuple[int, int] | None) -> np.ndarray:
    """Shrink an (H, W, C) image channel by channel; unchanged when ``target`` is None."""
    if target is None:
        return rgb
    return np.stack([_shrink_array(rgb[..., c], target) for c in range(min(3, rgb.shape[-1]))], axis=-1)


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
