"""Synthetic chest radiographs as DICOM, in the forms a PACS sends (for tests, the bench and trying the node).

The pixels are :func:`pneumoscope.data.synth.make_phantom` phantoms; the identifiers are made
up. Forms (``kind``):

- ``cr_mono1``: CR Image Storage, 12 bits in 16, MONOCHROME1 (bright = low values), with a window;
- ``dx_jpeg``: DX for Presentation, JPEG Baseline (8-bit lossy, compressed pixel data);
- ``dx_processing``: DX for Processing, 16-bit MONOCHROME2, Implicit VR;
- ``sc_cr``: Secondary Capture with Modality CR, 8-bit MONOCHROME2 (how the RSNA archive stores them).
"""

from __future__ import annotations

import io
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

from .rules import CR_IMAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, SECONDARY_CAPTURE

KINDS = ("cr_mono1", "dx_jpeg", "dx_processing", "sc_cr")


def synthetic_radiograph(
    kind: str = "cr_mono1",
    *,
    size: int = 64,
    label: int = 1,
    seed: int = 0,
    patient_id: str = "SYN-0001",
    patient_name: str = "Synthetic^Patient",
    study_uid: str | None = None,
    accession: str = "SYNACC1",
    **overrides: object,
) -> Dataset:
    """One synthetic frontal chest radiograph as a DICOM dataset with file meta.

    Args:
        kind: One of :data:`KINDS`.
        size: Image side in pixels (at least 32).
        label: 0 (NORMAL) or 1 (PNEUMONIA) phantom.
        seed: Random seed of the phantom.
        patient_id: Patient ID.
        patient_name: Patient's Name.
        study_uid: Study Instance UID (default: a new one).
        accession: Accession Number.
        **overrides: Attributes set last (e.g. ``Modality="MR"``, ``ViewPosition="LL"``).
    """
    from ..data.synth import make_phantom

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    img8 = make_phantom(np.random.default_rng(seed), size=size, label=label).image
    sop_class = {"cr_mono1": CR_IMAGE, "dx_jpeg": DX_FOR_PRESENTATION,
                 "dx_processing": DX_FOR_PROCESSING, "sc_cr": SECONDARY_CAPTURE}[kind]
    syntax = {"dx_jpeg": JPEGBaseline8Bit, "dx_processing": ImplicitVRLittleEndian}.get(kind, ExplicitVRLittleEndian)
    now = datetime.now()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "20180101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = accession
    ds.ReferringPhysicianName = ""
    ds.Manufacturer = "synthetic"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = "DX" if kind.startswith("dx") else "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.Rows, ds.Columns = img8.shape
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    if kind == "sc_cr":
        ds.ConversionType = "WSD"
    if kind.startswith("dx"):
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PROCESSING" if kind == "dx_processing" else "FOR PRESENTATION"
        ds.ImageLaterality = "U"
        ds.DetectorType = "SCINTILLATOR"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.LossyImageCompression = "01" if kind == "dx_jpeg" else "00"
        ds.BurnedInAnnotation = "NO"
    if kind in ("cr_mono1", "dx_processing"):
        values = img8.astype(np.uint16) * 16  # 12 bits stored
        if kind == "cr_mono1":
            values = 4095 - values  # MONOCHROME1: bone is dark in the stored values
            ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.PhotometricInterpretation = "MONOCHROME1" if kind == "cr_mono1" else "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = values.tobytes()
    else:
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        if kind == "dx_jpeg":
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(img8, "L").save(buf, format="JPEG", quality=90)
            ds.PixelData = encapsulate([buf.getvalue()])
            ds["PixelData"].VR = "OB"
            ds.LossyImageCompressionRatio = f"{img8.size / len(buf.getvalue()):.2f}"[:16]
            ds.LossyImageCompressionMethod = "ISO_10918_1"
        else:
            ds.PixelData = img8.tobytes()
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    return ds
