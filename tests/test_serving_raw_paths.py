"""Request paths as a client puts them on the wire, un-normalised, against uvicorn on a socket.

httpx (and so Starlette's TestClient) resolves ``..`` segments before sending, so a traversal
test through it only ever asks for ``/app.py``. ``http.client`` sends the path as given.
"""

from __future__ import annotations

import http.client
import json

import pytest
from conftest import serve_in_thread

from pneumoscope.serving import ServeSettings, create_app

SOURCE_MARKERS = (b"def create_app", b"import ", b"__future__")

TRAVERSALS = [
    "/static/../app.py",
    "/static/../../serving/app.py",
    "/static/..%2fapp.py",
    "/static/%2e%2e/app.py",
    "/static/%2e%2e%2fapp.py",
    "/static/..%5capp.py",
    "/static/./../app.py",
    "/static//../app.py",
]


@pytest.fixture(scope="module")
def server(tiny_ckpt):
    with serve_in_thread(create_app(tiny_ckpt, ServeSettings(device="cpu", precision="fp32"))) as addr:
        yield addr


def raw_get(addr: tuple[str, int], path: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*addr, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=False, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.getheader("content-type", ""), r.read()
    finally:
        conn.close()


def test_the_static_route_serves_its_files_over_the_socket(server) -> None:
    status, ctype, body = raw_get(server, "/static/viewer.js")
    assert status == 200 and ctype.startswith("text/javascript") and body


@pytest.mark.parametrize("path", TRAVERSALS)
def test_raw_traversal_path_is_refused(server, path) -> None:
    status, ctype, body = raw_get(server, path)
    assert status in (400, 404), (path, status, body[:200])
    assert not any(m in body for m in SOURCE_MARKERS), body[:200]
    assert ctype.startswith("application/json")
    assert set(json.loads(body)) == {"error"}
