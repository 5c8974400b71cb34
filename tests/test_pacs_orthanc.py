"""The node against a real Orthanc PACS: routing in, SR and overlay back, DICOMweb, and faults.

Orthanc, its DICOMweb plugin, DCMTK (dcmsend) and dicom3tools (dciodvfy) are apt packages
(`.ci/run` installs them); without them these tests skip, saying which is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dicomnode_util import free_port, save_tiny_checkpoint, store, wait_for
from orthanc_util import Orthanc, dcmsend, missing_tools
from pydicom.uid import SecondaryCaptureImageStorage

from pneumoscope.dicomnode import DicomNode, NodeSettings, spool_status
from pneumoscope.dicomnode.synthetic import synthetic_radiograph
from pneumoscope.inference import Predictor

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
MISSING = missing_tools()
pytestmark = pytest.mark.skipif(bool(MISSING), reason="needs " + ", ".join(MISSING))
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor(ckpt, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    node_port = free_port()
    o = Orthanc(tmp_path_factory.mktemp("orthanc"), free_port(), free_port(), node_port)
    o.node_port = node_port  # type: ignore[attr-defined]
    o.start()
    yield o
    o.stop()


def node_for(pacs: Orthanc, spool: Path, predictor, dest: str | None = None) -> DicomNode:
    settings = NodeSettings(
        spool=spool, send_to=[dest or f"dimse://{pacs.aet}@127.0.0.1:{pacs.dicom_port}"], port=pacs.node_port,
        allow_aet=[pacs.aet, "TESTSCU"], device="cpu", precision="fp32", retry_min=0.1, retry_max=0.5, timeout=10,
    )
    return DicomNode(settings, predictor)


def write_inputs(folder: Path, tag: str) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    sources = [
        synthetic_radiograph("cr_mono1", seed=1, patient_id=f"{tag}-P1", accession=f"{tag}1"),
        synthetic_radiograph("dx_jpeg", seed=2, patient_id=f"{tag}-P2", accession=f"{tag}2"),
        synthetic_radiograph("sc_cr", seed=3, patient_id=f"{tag}-P3", accession=f"{tag}3"),
    ]
    for i, ds in enumerate(sources):
        ds.save_as(folder / f"{i}.dcm", enforce_file_format=True)
    return sources


def results_in(pacs: Orthanc, src) -> tuple[dict, dict] | None:
    """The SR and the overlay SC Orthanc holds in the source's study, once both are there."""
    tags = pacs.study_instances(src.StudyInstanceUID)
    srs = [t for t in tags if t.get("SOPClassUID") == SR_CLASS]
    scs = [t for t in tags if t.get("SOPClassUID") == SecondaryCaptureImageStorage and t.get("Manufacturer") == "pneumoscope"]
    return (srs[0], scs[0]) if srs and scs else None


def check_results(pacs: Orthanc, sources: list, tmp_path: Path, verify: bool = True) -> None:
    for src in sources:
        wait_for(lambda: results_in(pacs, src) is not None, timeout=60, what=f"results for {src.PatientID}")
        sr, sc = results_in(pacs, src)
        for out in (sr, sc):
            assert out["StudyInstanceUID"] == src.StudyInstanceUID and out["PatientID"] == src.PatientID
            assert out["AccessionNumber"] == src.AccessionNumber
            assert out["SeriesInstanceUID"] != src.SeriesInstanceUID
        if verify:
            for name, tags in (("sr", sr), ("sc", sc)):
                path = pacs.download(tags["_id"], tmp_path / f"{src.PatientID}.{name}.dcm")
                out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
                errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
                assert not errors, (name, errors)


