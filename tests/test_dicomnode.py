"""The DICOM node in-process with pynetdicom: echo, store, skips, refusals, UIDs, the SR and SC, retries."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import assert_user_error
from dicomnode_util import Collector, free_port, save_tiny_checkpoint, scu, store, wait_for
from pydicom.sr.codedict import codes
from pydicom.uid import SecondaryCaptureImageStorage

from pneumoscope.data.io import read_image
from pneumoscope.data.results import PNEUMONIA, result_uid
from pneumoscope.dicomnode import DicomNode, NodeSettings, load_node, parse_destination, spool_status
from pneumoscope.dicomnode.destinations import DimseSender
from pneumoscope.dicomnode.node import Scorer
from pneumoscope.dicomnode.synthetic import synthetic_radiograph
from pneumoscope.errors import ConfigError
from pneumoscope.inference import Predictor

DEST = "dimse://PACS@127.0.0.1:4242"
DCIODVFY = shutil.which("dciodvfy")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor(ckpt, device="cpu", precision="fp32")


def make_node(spool: Path, predictor, sender=None, **kw) -> tuple[DicomNode, Collector]:
    sender = sender or Collector()
    kw = {"retry_min": 0.05, "retry_max": 0.2, **kw}
    settings = NodeSettings(spool=spool, send_to=[kw.pop("send_to", DEST)], port=0, device="cpu",
                            precision="fp32", **kw)
    return DicomNode(settings, predictor, senders={settings.send_to[0]: sender}), sender


@pytest.fixture
def node(tmp_path, predictor):
    n, sender = make_node(tmp_path / "spool", predictor)
    n.start()
    yield n, sender
    n.stop()


# --------------------------------------------------------------------------- association


def test_echo_and_eight_concurrent_associations(node) -> None:
    n, _ = node
    assocs = [scu(n.port) for _ in range(8)]  # all open at once
    try:
        assert all(a.is_established for a in assocs)
        results: list[int] = []
        threads = [threading.Thread(target=lambda a=a: results.append(int(a.send_c_echo().Status))) for a in assocs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert results == [0] * 8
    finally:
        for a in assocs:
            a.release()


def test_calling_ae_not_allowed_is_rejected(tmp_path, predictor) -> None:
    n, _ = make_node(tmp_path / "spool", predictor, allow_aet=["ORTHANC"])
    with n:
        bad = scu(n.port, calling="INTRUDER")
        assert not bad.is_established and bad.is_rejected
        good = scu(n.port, calling="ORTHANC")
        assert good.is_established
        good.release()


# --------------------------------------------------------------------------- store and results


@pytest.mark.parametrize("kind", ["cr_mono1", "dx_jpeg", "dx_processing", "sc_cr"])
def test_store_returns_an_sr_and_an_overlay_into_the_study(node, predictor, tmp_path, kind) -> None:
    n, sender = node
    src = synthetic_radiograph(kind, seed=3, patient_id="PID-77", patient_name="Doe^Jane", accession="ACC-9")
    path = tmp_path / "src.dcm"
    src.save_as(path, enforce_file_format=True)
    assert store(n.port, src) == [0]
    wait_for(n.idle, what="scoring and delivery")
    srs, scs = sender.of_modality("SR"), [d for d in sender.datasets if d.SOPClassUID == SecondaryCaptureImageStorage]
    assert len(srs) == 1 and len(scs) == 1
    sr, sc = srs[0], scs[0]
    for out in (sr, sc):
        for kw in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber", "SpecificCharacterSet"):
            assert out[kw].value == src[kw].value, kw
        assert out.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED"
    # The probability is the Predictor's own, for the same decoded pixels (MONOCHROME1, JPEG: same path).
    expected = float(predictor.probabilities(predictor.batch_tensor([read_image(path)]))[0])
    group = hd.sr.srread(_saved(sr, tmp_path / "sr.dcm")).content.get_image_measurement_groups()[0]
    assert group.finding_type == PNEUMONIA and PNEUMONIA.value == "233604007"
    values = {m.name: m.value for m in group.get_measurements()}
    assert values[codes.DCM.Probability] == pytest.approx(expected, abs=1e-4)
    assert values[codes.DCM.ThresholdValue] == pytest.approx(predictor.threshold)
    (finding,) = group.get_qualitative_evaluations()
    assert finding.name == PNEUMONIA
    assert finding.value == (codes.SCT.Present if expected >= predictor.threshold else codes.SCT.Absent)
    assert group.source_images[0].referenced_sop_instance_uid == src.SOPInstanceUID
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    (equipment,) = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "pneumoscope"]
    assert equipment.ManufacturerModelName == n.scorer.algorithm.model_id
    assert n.scorer.algorithm.model_id.startswith("vgg_tiny-")
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == codes.DCM.ProcessingEquipment.value
    # The overlay: burned-in notice, the source referenced, nothing of the source's display copied.
    assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSTIC USE" in sc.ImageComments
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    for kw in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept", "VOILUTSequence"):
        assert kw not in sc
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape[1] == src.Columns
    banner = sc.pixel_array[src.Rows:]
    assert banner.size and banner.max() >= 128 and np.median(banner) == 0  # light text on black
    if DCIODVFY:
        for name, ds in (("sr", sr), ("sc", sc)):
            out = subprocess.run([DCIODVFY, str(_saved(ds, tmp_path / f"{name}.v.dcm"))], capture_output=True, text=True)
            errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
            assert not errors, (name, errors)


TYPE2 = ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName",
         "StudyDate", "StudyTime")


def test_anonymised_source_lacking_type2_attributes_is_scored_with_them_empty(node, tmp_path) -> None:
    n, sender = node
    src = synthetic_radiograph("dx_processing", patient_id="ANON-1", patient_name="Anon^")
    for kw in TYPE2:
        del src[kw]
    assert store(n.port, src) == [0]
    wait_for(n.idle, what="scoring and delivery")
    assert spool_status(n.spool.root)["failed"] == 0
    srs, scs = sender.of_modality("SR"), [d for d in sender.datasets if d.SOPClassUID == SecondaryCaptureImageStorage]
    assert len(srs) == 1 and len(scs) == 1
    for out in (srs[0], scs[0]):
        back = pydicom.dcmread(_saved(out, tmp_path / "out.dcm"))  # written, then read back
        assert (back.PatientID, str(back.PatientName)) == ("ANON-1", "Anon^")
        for kw in TYPE2:
            assert kw in back and back[kw].value in ("", None), (back.Modality, kw)


def _saved(ds, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def test_log_lines_name_uids_never_patients(node, caplog) -> None:
    n, _ = node
    src = synthetic_radiograph("cr_mono1", patient_id="SECRET-ID-123", patient_name="Secret^Name")
    with caplog.at_level("DEBUG"):
        assert store(n.port, src) == [0]
        wait_for(n.idle)
    text = caplog.text
    assert src.SOPInstanceUID in text and "outcome=scored" in text and "P=" in text and "latency=" in text
    assert "SECRET-ID-123" not in text and "Secret" not in text


@pytest.mark.parametrize("override,reason", [
    ({"Modality": "MR"}, "modality"),
    ({"BodyPartExamined": "KNEE"}, "body_part"),
    ({"ViewPosition": "LL"}, "lateral"),
    ({"Manufacturer": "pneumoscope"}, "own_output"),
])
def test_skip_rules_are_counted_not_scored(node, override, reason) -> None:
    n, sender = node
    src = synthetic_radiograph("sc_cr", **override)
    assert store(n.port, src) == [0]  # accepted: a skip is not an error for the PACS
    stats = spool_status(n.spool.root)
    assert stats["counters"][f"skipped_{reason}"] == 1 and stats["incoming"] == 0
    assert n.idle() and sender.datasets == []


def test_own_results_sent_back_are_skipped(node, tmp_path) -> None:
    n, sender = node
    assert store(n.port, synthetic_radiograph("cr_mono1")) == [0]
    wait_for(n.idle)
    outputs = list(sender.datasets)
    sender.datasets.clear()
    assert store(n.port, *outputs) == [0, 0]
    assert spool_status(n.spool.root)["counters"]["skipped_own_output"] == 2 and sender.datasets == []


def test_result_uids_are_deterministic_so_a_resent_study_replaces(node) -> None:
    n, sender = node
    src = synthetic_radiograph("dx_processing", seed=5)
    store(n.port, src)
    wait_for(n.idle)
    store(n.port, src)
    wait_for(lambda: n.idle() and len(sender.datasets) == 4)
    first, second = sender.datasets[:2], sender.datasets[2:]
    assert sorted(d.SOPInstanceUID for d in first) == sorted(d.SOPInstanceUID for d in second)
    assert sorted(d.SeriesInstanceUID for d in first) == sorted(d.SeriesInstanceUID for d in second)
    mid = n.scorer.algorithm.model_id
    assert result_uid(src.SOPInstanceUID, mid, "sr-instance") in {d.SOPInstanceUID for d in first}
    assert result_uid(src.SOPInstanceUID, mid + "x", "sr-instance") not in {d.SOPInstanceUID for d in first}


def test_malformed_dataset_is_refused_and_the_node_keeps_serving(node, tmp_path, monkeypatch) -> None:
    from pynetdicom import _config

    n, sender = node
    good = synthetic_radiograph("cr_mono1")
    bad = tmp_path / "bad.dcm"
    good.save_as(bad, enforce_file_format=True)
    raw = bad.read_bytes()
    meta_end = raw.index(b"\x08\x00\x05\x00")  # the first dataset element after the file meta
    bad.write_bytes(raw[:meta_end] + b"\x08\x00\x16\x00UI\xff\xff" + b"\x01" * 64)  # a length past the end
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes as they are
    status = store(n.port, bad)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
    assert status[0] != 0
    # A parsable instance without pixels is accepted, then kept in failed/ (not retried forever).
    no_pixels = synthetic_radiograph("cr_mono1")
    del no_pixels.PixelData
    assert store(n.port, no_pixels, good) == [0, 0]
    wait_for(lambda: n.idle() and len(sender.datasets) == 2)
    stats = spool_status(n.spool.root)
    assert stats["counters"]["refused_malformed"] == 1 and stats["failed"] == 1


# --------------------------------------------------------------------------- durability and delivery


def test_outbox_retries_until_the_destination_takes_it(tmp_path, predictor) -> None:
    sender = Collector(down_first=2, refuse_first=2)
    n, _ = make_node(tmp_path / "spool", predictor, sender, retry_min=0.1, retry_max=0.4)
    with n:
        assert store(n.port, synthetic_radiograph("cr_mono1")) == [0]
        wait_for(lambda: sender.calls >= 2 and n.spool.scored_keys(), what="two failed attempts")
        assert n.outboxes[0].depth() == 1  # kept while unconfirmed
        wait_for(n.idle, what="delivery after retries")
    assert sender.calls == 5 and len(sender.datasets) == 2
    assert spool_status(n.spool.root)["counters"]["delivered"] == 1


def test_real_dimse_sender_against_a_refusing_then_accepting_scp(tmp_path, predictor) -> None:
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    got: list[str] = []
    refusals = {"left": 2}

    def on_store(event):
        if refusals["left"] > 0:
            refusals["left"] -= 1
            return 0xA700  # out of resources
        got.append(event.dataset.SOPInstanceUID)
        return 0x0000

    port = free_port()
    pacs = AE(ae_title="PACS")
    pacs.supported_contexts = AllStoragePresentationContexts
    dest = f"dimse://PACS@127.0.0.1:{port}"
    settings = NodeSettings(spool=tmp_path / "spool", send_to=[dest], port=0, device="cpu", precision="fp32",
                            retry_min=0.05, retry_max=0.2)
    n = DicomNode(settings, predictor)
    with n:
        assert store(n.port, synthetic_radiograph("dx_jpeg")) == [0]
        wait_for(lambda: n.outboxes[0].failures >= 1, what="a refused association")  # PACS not up yet
        server = pacs.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            wait_for(n.idle, what="delivery")
        finally:
            server.shutdown()
    assert len(got) == 2 and refusals["left"] == 0


def test_restart_finishes_what_the_spool_holds(tmp_path, predictor) -> None:
    spool = tmp_path / "spool"
    down = Collector(down_first=10**6)
    n, _ = make_node(spool, predictor, down)
    src = [synthetic_radiograph("cr_mono1", seed=i) for i in range(3)]
    with n:
        store(n.port, *src)
        wait_for(lambda: len(n.spool.scored_keys()) == 3, what="scoring")
    # Simulate a crash before scoring too: one instance back in incoming/.
    key = n.spool.scored_keys()[0]
    shutil.copy(n.spool.scored(key), n.spool.incoming(key))
    assert spool_status(spool)["outbox"][n.outboxes[0].dest.slug] == 3
    n2, up = make_node(spool, predictor)
    with n2:
        wait_for(n2.idle, what="resumed delivery")
    assert sorted({d.SOPInstanceUID for d in up.datasets}) == sorted(
        result_uid(s.SOPInstanceUID, n2.scorer.algorithm.model_id, k) for s in src for k in ("sr-instance", "sc-instance"))


# --------------------------------------------------------------------------- settings and CLI


@pytest.mark.parametrize("url", ["http://x", "dimse://host:104", "dimse://AE@host", "dicomweb://user:pw@h/x", "dimse://AE@:104"])
def test_bad_destination_urls(url) -> None:
    with pytest.raises(ConfigError, match="destination|credentials"):
        parse_destination(url)


def test_destination_forms() -> None:
    d = parse_destination("dimse://ORTHANC@pacs.example:4242")
    assert (d.ae_title, d.host, d.port) == ("ORTHANC", "pacs.example", 4242)
    w = parse_destination("dicomwebs://pacs.example/dicom-web/")
    assert w.http_url == "https://pacs.example:443/dicom-web"


def test_cli_start_up_errors(run_cli, tmp_path, ckpt) -> None:
    spool = tmp_path / "new" / "spool"  # refused: nothing of it is left behind
    assert_user_error(run_cli("listen", "--checkpoint", ckpt, "--spool", spool, "--send-to", "ftp://x"),
                      "bad destination URL", "ftp://x")
    assert not (tmp_path / "new").exists()
    bad_ckpt = tmp_path / "bad.ckpt"
    bad_ckpt.write_bytes(b"not a checkpoint")
    assert_user_error(run_cli("listen", "--checkpoint", bad_ckpt, "--spool", spool, "--send-to", DEST), str(bad_ckpt))
    assert not (tmp_path / "new").exists()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_user_error(run_cli("listen", "--checkpoint", ckpt, "--spool", spool, "--send-to", DEST,
                                  "--port", port, "--device", "cpu"), f"127.0.0.1:{port}", "in use")
        assert not (tmp_path / "new").exists()
        # The port is checked before the spool is created (and the model loaded).
        with pytest.raises(ConfigError, match="in use"):
            load_node(NodeSettings(spool=spool, send_to=[DEST], port=port), bad_ckpt)
        assert not (tmp_path / "new").exists()


def test_cli_status(run_cli, tmp_path, predictor) -> None:
    spool = tmp_path / "spool"
    n, _ = make_node(spool, predictor, Collector(down_first=10**6))
    with n:
        store(n.port, synthetic_radiograph("cr_mono1"), synthetic_radiograph("cr_mono1", Modality="MR"))
        wait_for(lambda: n.spool.scored_keys(), what="scoring")
    r = run_cli("listen", "--status", "--spool", spool)
    assert r.exit_code == 0, r.output
    status = json.loads(r.stdout)
    assert status["scored_awaiting_delivery"] == 1 and list(status["outbox"].values()) == [1]
    assert status["counters"]["received"] == 2 and status["counters"]["skipped_modality"] == 1
    assert_user_error(run_cli("listen", "--status", "--spool", tmp_path / "nothing"), "not a pneumoscope spool")


def test_scorer_matches_the_checkpoint(predictor) -> None:
    s = Scorer(predictor)
    gray = np.random.default_rng(0).random((40, 52)).astype(np.float32)
    prob, label, rgb = s.score(gray)
    assert prob == pytest.approx(float(predictor.probabilities(predictor.batch_tensor([gray]))[0]), abs=1e-5)
    assert label == predictor.label_of(prob) and rgb.shape == (40, 52, 3) and rgb.dtype == np.uint8


def test_dimse_sender_reports_an_unreachable_pacs() -> None:
    from pneumoscope.dicomnode import DestinationDown

    sender = DimseSender(parse_destination(f"dimse://PACS@127.0.0.1:{free_port()}"), "PNEUMOSCOPE", timeout=2)
    with pytest.raises(DestinationDown):
        sender.send([])


def test_auth_file_forms(tmp_path) -> None:
    from pneumoscope.dicomnode.destinations import DicomWebSender, read_auth_file

    f = tmp_path / "auth"
    f.write_text("basic alice:s3cr:et\n")
    assert read_auth_file(f) == ("basic", "alice:s3cr:et")
    sender = DicomWebSender(parse_destination("dicomweb://127.0.0.1:8042/dicom-web"), read_auth_file(f))
    assert sender.client._session.auth == ("alice", "s3cr:et")
    f.write_text("bearer abc.def\n")
    sender = DicomWebSender(parse_destination("dicomweb://127.0.0.1:8042/dicom-web"), read_auth_file(f))
    assert sender.client._session.headers["Authorization"] == "Bearer abc.def"
    f.write_text("alice:secret\n")
    with pytest.raises(ConfigError, match="basic USER:PASSWORD"):
        read_auth_file(f)
    with pytest.raises(ConfigError, match="cannot read"):
        read_auth_file(tmp_path / "missing")
