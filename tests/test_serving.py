"""The HTTP API in-process: results, the DICOM Secondary Capture, limits, bad input, auth, concurrency."""

from __future__ import annotations

import asyncio
import base64
import io
import shutil
import struct
import signal
import socket
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import assert_user_error, jpeg_bytes, require, write_dicom_without_pixels
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumoscope.errors import ConfigError
from pneumoscope.explanation.cam import METHODS
from pneumoscope.inference import Predictor
import pneumoscope.serving.app as app_module
from pneumoscope.serving import API_KEY_ENV, ServeSettings, create_app
from pneumoscope.serving.uploads import FIELD

require("httpx2", "httpx2")  # Starlette's TestClient and the concurrency tests drive the app with it
from fastapi.testclient import TestClient  # noqa: E402 - after the check that names the package

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


def settings(**kw) -> ServeSettings:
    return ServeSettings(device="cpu", precision="fp32", **kw)


@pytest.fixture(scope="module")
def client(tiny_ckpt):
    with TestClient(create_app(tiny_ckpt, settings())) as c:
        yield c


@pytest.fixture(scope="module")
def phantoms(synth_root) -> list[Path]:
    return sorted((synth_root / "test").rglob("*.png"))


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def dicom_bytes(pixels: np.ndarray, **ids: str) -> bytes:
    """An uncompressed 8-bit MONOCHROME2 DX DICOM with patient/study identifiers."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SeriesInstanceUID = generate_uid()
    for k, v in ids.items():
        setattr(ds, k, v)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def one(name: str, data: bytes, ctype: str = "image/png") -> dict:
    return {"file": (name, data, ctype)}


def error_of(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and body["error"], body
    return body["error"]


# --------------------------------------------------------------------------- results


def test_predict_matches_the_predictor(client, tiny_ckpt, phantoms) -> None:
    ref = Predictor(tiny_ckpt, device="cpu", precision="fp32").predict(phantoms[:1])[0]
    r = client.post("/api/predict", files=one(phantoms[0].name, phantoms[0].read_bytes()))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["filename"] == phantoms[0].name
    assert body["label"] == ref.label
    assert body["prob_pneumonia"] == pytest.approx(ref.prob_pneumonia, abs=1e-6)
    assert body["probabilities"]["PNEUMONIA"] == pytest.approx(ref.prob_pneumonia, abs=1e-6)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0)
    assert body["threshold"] == ref.threshold
    assert body["model"] == client.app.state.model_id and body["model"].startswith("vgg_tiny-")


def test_dicom_upload_predicts_like_its_png(client, phantoms) -> None:
    gray = np.asarray(Image.open(phantoms[1]).convert("L"))
    by_png = client.post("/api/predict", files=one("a.png", png_bytes(gray))).json()
    by_dcm = client.post("/api/predict", files=one("a.dcm", dicom_bytes(gray), "application/dicom")).json()
    assert by_dcm["prob_pneumonia"] == pytest.approx(by_png["prob_pneumonia"], abs=1e-6)
    assert by_dcm["label"] == by_png["label"]


def test_several_files_give_a_table_with_per_file_errors(client, phantoms) -> None:
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in phantoms[:3]]
    files.append(("file", ("notes.png", b"not an image at all, just text\n" * 4, "image/png")))
    r = client.post("/api/predict", files=files)
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert [row["filename"] for row in rows] == [p.name for p in phantoms[:3]] + ["notes.png"]
    assert all(row["label"] in ("NORMAL", "PNEUMONIA") for row in rows[:3])
    assert rows[3]["status"] == 422 and "not a recognised image" in rows[3]["error"]
    singles = [client.post("/api/predict", files=one(p.name, p.read_bytes())).json() for p in phantoms[:3]]
    assert [row["prob_pneumonia"] for row in rows[:3]] == pytest.approx([s["prob_pneumonia"] for s in singles], abs=1e-6)


def test_explain_json_has_overlay_and_layers(client, phantoms) -> None:
    data = phantoms[0].read_bytes()
    r = client.post("/api/explain?layers=true", files=one("p.png", data))
    assert r.status_code == 200, r.text
    body = r.json()
    pred = client.post("/api/predict", files=one("p.png", data)).json()
    assert body["label"] == pred["label"] and body["prob_pneumonia"] == pytest.approx(pred["prob_pneumonia"])
    assert body["explanation"]["method"] == "gradcam"
    assert body["explanation"]["target"] == body["label"]  # the explained class is the decided one
    w, h = Image.open(phantoms[0]).size
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.format == "PNG" and overlay.mode == "RGB" and overlay.size == (w, h)
    assert Image.open(io.BytesIO(base64.b64decode(body["image_png"]))).size == (w, h)
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert heat.mode == "RGBA" and heat.size == (w, h)
    # Without layers=true only the overlay travels.
    plain = client.post("/api/explain", files=one("p.png", data)).json()
    assert "image_png" not in plain and plain["overlay_png"] == body["overlay_png"]


def test_explain_png_format(client, phantoms) -> None:
    data = phantoms[0].read_bytes()
    r = client.post("/api/explain?format=png", files=one("p.png", data))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-pneumoscope-label"] in ("NORMAL", "PNEUMONIA")
    as_json = client.post("/api/explain", files=one("p.png", data)).json()
    assert r.content == base64.b64decode(as_json["overlay_png"])


def test_explain_dicom_secondary_capture_carries_the_study(client, phantoms, tmp_path) -> None:
    gray = np.asarray(Image.open(phantoms[0]).convert("L"))
    ids = {
        "PatientID": "PID-0042", "PatientName": "Doe^Jane", "StudyInstanceUID": generate_uid(),
        "AccessionNumber": "ACC123", "StudyID": "S1", "StudyDate": "20240102", "PatientBirthDate": "20180101",
        "PatientSex": "F",
    }
    source_bytes = dicom_bytes(gray, **ids)
    source = pydicom.dcmread(io.BytesIO(source_bytes))
    r = client.post("/api/explain?format=dicom", files=one("chest.dcm", source_bytes, "application/dicom"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom"
    assert 'filename="chest.overlay.dcm"' in r.headers["content-disposition"]
    sc = pydicom.dcmread(io.BytesIO(r.content))
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.MediaStorageSOPClassUID == SecondaryCaptureImageStorage
    for k, v in ids.items():
        assert str(sc[k].value) == v, k
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SOPInstanceUID != source.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "pneumoscope" in sc.SeriesDescription and "Grad-CAM" in sc.SeriesDescription
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert sc.pixel_array.shape[1:] == (gray.shape[1], 3)
    png = client.post("/api/explain?format=png", files=one("chest.dcm", source_bytes, "application/dicom"))
    # The overlay is the PNG's, with a "not for diagnostic use" banner burned in below it.
    overlay = np.asarray(Image.open(io.BytesIO(png.content)))
    assert sc.BurnedInAnnotation == "YES" and sc.Rows > overlay.shape[0]
    assert np.array_equal(sc.pixel_array[: overlay.shape[0]], overlay)
    assert "WindowCenter" not in sc and "RescaleSlope" not in sc
    # The original is untouched: the source's pixels are still the grey phantom.
    assert np.array_equal(source.pixel_array, gray)
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy:  # dicom3tools: the object a PACS would receive is valid (warnings allowed)
        path = tmp_path / "sc.dcm"
        path.write_bytes(r.content)
        out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        assert not [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")], out.stderr


def test_explain_dicom_from_png_starts_a_new_study(client, phantoms) -> None:
    r = client.post("/api/explain?format=dicom", files=one("p.png", phantoms[0].read_bytes()))
    assert r.status_code == 200, r.text
    sc = pydicom.dcmread(io.BytesIO(r.content))
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID and sc.SeriesInstanceUID and sc.SeriesInstanceUID != sc.StudyInstanceUID
    assert sc.PatientID == "" and "SourceImageSequence" not in sc
    second = pydicom.dcmread(io.BytesIO(client.post("/api/explain?format=dicom", files=one("p.png", phantoms[0].read_bytes())).content))
    assert second.StudyInstanceUID != sc.StudyInstanceUID


def test_model_health_and_openapi(client, tiny_ckpt) -> None:
    m = client.get("/api/model").json()
    ck = Predictor(tiny_ckpt, device="cpu", precision="fp32")
    assert m["architecture"] == "vgg_tiny" and m["class_names"] == list(ck.ckpt.class_names)
    assert m["layer"] == ck.ckpt.target_layer and m["threshold"] == ck.threshold
    assert m["methods"] == list(METHODS)
    assert m["training_data"]["train_counts"] and m["version"] and "not a diagnosis" in m["disclaimer"]
    assert "/" not in (m["training_data"]["source"] or "")  # no server paths leak
    assert client.get("/healthz").json()["status"] == "ok"
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/explain", "/api/model", "/healthz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]


def test_page_is_served_with_disclaimer(client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "not a diagnosis" in r.text and "paediatric" in r.text
    assert client.get("/static/viewer.js").status_code == 200
    # Path traversal is tested on the wire in test_serving_raw_paths.py: httpx would send
    # "/static/../app.py" as "/app.py".


# --------------------------------------------------------------------------- bad input


BAD_UPLOADS = {
    "empty": (b"", "image/jpeg", 422, "empty"),
    "non_image": (b"just some text, not an image\n" * 8, "image/jpeg", 422, "not a recognised image"),
    "truncated_jpeg": (jpeg_bytes()[: len(jpeg_bytes()) // 2], "image/jpeg", 422, "truncated"),
    "wrong_content_type": (b"%PDF-1.4 ...", "application/pdf", 415, "content type"),
    "bomb_header": (png_header_only(100_000, 100_000), "image/png", 413, "too large"),
    "over_100_megapixels": (png_header_only(12_000, 10_000), "image/png", 413, "120,000,000 pixels"),
    "over_the_flag": (png_header_only(12_000, 10_000), "image/png", 413, "limit of 100 megapixels (--max-megapixels)"),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
@pytest.mark.parametrize("route", ["/api/predict", "/api/explain"])
def test_bad_upload_is_a_json_4xx(client, route, kind) -> None:
    data, ctype, status, needle = BAD_UPLOADS[kind]
    msg = error_of(client.post(route, files=one("x.jpg", data, ctype)), status)
    assert needle in msg


def test_dicom_without_pixel_data(client, tmp_path) -> None:
    data = write_dicom_without_pixels(tmp_path / "x.dcm").read_bytes()
    msg = error_of(client.post("/api/predict", files=one("x.dcm", data, "application/dicom")), 422)
    assert "x.dcm" in msg and "no pixel data" in msg


def test_dicom_over_the_megapixel_limit_is_not_decoded(client) -> None:
    # Rows x Columns claim 20000 x 20000 but only 16 bytes of pixels follow: refused from the header.
    tiny = dicom_bytes(np.zeros((4, 4), np.uint8))
    ds = pydicom.dcmread(io.BytesIO(tiny))
    ds.Rows = ds.Columns = 20_000
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    msg = error_of(client.post("/api/predict", files=one("big.dcm", buf.getvalue(), "application/dicom")), 413)
    assert "400,000,000 pixels" in msg


def test_request_shape_errors(client) -> None:
    assert "multipart/form-data" in error_of(client.post("/api/predict", json={"file": "x"}), 415)
    assert "no file" in error_of(client.post("/api/predict", files={"file": (None, "hi")}), 400)
    assert "unknown format" in error_of(client.post("/api/explain?format=gif", files=one("x.png", b"x")), 400)
    assert "unknown explanation method" in error_of(client.post("/api/explain?method=nope", files=one("x.png", b"x")), 400)
    assert "one file" in error_of(client.post("/api/explain?format=png", files=[
        ("file", ("a.png", jpeg_bytes(), "image/jpeg")), ("file", ("b.png", jpeg_bytes(), "image/jpeg"))]), 400)
    error_of(client.get("/api/nothing-here"), 404)
    error_of(client.get("/api/predict"), 405)


def test_unknown_query_options_are_refused(client, phantoms) -> None:
    data = phantoms[0].read_bytes()
    msg = error_of(client.post("/api/predict?foo=bar", files=one("a.png", data)), 400)
    assert "unknown option 'foo'" in msg and "/api/predict" in msg and "no options" in msg
    msg = error_of(client.post("/api/explain?foo=1&layers=true&bar=2", files=one("a.png", data)), 400)
    assert "unknown options 'foo', 'bar'" in msg and "known options: format, method, style, layers" in msg
    assert "unknown option 'x'" in error_of(client.get("/api/model?x=1"), 400)
    # Every option /api/explain declares is a known one, and the known ones still work.
    params = client.get("/openapi.json").json()["paths"]["/api/explain"]["post"]["parameters"]
    assert tuple(p["name"] for p in params) == app_module.EXPLAIN_OPTIONS
    assert client.post("/api/explain?format=png&style=heatmap&method=gradcam&layers=false",
                       files=one("a.png", data)).status_code == 200


def test_images_must_come_in_the_field_named_file(client, phantoms) -> None:
    data = phantoms[0].read_bytes()
    msg = error_of(client.post("/api/predict", files={"image": ("a.png", data, "image/png")}), 400)
    assert "unexpected form field 'image'" in msg and "'file'" in msg
    msg = error_of(client.post("/api/explain", files=[("file", ("a.png", data, "image/png")),
                                                      ("format", (None, "png"))]), 400)
    assert "'format'" in msg and "query string" in msg
    # The bundled viewer sends its images in that field.
    viewer = client.get("/static/viewer.js").text
    assert f'form.append("{FIELD}"' in viewer and "form.append(" not in viewer.replace(f'form.append("{FIELD}"', "")


def test_megapixel_limit_names_the_flag(tiny_ckpt) -> None:
    with TestClient(create_app(tiny_ckpt, settings(max_megapixels=0.5))) as c:
        big = png_header_only(1000, 600)
        msg = error_of(c.post("/api/predict", files=one("big.png", big)), 413)
        assert "1000x600 = 600,000 pixels" in msg and "limit of 0.5 megapixels (--max-megapixels)" in msg
        assert "max_pixels" not in msg
        rows = c.post("/api/predict", files=[("file", ("big.png", big, "image/png")),
                                             ("file", ("ok.jpg", jpeg_bytes(), "image/jpeg"))]).json()["results"]
        assert rows[0]["status"] == 413 and "--max-megapixels" in rows[0]["error"] and "label" in rows[1]


def test_unreadable_file_errors_name_the_same_formats(client) -> None:
    expected = "expected a JPEG, PNG, BMP, TIFF or DICOM image"
    assert expected in error_of(client.post("/api/predict", files=one("e.jpg", b"")), 422)
    assert expected in error_of(client.post("/api/predict", files=one("t.jpg", b"text, not an image\n" * 8)), 422)


def test_limits_files_and_bytes(tiny_ckpt) -> None:
    with TestClient(create_app(tiny_ckpt, settings(max_files=2, max_upload_mb=0.05))) as c:
        three = [("file", (f"{i}.jpg", jpeg_bytes(seed=i), "image/jpeg")) for i in range(3)]
        assert "too many files" in error_of(c.post("/api/predict", files=three), 413)
        big = jpeg_bytes(size=400)  # noise: ~100 KB, over 0.05 MB
        assert len(big) > 50_000
        assert "0.05 MB" in error_of(c.post("/api/predict", files=one("big.jpg", big, "image/jpeg")), 413)
        assert c.post("/api/predict", files=three[:2]).status_code == 200


def _asgi_post(app, path: str, chunks, headers: dict[str, str]) -> tuple[int, bytes, int]:
    """POST a chunked body straight through ASGI; returns (status, body, chunks the app read)."""
    consumed = 0
    sent: list[dict] = []
    it = iter(chunks)

    async def receive() -> dict:
        nonlocal consumed
        try:
            chunk = next(it)
        except StopIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, consumed


def test_oversized_upload_is_cut_off_while_streaming(tiny_ckpt) -> None:
    import json

    app = create_app(tiny_ckpt, settings(max_upload_mb=1))
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="huge.dcm"\r\nContent-Type: application/dicom\r\n\r\n'
    chunk = b"\0" * (64 * 1024)

    def body():  # a "5 GB" upload, without Content-Length: only the stream can tell
        yield head
        for _ in range(80_000):
            yield chunk

    status, text, consumed = _asgi_post(app, "/api/predict", body(), {"content-type": "multipart/form-data; boundary=b"})
    assert status == 413 and "1 MB" in json.loads(text)["error"]
    assert consumed < 40  # stopped after ~1 MB, not after 5 GB
    # A declared Content-Length over the limit is refused before reading anything.
    status, _, consumed = _asgi_post(app, "/api/predict", body(), {
        "content-type": "multipart/form-data; boundary=b", "content-length": str(5 * 10**9)})
    assert status == 413 and consumed == 0


def test_uploads_never_touch_the_disk(client, phantoms, monkeypatch) -> None:
    import builtins
    import os

    real_os_open, real_open = os.open, builtins.open
    writes: list[str] = []

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            writes.append(str(path))
        return real_os_open(path, flags, *a, **k)

    def open_(file, mode="r", *a, **k):
        if isinstance(mode, str) and any(c in mode for c in "wax+") and not isinstance(file, int):
            writes.append(str(file))
        return real_open(file, mode, *a, **k)

    # Every file creation in the process goes through one of these (tempfile uses os.open).
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    # Incompressible 1200x1200 PNG: ~1.4 MB, over the 1 MB at which form parsers usually spool to disk.
    big = png_bytes(np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8))
    assert len(big) > 1_100_000
    assert client.post("/api/predict", files=one("big.png", big)).status_code == 200
    assert client.post("/api/explain?format=dicom", files=one("big.png", big)).status_code == 200
    assert writes == []
    # The guard itself works: a spooled temporary file over its size is caught.
    import tempfile

    with tempfile.SpooledTemporaryFile(max_size=10) as fh:
        fh.write(b"x" * 100)
    assert writes


# --------------------------------------------------------------------------- auth and binding


def test_api_key_required_when_set(tiny_ckpt, phantoms) -> None:
    with TestClient(create_app(tiny_ckpt, settings(api_key="s3cret-key"))) as c:
        assert "API key" in error_of(c.get("/api/model"), 401)
        error_of(c.get("/api/model", headers={"X-API-Key": "wrong"}), 401)
        error_of(c.post("/api/predict", files=one("p.png", phantoms[0].read_bytes())), 401)
        error_of(c.post("/api/explain", files=one("p.png", phantoms[0].read_bytes())), 401)
        assert c.get("/api/model", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert c.get("/api/model", headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        ok = c.post("/api/predict", files=one("p.png", phantoms[0].read_bytes()), headers={"X-API-Key": "s3cret-key"})
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness probes carry no key
        assert c.get("/").status_code == 200  # the page asks for the key itself


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "scanner.example.org"])
def test_public_bind_requires_a_key(host, monkeypatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match="--api-key"):
        ServeSettings(host=host).with_env_key().validate()
    assert ServeSettings(host=host, api_key="k").validate().api_key == "k"
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert ServeSettings(host=host).with_env_key().validate().api_key == "from-env"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_needs_no_key(host) -> None:
    assert ServeSettings(host=host).validate().api_key is None


def stop_once_listening(monkeypatch) -> list:
    """Let ``pneumoscope serve`` start for real, ask the listening socket for /healthz, then stop.

    Returns the list that receives ``(server, healthz status)``: the uvicorn server (its
    ``config`` holds what the CLI passed) and the status answered on the wire.
    """
    import urllib.request

    import uvicorn

    seen: list = []

    async def main_loop(self) -> None:  # instead of serving until Ctrl-C
        port = self.servers[0].sockets[0].getsockname()[1]
        with await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            seen.append((self, r.status))

    monkeypatch.setattr(uvicorn.Server, "main_loop", main_loop)
    return seen


def test_cli_serve(run_cli, tiny_ckpt, monkeypatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert_user_error(run_cli("serve", "--checkpoint", tiny_ckpt, "--host", "0.0.0.0"), "--api-key")
    assert_user_error(run_cli("serve", "--checkpoint", tiny_ckpt, "--max-files", "0"), "--max-files")
    seen = stop_once_listening(monkeypatch)
    monkeypatch.setenv(API_KEY_ENV, "k3y")
    result = run_cli("serve", "--checkpoint", tiny_ckpt, "--host", "0.0.0.0", "--port", "0",
                     "--device", "cpu", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    server, status = seen[0]
    assert status == 200 and server.config.host == "0.0.0.0"
    port = server.config.port  # the port the system chose for --port 0, and the one announced
    assert port > 0 and f"at http://0.0.0.0:{port}/" in result.stderr
    app = server.config.app
    assert app.state.settings.api_key == "k3y" and app.state.predictor.precision == "fp32"


def test_cli_serve_says_nothing_of_serving_when_it_cannot(run_cli, tiny_ckpt) -> None:
    result = run_cli("serve", "--checkpoint", "missing.ckpt", "--device", "cpu", "--port", "0")
    assert_user_error(result, "missing.ckpt")
    assert "serving" not in result.stderr and "http://" not in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "--checkpoint", tiny_ckpt, "--device", "cpu", "--port", port)
    assert_user_error(result, f"127.0.0.1:{port}", "already in use", "--port")
    assert "serving" not in result.stderr and "http://" not in result.stderr


def test_cli_serve_announces_its_url_once_listening(tiny_ckpt) -> None:
    """A real ``pneumoscope serve`` process: the URL line is printed only when the port answers."""
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "pneumoscope", "serve", "--checkpoint", str(tiny_ckpt), "--port", "0",
         "--device", "cpu", "--precision", "fp32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        for line in proc.stderr:  # uvicorn's startup log, then our line
            lines.append(line)
            if line.startswith("serving "):
                break
        assert lines and lines[-1].startswith("serving "), "".join(lines)
        url = lines[-1].split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
        with urllib.request.urlopen(url + "healthz", timeout=10) as r:  # at once: already listening
            assert r.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[1]
    assert proc.returncode == 130 and "Traceback" not in rest, rest  # Ctrl-C: shut down, "interrupted"
    assert sum(line.startswith("serving ") for line in lines + rest.splitlines()) == 1


# --------------------------------------------------------------------------- concurrency


class _Gate:
    """Hold the model thread inside its first batch until released."""

    def __init__(self, engine) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        original = engine._compute

        def gated(*args):
            self.entered.set()
            assert self.release.wait(60), "gate never released"
            return original(*args)

        engine._compute = gated


def test_64_concurrent_clients_get_correct_answers_and_health_stays_up(tiny_ckpt, phantoms) -> None:
    import httpx2

    app = create_app(tiny_ckpt, settings(batch_size=16))
    engine = app.state.engine
    gate = _Gate(engine)
    images = [p.read_bytes() for p in phantoms[:4]]
    expected = Predictor(tiny_ckpt, device="cpu", precision="fp32").predict(phantoms[:4])

    async def main() -> tuple[list, dict]:
        async with app.router.lifespan_context(app):
            transport = httpx2.ASGITransport(app=app)
            async with httpx2.AsyncClient(transport=transport, base_url="http://t") as c:
                tasks = [
                    asyncio.create_task(c.post("/api/predict", files=one(f"{i}.png", images[i % 4])))
                    for i in range(64)
                ]
                for _ in range(2000):  # until every request is admitted and waits on the held model
                    if engine.pending == 64:
                        break
                    await asyncio.sleep(0.005)
                health = (await c.get("/healthz")).json()  # answered while the model is busy
                gate.release.set()
                return await asyncio.gather(*tasks), health

    responses, health = asyncio.run(main())
    assert gate.entered.is_set()
    assert health == {"status": "ok", "model": app.state.model_id, "pending": 64}
    assert [r.status_code for r in responses] == [200] * 64
    for i, r in enumerate(responses):
        assert r.json()["filename"] == f"{i}.png"
        assert r.json()["prob_pneumonia"] == pytest.approx(expected[i % 4].prob_pneumonia, abs=1e-5)
    assert engine.batches <= 8  # waiting requests were batched (16 per model call), not run one by one
    assert engine.pending == 0


def test_saturated_server_answers_503(tiny_ckpt, phantoms) -> None:
    import httpx2

    app = create_app(tiny_ckpt, settings(max_pending=1))
    gate = _Gate(app.state.engine)
    data = phantoms[0].read_bytes()

    async def main():
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t") as c,
        ):
            first = asyncio.create_task(c.post("/api/predict", files=one("a.png", data)))
            while not gate.entered.is_set():
                await asyncio.sleep(0.005)
            second = await c.post("/api/predict", files=one("b.png", data))
            gate.release.set()
            return await first, second

    first, second = asyncio.run(main())
    assert first.status_code == 200
    assert "busy" in error_of(second, 503) and second.headers["retry-after"] == "1"


def test_works_without_lifespan_events(tiny_ckpt, phantoms) -> None:
    """ASGI servers run with lifespan off still get a working engine (started on first use)."""
    import httpx2

    app = create_app(tiny_ckpt, settings())

    async def main():
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t") as c:
            r = await c.post("/api/predict", files=one("a.png", phantoms[0].read_bytes()))
        await app.state.engine.stop()
        return r

    assert asyncio.run(main()).status_code == 200
