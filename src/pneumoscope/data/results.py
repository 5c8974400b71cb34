"""The DICOM objects pneumoscope returns to a PACS, built with highdicom.

For each scored radiograph two objects join the *source* study, each in a series of its own:

- a Comprehensive 3D SR following TID 1500 (:func:`pneumonia_sr`): the finding pneumonia
  (SNOMED CT 233604007) present or absent at the checkpoint's operating point, P(pneumonia) and
  the threshold as numeric measurements, the algorithm (TID 4019) and evidence referencing the
  source image, VerificationFlag UNVERIFIED;
- a Secondary Capture of the Grad-CAM overlay (:func:`overlay_sc`) with a burned-in
  "not for diagnostic use" banner below the picture.

Both carry the source's Patient and Study modules (highdicom copies them from the source) and
describe pneumoscope as Contributing Equipment (processing equipment, per IHE AI Results).
Their UIDs are derived from the source SOP Instance UID and the model id
(:func:`result_uid`), so sending a study twice replaces its results instead of duplicating them.
The source dataset is never modified.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .. import __version__

__all__ = [
    "MANUFACTURER",
    "NOTICE",
    "PNEUMONIA",
    "SC_SERIES_DESCRIPTION",
    "SR_SERIES_DESCRIPTION",
    "Algorithm",
    "burn_in_notice",
    "is_own_output",
    "overlay_sc",
    "pneumonia_sr",
    "result_uid",
    "to_dicom_bytes",
]

MANUFACTURER = "pneumoscope"
NOTICE = "NOT FOR DIAGNOSTIC USE - pneumoscope research output"
SC_SERIES_DESCRIPTION = "pneumoscope Grad-CAM overlay - research use, not a diagnosis"
SR_SERIES_DESCRIPTION = "pneumoscope pneumonia result - research use, not a diagnosis"
SR_SERIES_NUMBER = 9900
SC_SERIES_NUMBER = 9901

PNEUMONIA = Code("233604007", "SCT", "Pneumonia")
_PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")

# Present/absent as CID 230 ("Yes-No") / CID 240 style SNOMED CT values.
_PRESENT = codes.SCT.Present
_ABSENT = codes.SCT.Absent


# Type 2 (and 2C) Patient/General Study attributes of the SR and SC: present even when empty.
# Anonymised sources often lack some; the results get them empty (see _with_type2).
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
    "ReferringPhysicianName", "StudyDate", "StudyTime",
)


@dataclass(frozen=True)
class Algorithm:
    """What produced a result: written into every object (SR content and Contributing Equipment).

    Attributes:
        model_id: Names the exact weights (``<architecture>-<sha256 prefix>``); part of every result UID.
        threshold: The operating point P(pneumonia) is compared with (temperature-scaled probability).
        method: The explanation method of the overlay.
        name: Algorithm name.
        version: Algorithm (software) version.
    """

    model_id: str
    threshold: float
    method: str = "gradcam"
    name: str = "pneumoscope"
    version: str = __version__

    def contributing_equipment(self) -> hd.ContributingEquipment:
        return hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.model_id[:64],
            software_versions=f"{self.name} {self.version}"[:64],
            contribution_description=(
                f"Processing Algorithm: {self.name} {self.version}, model {self.model_id}, "
                f"threshold {self.threshold:.4f}"
            )[:1024],
        )


def result_uid(source_uid: str, model_id: str, kind: str) -> str:
    """A UID that is a pure function of its inputs (pydicom's root + a hash).

    Args:
        source_uid: The source's SOP Instance UID (for instances) or Study Instance UID (for series).
        model_id: The model that produced the result.
        kind: What the UID names, e.g. ``"sr-instance"``.
    """
    return str(generate_uid(entropy_srcs=["pneumoscope", kind, model_id, str(source_uid)]))


def is_own_output(ds: Dataset) -> bool:
    """Whether ``ds`` is a result pneumoscope made (so a node must not score it again)."""
    if str(ds.get("Manufacturer", "")).strip().lower() == MANUFACTURER:
        return True
    for item in ds.get("ContributingEquipmentSequence", []) or []:
        if str(item.get("Manufacturer", "")).strip().lower() == MANUFACTURER:
            return True
    return False


# --------------------------------------------------------------------------- the SR


def pneumonia_sr(source: Dataset, prob: float, algorithm: Algorithm) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 Measurement Report in a Comprehensive 3D SR, filed into the source's study.

    Args:
        source: The scored radiograph (its Patient/Study modules are copied; it is the evidence).
        prob: Calibrated P(pneumonia).
        algorithm: The model and its operating point.

    Returns:
        The SR; SOP Instance and Series UIDs derived from the source and ``algorithm.model_id``.
    """
    prob = float(prob)
    present = prob >= algorithm.threshold
    algo_item = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version,
        parameters=[f"model_id={algorithm.model_id}", f"threshold={algorithm.threshold:.6f}"],
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid(algorithm.model_id, algorithm.model_id, "device"),
        name=algorithm.name, manufacturer_name=MANUFACTURER, model_name=algorithm.model_id[:64],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device,
        ),
    )
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    no_units = codes.UCUM.NoUnits
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(source.SOPInstanceUID, algorithm.model_id, "tracking"),
            identifier="pneumonia",
        ),
        finding_type=PNEUMONIA,
        algorithm_id=algo_item,
        source_images=[source_image],
        measurements=[
            hd.sr.Measurement(
                name=codes.DCM.Probability, value=prob, unit=no_units, algorithm_id=algo_item,
            ),
            hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=float(algorithm.threshold), unit=no_units),
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=PNEUMONIA, value=_PRESENT if present else _ABSENT),
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_PLAIN_CHEST_XRAY,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_with_type2(source)],  # highdicom reads the Type 2 attributes unguarded
        content=report,
        series_instance_uid=result_uid(source.StudyInstanceUID, algorithm.model_id, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(source.SOPInstanceUID, algorithm.model_id, "sr-instance"),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=SR_SERIES_DESCRIPTION,
        contributing_equipment=[algorithm.contributing_equipment()],
    )
    _copy_character_set(source, sr)
    return sr