def test_dcmsend_into_orthanc_routes_to_the_node_and_results_come_back(pacs, predictor, tmp_path) -> None:
    sources = write_inputs(tmp_path / "in", "DIMSE")
    with node_for(pacs, tmp_path / "spool", predictor) as node:
        dcmsend(pacs.dicom_port, *sorted((tmp_path / "in").glob("*.dcm")))
        check_results(pacs, sources, tmp_path)
        wait_for(node.idle, what="an empty spool")
        # Sent again, the study gets the same results (same UIDs), not a second set.
        dcmsend(pacs.dicom_port, tmp_path / "in" / "0.dcm")
        wait_for(lambda: node.spool.stats["delivered"] >= 4, what="the second delivery")
        assert len(pacs.study_instances(sources[0].StudyInstanceUID)) == 3


def test_stow_rs_into_orthanc_checked_with_qido(pacs, predictor, tmp_path) -> None:
    from dicomweb_client.api import DICOMwebClient

    sources = write_inputs(tmp_path / "in", "WEB")
    dest = f"dicomweb://127.0.0.1:{pacs.http_port}/dicom-web"
    with node_for(pacs, tmp_path / "spool", predictor, dest) as node:
        dcmsend(pacs.dicom_port, *sorted((tmp_path / "in").glob("*.dcm")))
        check_results(pacs, sources, tmp_path, verify=False)
        wait_for(node.idle)
    qido = DICOMwebClient(f"{pacs.url}/dicom-web")
    for src in sources:
        found = qido.search_for_instances(study_instance_uid=src.StudyInstanceUID)
        classes = sorted(item["00080016"]["Value"][0] for item in found)
        assert SR_CLASS in classes and SecondaryCaptureImageStorage in classes, classes


def test_pacs_down_while_results_are_pending_then_everything_arrives(pacs, predictor, tmp_path) -> None:
    sources = write_inputs(tmp_path / "in", "DOWN")
    pacs.stop()
    try:
        with node_for(pacs, tmp_path / "spool", predictor) as node:
            assert store(pacs.node_port, *sources) == [0, 0, 0]  # the modality sends straight to the node
            wait_for(lambda: len(node.spool.scored_keys()) == 3 and node.outboxes[0].failures >= 2,
                     what="scoring and failed deliveries")
            assert node.outboxes[0].depth() == 3  # nothing deleted before the PACS confirms
            pacs.start()
            check_results(pacs, sources, tmp_path, verify=False)
            wait_for(node.idle)
    finally:
        if pacs.proc is None:
            pacs.start()


@pytest.mark.slow  # two cold starts of `pneumoscope listen` (~10 s); the in-process restart test is in the default run
def test_node_killed_with_work_spooled_then_restarted_delivers_everything(pacs, ckpt, tmp_path) -> None:
    sources = write_inputs(tmp_path / "in", "KILL")
    spool = tmp_path / "spool"
    cmd = [sys.executable, "-m", "pneumoscope", "listen", "--checkpoint", str(ckpt), "--spool", str(spool),
           "--port", str(pacs.node_port), "--send-to", f"dimse://{pacs.aet}@127.0.0.1:{pacs.dicom_port}",
           "--device", "cpu", "--precision", "fp32", "--retry-min", "0.1", "--retry-max", "0.5"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "node.log", "ab"))
        wait_for(lambda: _echo(pacs.node_port) or proc.poll() is not None, timeout=60, what="the node to listen")
        assert proc.poll() is None, (tmp_path / "node.log").read_text()
        return proc

    proc = start()
    try:
        assert store(pacs.node_port, *sources) == [0, 0, 0]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = spool_status(spool)
        assert left["incoming"] + left["scored_awaiting_delivery"] > 0, left  # the kill did leave work behind
        proc = start()
        check_results(pacs, sources, tmp_path, verify=False)
        wait_for(lambda: spool_status(spool)["scored_awaiting_delivery"] == 0 and spool_status(spool)["incoming"] == 0)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(20)
    log = (tmp_path / "node.log").read_text()
    assert "outcome=scored" in log and sources[0].PatientID not in log


def _echo(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 2
    assoc = ae.associate("127.0.0.1", port, ae_title="PNEUMOSCOPE")
    if not assoc.is_established:
        return False
    ok = int(assoc.send_c_echo().Status) == 0
    assoc.release()
    return ok
