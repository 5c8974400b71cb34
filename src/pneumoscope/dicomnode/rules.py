"""Which received instances are chest radiographs pneumoscope should score.

Anything else is a counted, logged skip, not an error: a PACS routing rule that is a little too
wide must not fill the node's logs with failures.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..data.results import is_own_output

CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
COMPREHENSIVE_3D_SR = UID("1.2.840.10008.5.1.4.1.1.88.34")

#: Image storage classes the node scores.
SCORED_CLASSES = (CR_IMAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING, SECONDARY_CAPTURE)
#: Classes it accepts but always skips (its own SR, should a PACS route it back).
SKIPPED_CLASSES = (COMPREHENSIVE_3D_SR,)

MODALITIES = ("CR", "DX")
# Body Part Examined values (DICOM PS3.16 Annex L) that mean the chest.
CHEST_PARTS = ("CHEST", "THORAX", "LUNG", "CHEST_ABDOMEN", "CHESTABDOMEN")
LATERAL_VIEWS = ("LL", "RL", "LLD", "RLD", "LATERAL", "LAT", "LLO", "RLO")


def skip_reason(ds: Dataset) -> str | None:
    """``None`` for a frontal chest radiograph to score, else a short reason (a counter name).

    Reasons: ``own_output``, ``sop_class``, ``modality``, ``body_part``, ``lateral``.
    """
    if is_own_output(ds):
        return "own_output"
    if UID(str(ds.get("SOPClassUID", ""))) not in SCORED_CLASSES:
        return "sop_class"
    # A Secondary Capture is scored when it says it holds a radiograph (the RSNA archive's form).
    if str(ds.get("Modality", "")).strip().upper() not in MODALITIES:
        return "modality"
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part and part not in CHEST_PARTS:
        return "body_part"
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in LATERAL_VIEWS:
        return "lateral"
    return None
