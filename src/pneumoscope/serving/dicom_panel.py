"""The viewer's DICOM panel: the few header fields a reader checks first, read from an upload.

Modality, View Position, the stored image size and the pixel spacing come back with every
DICOM result. The patient's name and ID are identifying, so they leave the server only when
it was started with ``serve --show-patient``; without it they are never read into the reply.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from ..data.dicom import _DICOM_SUFFIXES, _has_dicom_evidence

_DICM_OFFSET = 128
# A DICOM dataset written without preamble starts with a group 0x0000, 0x0002 or 0x0008
# element in either byte order (the same test the decoder makes before a forced parse).
_RAW_STARTS = (b"\x00\x00", b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def read_header(data: bytes, filename: str = "upload") -> Dataset | None:
    """Parse an upload's DICOM header (no pixel data); None when the bytes are not DICOM.

    Args:
        data: The uploaded file's bytes, already decoded successfully as an image.
        filename: The upload's name; a ``.dcm``/``.dicom`` suffix lets a preamble-less file
            be tried even when its first bytes are unusual.
    """
    marker = data[_DICM_OFFSET:_DICM_OFFSET + 4] == b"DICM"
    suffix = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if not (marker or data[:2] in _RAW_STARTS or suffix in _DICOM_SUFFIXES):
        return None  # JPEG/PNG: never force a DICOM parse on them
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not marker, stop_before_pixels=True)
    except MemoryError:
        raise
    except Exception:
        return None
    if not marker and not _has_dicom_evidence(ds):
        return None
    return ds


def dicom_panel(data: bytes, filename: str = "upload", *, show_patient: bool = False) -> dict[str, Any] | None:
    """The panel's fields for one upload, or None when it is not DICOM.

    Args:
        data: The uploaded file's bytes.
        filename: The upload's name (see :func:`read_header`).
        show_patient: Include ``patient_name`` and ``patient_id`` (``serve --show-patient``).

    Returns:
        ``modality``, ``view_position``, ``rows``, ``columns`` (the stored image, before the
        viewer's display scaling), ``pixel_spacing_mm`` as ``[row, column]`` and
        ``pixel_spacing_source`` (``PixelSpacing``, in the patient, or ``ImagerPixelSpacing``,
        at the detector); a missing or unreadable element is ``None``.
    """
    ds = read_header(data, filename)
    if ds is None:
        return None
    spacing, source = None, None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = _pair(ds, keyword)
        if spacing is not None:
            source = keyword
            break
    panel: dict[str, Any] = {
        "modality": _text(ds, "Modality"),
        "view_position": _text(ds, "ViewPosition"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "pixel_spacing_mm": spacing,
        "pixel_spacing_source": source,
    }
    if show_patient:
        panel["patient_name"] = _text(ds, "PatientName")
        panel["patient_id"] = _text(ds, "PatientID")
    return panel


# Header values come from whoever wrote the file: a malformed one reads as missing rather than
# failing the whole result.


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
        text = "" if value is None else str(value).strip()
    except Exception:
        return None
    return text or None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None else int(value)
    except Exception:
        return None


def _pair(ds: Dataset, keyword: str) -> list[float] | None:
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        numbers = [float(v) for v in value]
    except Exception:
        return None
    if len(numbers) != 2 or not all(math.isfinite(v) and v > 0 for v in numbers):
        return None
    return numbers
