"""Wrap an explanation overlay as a DICOM Secondary Capture a PACS can file beside the study.

The overlay becomes a new instance in a new series of the *source* study: the patient and
study identifiers are copied from the uploaded DICOM so a clinical system files it with the
original, while the original image is never modified (nothing is burned into it). When the
input was not DICOM there is no study to join, so a new Study Instance UID is generated and
the patient identifiers stay empty.
"""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = ["SERIES_DESCRIPTION", "overlay_secondary_capture", "to_dicom_bytes"]

SERIES_DESCRIPTION = "pneumoscope Grad-CAM overlay - research use, not a diagnosis"

# Patient and study attributes carried over from the source, so the overlay files with it.
_COPIED = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDsSequence",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianName",
    "PatientOrientation",
    "Laterality",
    "BodyPartExamined",
)

# Type 2 attributes of the modules a Secondary Capture needs: present, possibly empty.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PatientOrientation",
)


def overlay_secondary_capture(
    rgb: np.ndarray,
    source: Dataset | None = None,
    *,
    series_description: str = SERIES_DESCRIPTION,
    derivation: str = "Grad-CAM overlay computed by pneumoscope",
    software_version: str = "",
) -> Dataset:
    """Build a Secondary Capture Image Storage dataset holding an RGB overlay.

    Args:
        rgb: ``(H, W, 3)`` ``uint8`` overlay.
        source: The DICOM the overlay was computed from; its patient and study identifiers
            are copied and it is referenced as the source image. ``None`` for a JPEG/PNG
            input: a new study is generated.
        series_description: Series Description of the new series.
        derivation: Derivation Description (how the pixels were made).
        software_version: Written to Software Versions.

    Returns:
        A dataset with file meta (Explicit VR Little Endian), new Series and SOP Instance
        UIDs, and the overlay as uncompressed RGB pixel data.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got shape {rgb.shape}")
    now = datetime.now()
    sop_instance = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    if source is not None:
        for keyword in _COPIED:
            if keyword in source:
                ds[keyword] = source[keyword]
    for keyword in _TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    if "StudyInstanceUID" not in ds or not str(ds.StudyInstanceUID).strip():
        ds.StudyInstanceUID = generate_uid()
    if source is None:
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")

    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9901
    ds.InstanceNumber = 1
    ds.SeriesDescription = series_description
    ds.Modality = "OT"
    ds.ConversionType = "WSD"  # workstation: a derived picture, not a digitised film
    ds.Manufacturer = "pneumoscope"
    if software_version:
        ds.SoftwareVersions = software_version
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = derivation
    ds.BurnedInAnnotation = "NO"
    ds.ContentDate = ds.InstanceCreationDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = ds.SeriesTime = now.strftime("%H%M%S")
    if source is not None and "SOPInstanceUID" in source and "SOPClassUID" in source:
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.SOPClassUID
        ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = Sequence([ref])

    ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = rgb.tobytes()
    return ds


def to_dicom_bytes(ds: Dataset) -> bytes:
    """Serialise a dataset as a DICOM Part 10 file (preamble, ``DICM``, file meta)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
