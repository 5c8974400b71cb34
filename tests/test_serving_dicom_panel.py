"""The DICOM panel's fields in the API: returned for DICOM uploads, patient name only with --show-patient."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from test_serving import dicom_bytes, stop_once_listening

from pneumoscope.serving import ServeSettings, create_app
from pneumoscope.serving.dicom_panel import dicom_panel

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-4711"}


def phantom_dicom(synth_root, **extra: object) -> bytes:
    first = sorted((synth_root / "test").rglob("*.png"))[0]
    pixels = np.asarray(Image.open(first).convert("L"))
    return dicom_bytes(pixels, ViewPosition="PA", PixelSpacing=[0.139, 0.143], **PATIENT, **extra)


def without_preamble(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    raw = Dataset()
    raw.update(ds)  # the data set alone: no preamble, no 'DICM', no file meta
    buf = io.BytesIO()
    raw.save_as(buf, implicit_vr=True, little_endian=True)
    out = buf.getvalue()
    assert out[128:132] != b"DICM"
    return out


def test_panel_reads_the_header_and_hides_the_patient_by_default(synth_root) -> None:
    data = phantom_dicom(synth_root)
    panel = dicom_panel(data, "x.dcm")
    assert panel == {
        "modality": "DX", "view_position": "PA", "rows": 48, "columns": 48,
        "pixel_spacing_mm": [0.139, 0.143], "pixel_spacing_source": "PixelSpacing",
    }
    shown = dicom_panel(data, "x.dcm", show_patient=True)
    assert shown is not None
    assert shown["patient_name"] == "Doe^Jane" and shown["patient_id"] == "PID-4711"


def test_panel_falls_back_to_imager_spacing_and_reads_preambleless_files(synth_root) -> None:
    pixels = np.zeros((20, 30), dtype=np.uint8)
    data = dicom_bytes(pixels, ImagerPixelSpacing=[0.2, 0.2])
    panel = dicom_panel(without_preamble(data), "noext")
    assert panel is not None
    assert (panel["rows"], panel["columns"]) == (20, 30)
    assert panel["pixel_spacing_mm"] == [0.2, 0.2] and panel["pixel_spacing_source"] == "ImagerPixelSpacing"
    assert panel["view_position"] is None


def test_panel_is_none_for_other_images(synth_root) -> None:
    png = sorted((synth_root / "test").rglob("*.png"))[0].read_bytes()
    assert dicom_panel(png, "a.png") is None
    assert dicom_panel(png, "misnamed.dcm") is None  # a PNG named .dcm is still not DICOM


@pytest.mark.parametrize("show", [False, True])
def test_api_returns_the_panel_and_the_patient_only_when_asked(tiny_ckpt, synth_root, show: bool) -> None:
    data = phantom_dicom(synth_root)
    png = sorted((synth_root / "test").rglob("*.png"))[1].read_bytes()
    app = create_app(tiny_ckpt, ServeSettings(device="cpu", precision="fp32", show_patient=show))
    with TestClient(app) as client:
        assert client.get("/api/model").json()["show_patient"] is show
        files = [("file", ("p.dcm", data, "application/dicom")), ("file", ("q.png", png, "image/png"))]
        for route in ("/api/predict", "/api/explain"):
            body = client.post(route, files=files)
            assert body.status_code == 200, body.text
            dcm_row, png_row = body.json()["results"]
            assert "dicom" not in png_row
            panel = dcm_row["dicom"]
            assert panel["modality"] == "DX" and panel["view_position"] == "PA"
            assert (panel["columns"], panel["rows"]) == (48, 48)
            assert panel["pixel_spacing_mm"] == [0.139, 0.143]
            if show:
                assert panel["patient_name"] == "Doe^Jane" and panel["patient_id"] == "PID-4711"
            else:
                assert "patient_name" not in panel and "patient_id" not in panel
                assert "Doe" not in body.text and "PID-4711" not in body.text


def test_serve_flag_reaches_the_settings(run_cli, tiny_ckpt, monkeypatch) -> None:
    seen = stop_once_listening(monkeypatch)
    flags = ("--port", "0", "--device", "cpu", "--precision", "fp32")
    assert run_cli("serve", "--checkpoint", tiny_ckpt, "--show-patient", *flags).exit_code == 0
    assert run_cli("serve", "--checkpoint", tiny_ckpt, *flags).exit_code == 0
    assert [server.config.app.state.settings.show_patient for server, _ in seen] == [True, False]