# --------------------------------------------------------------------------- the overlay


def burn_in_notice(rgb: np.ndarray, text: str = NOTICE) -> np.ndarray:
    """The overlay with a black banner below it that says ``text`` in white.

    The banner is added under the picture rather than drawn over it, so the overlay's pixels
    are unchanged (rows ``[:H]`` of the result are ``rgb``).
    """
    from PIL import Image, ImageDraw, ImageFont

    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    band = max(12, h // 14)
    canvas = Image.new("RGB", (w, h + band), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb, "RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    size = max(8, int(band * 0.7))
    try:
        font = ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    # Shrink the text to fit narrow images (the bitmap font cannot be scaled: it is clipped).
    while size > 6 and draw.textlength(text, font=font) > w - 4:
        size -= 1
        try:
            font = ImageFont.load_default(size=size)
        except (TypeError, OSError):
            break
    draw.text((2, h + max(0, (band - size) // 2)), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def overlay_sc(
    rgb: np.ndarray,
    source: Dataset | None,
    algorithm: Algorithm,
    *,
    derivation: str = "",
    series_description: str = SC_SERIES_DESCRIPTION,
) -> hd.sc.SCImage:
    """A Secondary Capture of an RGB overlay, with a burned-in "not for diagnostic use" banner.

    Args:
        rgb: ``(H, W, 3)`` ``uint8`` overlay.
        source: The DICOM the overlay was computed from: its Patient/Study modules are copied and
            it is referenced as the source image, and the result UIDs derive from it. ``None``
            (a JPEG/PNG input): a new study with new random UIDs and empty patient identifiers.
        algorithm: The model and its operating point.
        derivation: Derivation Description (how the pixels were made).
        series_description: Series Description of the new series.

    Returns:
        The SC image (``H + banner`` rows); no window or rescale values are copied from the source.
    """
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got shape {rgb.shape}")
    pixels = burn_in_notice(rgb)
    common = dict(
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_number=SC_SERIES_NUMBER,
        instance_number=1,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[algorithm.contributing_equipment()],
        patient_orientation=_orientation(source),
        series_description=series_description,
    )
    if source is not None and str(source.get("StudyInstanceUID", "")).strip() and "SOPInstanceUID" in source:
        sc = hd.sc.SCImage.from_ref_dataset(
            source,
            series_instance_uid=result_uid(source.StudyInstanceUID, algorithm.model_id, "sc-series"),
            sop_instance_uid=result_uid(source.SOPInstanceUID, algorithm.model_id, "sc-instance"),
            **common,
        )
        if "InstanceNumber" in source:
            sc.InstanceNumber = source.InstanceNumber
        ref = Dataset()
        ref.ReferencedSOPClassUID = source.SOPClassUID
        ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
        sc.SourceImageSequence = [ref]
        for keyword in ("IssuerOfPatientID", "OtherPatientIDsSequence", "PatientAge",
                        "StudyDescription", "IssuerOfAccessionNumberSequence", "Laterality",
                        "BodyPartExamined"):
            if keyword in source:
                sc[keyword] = source[keyword]
        _copy_character_set(source, sc)
    else:
        now = datetime.now()
        sc = hd.sc.SCImage(
            study_instance_uid=generate_uid(),
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            study_date=now.date(),
            study_time=now.time().replace(microsecond=0),
            **common,
        )
    for keyword in _TYPE2:  # present, possibly empty, in every SC (a PNG input has no patient)
        if keyword not in sc:
            setattr(sc, keyword, "")
    if "BodyPartExamined" not in sc:
        sc.BodyPartExamined = "CHEST"  # what pneumoscope reads; an unpaired part (no Laterality)
    if "Laterality" in sc and not str(sc.Laterality).strip():
        del sc.Laterality
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.SoftwareVersions = f"{algorithm.name} {algorithm.version}"[:64]
    sc.DerivationDescription = (derivation or f"{algorithm.method} overlay, model {algorithm.model_id}")[:1024]
    sc.ImageComments = NOTICE
    return sc


def _orientation(source: Dataset | None) -> tuple[str, str]:
    """The source's Patient Orientation when it has two values (the SC shows the same view).

    Otherwise the conventional display of a frontal chest radiograph (patient's left to the
    viewer's right, feet down): highdicom requires an orientation in the patient coordinate
    system, and the overlay is drawn exactly as the source is displayed.
    """
    value = source.get("PatientOrientation") if source is not None else None
    if value is not None and not isinstance(value, str) and len(value) == 2 and all(str(v) for v in value):
        return (str(value[0]), str(value[1]))
    return ("L", "F")


def _with_type2(source: Dataset) -> Dataset:
    """The source's attributes (less pixel data) with every missing :data:`_TYPE2` attribute empty.

    A new dataset sharing the source's elements: the source itself is not modified.
    """
    header = Dataset()
    for elem in source:
        if elem.tag.group != 0x7FE0:  # (Float/Double) Pixel Data
            header.add(elem)
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def _copy_character_set(source: Dataset, target: Dataset) -> None:
    """Keep the source's Specific Character Set, which its copied names are written in."""
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet


def to_dicom_bytes(ds: Dataset) -> bytes:
    """Serialise a dataset as a DICOM Part 10 file (preamble, ``DICM``, file meta)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
