"""The server's memory budget: images sized from their headers and refused before decoding.

Small "bombs" (solid-grey PNGs of a few megapixels: a few KB on the wire) against tiny
budgets, so every case runs in well under a second of decoding.
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import pytest
from PIL import Image
from test_serving import _asgi_post, _Gate, error_of, one, settings, stop_once_listening

import pneumoscope.serving.app as app_module
from pneumoscope.data.io import read_image_bytes
from pneumoscope.errors import ConfigError
from pneumoscope.inference import Predictor
from pneumoscope.serving import ServeSettings, create_app

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient


def bomb(width: int = 3000, height: int = 3000) -> bytes:
    """A solid-grey PNG: ``width * height`` pixels in a few KB."""
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The names of the uploads the server decoded (header reads do not count)."""
    seen: list[str] = []
    real = app_module.read_image_bytes

    def counting(data, name="upload", **kwargs):
        seen.append(name)
        return real(data, name, **kwargs)

    monkeypatch.setattr(app_module, "read_image_bytes", counting)
    return seen


def test_request_over_its_pixel_budget_is_refused_before_decoding(tiny_ckpt, decodes) -> None:
    data = bomb()
    assert len(data) < 20_000  # 9 megapixels in a few KB
    with TestClient(create_app(tiny_ckpt, settings(max_request_megapixels=10, max_inflight_megapixels=20))) as c:
        two = [("file", (f"{i}.png", data, "image/png")) for i in range(2)]
        msg = error_of(c.post("/api/predict", files=two), 413)
        assert "18,000,000 pixels" in msg and "--max-request-megapixels" in msg
        error_of(c.post("/api/explain", files=two), 413)
        assert decodes == []  # refused on the headers alone
        assert c.app.state.engine.inflight_pixels == 0
        # One bomb fits the request budget: admitted, decoded once, at reduced size.
        assert c.post("/api/predict", files=one("ok.png", data)).status_code == 200
        assert decodes == ["ok.png"]


def test_server_over_its_inflight_budget_answers_503_before_decoding(tiny_ckpt, decodes) -> None:
    import httpx2

    app = create_app(tiny_ckpt, settings(max_request_megapixels=10, max_inflight_megapixels=10))
    engine = app.state.engine
    gate = _Gate(engine)
    data = bomb()

    async def main():
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t") as c,
        ):
            first = asyncio.create_task(c.post("/api/predict", files=one("first.png", data)))
            while not gate.entered.is_set():  # admitted (9 MP in flight), decoded, held in the model
                await asyncio.sleep(0.005)
            held = engine.inflight_pixels
            second = await c.post("/api/predict", files=one("second.png", data))
            # 0.9 MP still fits: admitted, decoded, and waiting for the held model.
            small = asyncio.create_task(c.post("/api/predict", files=one("small.png", bomb(900, 1000))))
            for _ in range(2000):
                if engine.pending == 2:
                    break
                await asyncio.sleep(0.005)
            gate.release.set()
            return await first, second, await small, held

    first, second, small, held = asyncio.run(main())
    assert held == 9_000_000
    msg = error_of(second, 503)
    assert "--max-inflight-megapixels" in msg and second.headers["retry-after"] == "1"
    assert first.status_code == 200 and small.status_code == 200
    assert "second.png" not in decodes and decodes == ["first.png", "small.png"]
    assert engine.inflight_pixels == 0 and engine.pending == 0  # released after each request


def test_unreadable_file_in_a_batch_costs_nothing(tiny_ckpt, decodes) -> None:
    with TestClient(create_app(tiny_ckpt, settings(max_request_megapixels=10, max_inflight_megapixels=10))) as c:
        files = [("file", ("a.png", bomb(1000, 1000), "image/png")), ("file", ("b.png", b"not an image", "image/png"))]
        body = c.post("/api/predict", files=files).json()
        assert [r.get("status") for r in body["results"]] == [None, 422]
        assert decodes == ["a.png"]  # b.png failed on its header


def test_admitted_images_are_decoded_at_reduced_size(tiny_ckpt, monkeypatch) -> None:
    """A 3000 x 2000 upload reaches the model and the overlay as 1024 x 683, never at full size."""
    yy, xx = np.mgrid[0:2000, 0:3000]
    img = (128 + 60 * np.sin(xx / 97.0) * np.cos(yy / 53.0)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    app = create_app(tiny_ckpt, settings())
    engine = app.state.engine
    shapes: list[tuple[int, int]] = []
    real = engine.explain

    async def spy(grays, method):
        shapes.extend(g.shape for g in grays)
        return await real(grays, method)

    monkeypatch.setattr(engine, "explain", spy)
    with TestClient(app) as c:
        r = c.post("/api/explain", files=one("big.png", buf.getvalue()))
    assert r.status_code == 200, r.text
    assert shapes == [(683, 1024)]
    ex = r.json()["explanation"]
    assert (ex["width"], ex["height"]) == (1024, 683)
    # The same probability, within rounding, as the full-resolution file through the CLI's Predictor.
    full = Predictor(tiny_ckpt, device="cpu", precision="fp32")
    x = full.batch_tensor([read_image_bytes(buf.getvalue())])
    assert r.json()["prob_pneumonia"] == pytest.approx(float(full.probabilities(x)[0]), abs=0.01)


def test_slow_body_gets_408(tiny_ckpt) -> None:
    app = create_app(tiny_ckpt, settings(body_timeout=0.3))
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\nContent-Type: image/png\r\n\r\n'

    consumed = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal consumed
        consumed += 1
        if consumed == 1:
            return {"type": "http.request", "body": head, "more_body": True}
        await asyncio.sleep(30)  # a client trickling its body
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    t0 = time.monotonic()
    asyncio.run(app(scope, receive, send))
    elapsed = time.monotonic() - t0
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 408 and "--body-timeout" in json.loads(body)["error"]
    assert (b"connection", b"close") in start["headers"]
    assert elapsed < 5  # cut off at the deadline, not after the client's 30 s


def test_a_normal_body_is_not_affected_by_the_deadline(tiny_ckpt, test_images) -> None:
    app = create_app(tiny_ckpt, settings(body_timeout=5))
    data = test_images[0].read_bytes()
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
            + data + b"\r\n--b--\r\n")
    status, text, _ = _asgi_post(app, "/api/predict", [body[:100], body[100:]], {
        "content-type": "multipart/form-data; boundary=b"})
    assert status == 200, text


