"""Helpers shared by the DICOM node tests: a tiny checkpoint, an SCU, a collecting sender, waiting."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit


def save_tiny_checkpoint(path: Path, threshold: float = 0.5) -> Path:
    """A random-weight vgg_tiny checkpoint at 32 px (no training: the node's plumbing is under test)."""
    import torch

    import pneumoscope
    from pneumoscope.checkpoint import save_checkpoint
    from pneumoscope.data.transforms import Preprocessing

    torch.manual_seed(0)
    model = pneumoscope.create_model("vgg_tiny")
    return save_checkpoint(path, model, architecture="vgg_tiny", preprocessing=Preprocessing(32),
                           target_layer="block3_conv1", threshold=threshold)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def scu(port: int, calling: str = "TESTSCU", called: str = "PNEUMOSCOPE"):
    """An association to the node proposing every scored class in the syntaxes the tests use."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Comprehensive3DSRStorage, Verification

    from pneumoscope.dicomnode.rules import SCORED_CLASSES

    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    for sop in SCORED_CLASSES:
        for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit):
            ae.add_requested_context(sop, ts)
    ae.add_requested_context(Comprehensive3DSRStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=called)


def store(port: int, *datasets: Dataset | Path | str, calling: str = "TESTSCU") -> list[int]:
    """C-STORE each dataset (or file, sent as its bytes) in one association; the statuses."""
    assoc = scu(port, calling)
    assert assoc.is_established, "association refused"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


class Collector:
    """A sender that keeps what it is given (optionally refusing or failing first)."""

    def __init__(self, refuse_first: int = 0, down_first: int = 0) -> None:
        self.datasets: list[Dataset] = []
        self.calls = 0
        self.refuse_first = refuse_first
        self.down_first = down_first
        self.lock = threading.Lock()

    def send(self, files: list[Path]) -> dict[Path, str]:
        from pneumoscope.dicomnode import DestinationDown

        with self.lock:
            self.calls += 1
            if self.calls <= self.down_first:
                raise DestinationDown("test: destination down")
            if self.calls <= self.refuse_first + self.down_first:
                return {f: "test: refused" for f in files}
            self.datasets.extend(pydicom.dcmread(f) for f in files)
        return {}

    def of_modality(self, modality: str) -> list[Dataset]:
        return [d for d in self.datasets if d.Modality == modality]
