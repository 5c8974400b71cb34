"""``pneumoscope listen``: a DICOM node that scores chest radiographs a PACS sends it and returns
a TID 1500 SR and a Grad-CAM Secondary Capture into the same study.

Modules: :mod:`.node` (the Storage SCP and the scoring worker), :mod:`.spool` (durable state on
disk), :mod:`.outbox` (delivery with retries), :mod:`.destinations` (DIMSE and DICOMweb senders),
:mod:`.rules` (what is scored and what is skipped).
"""

from __future__ import annotations

from .destinations import Destination, DestinationDown, parse_destination
from .node import DicomNode, NodeSettings, load_node
from .spool import Spool, spool_status

__all__ = [
    "Destination", "DestinationDown", "DicomNode", "NodeSettings", "Spool", "load_node",
    "parse_destination", "spool_status",
]