@pytest.mark.parametrize("path", ["/docs", "/openapi.json"])
def test_docs_need_the_key_unless_public(tiny_ckpt, path) -> None:
    with TestClient(create_app(tiny_ckpt, settings(api_key="k3y"))) as c:
        assert "API key" in error_of(c.get(path), 401)
        assert c.get(path, headers={"X-API-Key": "k3y"}).status_code == 200
        assert c.get("/healthz").status_code == 200
    with TestClient(create_app(tiny_ckpt, settings(api_key="k3y", public_docs=True))) as c:
        assert c.get(path).status_code == 200
        error_of(c.get("/api/model"), 401)  # only the docs became public
    with TestClient(create_app(tiny_ckpt, settings())) as c:
        assert c.get(path).status_code == 200  # no key configured: nothing to require


def test_budget_settings_are_validated_and_reach_uvicorn(run_cli, tiny_ckpt, monkeypatch) -> None:
    with pytest.raises(ConfigError, match="--max-inflight-megapixels"):
        ServeSettings(max_request_megapixels=600, max_inflight_megapixels=500).validate()
    for flag in ("--max-request-megapixels", "--max-inflight-megapixels", "--body-timeout", "--max-inflight-upload-mb"):
        with pytest.raises(ConfigError, match=flag):
            ServeSettings(**{flag[2:].replace("-", "_"): 0}).validate()
    with pytest.raises(ConfigError, match="--max-connections"):
        ServeSettings(max_connections=0).validate()
    with pytest.raises(ConfigError, match="--max-inflight-upload-mb"):
        ServeSettings(max_upload_mb=100, max_inflight_upload_mb=50).validate()
    seen = stop_once_listening(monkeypatch)
    result = run_cli("serve", "--checkpoint", tiny_ckpt, "--device", "cpu", "--precision", "fp32", "--port", "0",
                     "--max-connections", "12", "--body-timeout", "7", "--max-request-megapixels", "50",
                     "--max-inflight-megapixels", "80", "--public-docs")
    assert result.exit_code == 0, result.output
    server, status = seen[0]
    assert status == 200 and server.config.limit_concurrency == 12
    s = server.config.app.state.settings
    assert (s.body_timeout, s.max_request_pixels, s.max_inflight_pixels) == (7, 50_000_000, 80_000_000)
    assert s.public_docs


def test_upload_bytes_held_by_all_requests_are_budgeted(tiny_ckpt) -> None:
    import httpx2

    app = create_app(tiny_ckpt, settings(max_upload_mb=1, max_inflight_upload_mb=1.2))
    gate = _Gate(app.state.engine)
    noise = io.BytesIO()  # incompressible: ~0.71 MB on the wire
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (840, 840), dtype=np.uint8)).save(noise, format="PNG")
    data = noise.getvalue()
    assert 0.7e6 < len(data) < 0.75e6  # one fits in the 1.2 MB budget, two do not

    async def main():
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://t") as c,
        ):
            first = asyncio.create_task(c.post("/api/predict", files=one("first.png", data)))
            while not gate.entered.is_set():  # its 0.7 MB are held until it is answered
                await asyncio.sleep(0.005)
            second = await c.post("/api/predict", files=one("second.png", data))
            gate.release.set()
            first = await first
            third = await c.post("/api/predict", files=one("third.png", data))  # the bytes were released
            return first, second, third

    first, second, third = asyncio.run(main())
    assert first.status_code == 200 and third.status_code == 200
    msg = error_of(second, 503)
    assert "--max-inflight-upload-mb" in msg and second.headers["retry-after"] == "1"


def test_large_images_leave_a_decode_thread_free_for_small_ones(tiny_ckpt) -> None:
    import threading

    from pneumoscope.serving.engine import LARGE_IMAGE_PIXELS, InferenceEngine

    engine = InferenceEngine(Predictor(tiny_ckpt, device="cpu", precision="fp32"), workers=2)
    release = threading.Event()
    running: list[str] = []

    def work(name: str) -> str:
        running.append(name)
        if name.startswith("large"):
            assert release.wait(30)
        return name

    async def main():
        await engine.start()
        try:
            large = [asyncio.create_task(engine.run_cpu_sized(LARGE_IMAGE_PIXELS + 1, work, f"large{i}"))
                     for i in range(3)]
            await asyncio.sleep(0.2)
            small = await asyncio.wait_for(engine.run_cpu_sized(1_000_000, work, "small"), 10)
            started = list(running)
            release.set()
            return small, started, await asyncio.gather(*large)
        finally:
            release.set()
            await engine.stop()

    small, started, large = asyncio.run(main())
    assert small == "small" and large == ["large0", "large1", "large2"]
    assert started == ["large0", "small"]  # one large decode at a time; the other thread served the small one
