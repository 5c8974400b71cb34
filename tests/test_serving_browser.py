"""The viewer page in a real browser: Playwright driving Debian's Chromium against a live server.

Skipped, with the reason, where /usr/bin/chromium or the playwright package is missing
(``.ci/run`` installs Chromium with apt). Set ``PNEUMOSCOPE_SCREENSHOT_DIR`` to keep the
screenshot somewhere other than the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require, serve_in_thread
from PIL import Image

from pneumoscope.serving import ServeSettings, create_app

CHROMIUM = Path("/usr/bin/chromium")
# Without these, Chromium in a sandbox-less container tries to reach Google's services.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium; .ci/run does)"),
]


@pytest.fixture
def live_server(tiny_ckpt):
    """The app served by uvicorn on a free loopback port, in a thread."""
    with serve_in_thread(create_app(tiny_ckpt, ServeSettings(device="cpu", precision="fp32"))) as (host, port):
        yield f"http://{host}:{port}"


def test_viewer_upload_shows_label_and_overlay(live_server, tiny_ckpt, synth_root, tmp_path) -> None:
    sync_api = require("playwright.sync_api", "playwright")
    from test_serving import dicom_bytes

    from pneumoscope.inference import Predictor

    base = live_server
    phantoms = sorted((synth_root / "test").rglob("*.png"))
    first = phantoms[0]
    ref = Predictor(tiny_ckpt, device="cpu", precision="fp32").predict([first])[0]
    expected = {"label": ref.label, "prob_pneumonia": ref.prob_pneumonia, "threshold": ref.threshold}
    dcm = tmp_path / "phantom.dcm"
    dcm.write_bytes(dicom_bytes(np.asarray(Image.open(phantoms[1]).convert("L")), PatientID="P1"))

    console_errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, accept_downloads=True, viewport={"width": 1200, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            # The page runs under its own Content-Security-Policy (no bypass_csp): predicates are
            # passed as functions, which CDP calls without eval.
            page.goto(base + "/")
            assert "not a diagnosis" in page.inner_text("#disclaimer")
            assert "paediatric" in page.inner_text("#disclaimer")
            page.wait_for_function("() => document.getElementById('model').textContent.startsWith('Model vgg_tiny')")
            from pneumoscope.explanation.cam import METHODS

            assert page.eval_on_selector_all("#method option", "os => os.map(o => o.value)") == list(METHODS)

            page.set_input_files("#file", str(first))
            page.wait_for_function("() => document.getElementById('label').textContent.length > 0", timeout=30_000)
            assert page.inner_text("#label") == expected["label"]
            assert page.inner_text("#prob") == f"{expected['prob_pneumonia']:.3f}"
            assert page.inner_text("#threshold") == f"{expected['threshold']:.3f}"
            page.wait_for_function(
                "() => ['base', 'heat'].every(id => document.getElementById(id).complete && "
                "document.getElementById(id).naturalWidth > 0)"
            )
            w, h = Image.open(first).size
            assert page.eval_on_selector("#heat", "i => [i.naturalWidth, i.naturalHeight]") == [w, h]

            page.fill("#opacity", "0.7")
            assert page.eval_on_selector("#heat", "i => i.style.opacity") == "0.7"
            page.click("#toggle")
            assert page.is_hidden("#heat")
            page.click("#toggle")
            assert page.is_visible("#heat")

            with page.expect_download() as info:
                page.click("#download")
            saved = tmp_path / "download.png"
            info.value.save_as(saved)
            assert info.value.suggested_filename == f"{first.stem}.overlay.png"
            assert Image.open(saved).size == (w, h)

            # Several files, one of them DICOM and one not an image: a table with a row each.
            bad = tmp_path / "notes.png"
            bad.write_text("not an image\n" * 10)
            page.set_input_files("#file", [str(phantoms[2]), str(dcm), str(bad)])
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('#results tbody tr td:nth-child(4)'))"
                ".filter(td => td.textContent === 'done' || td.classList.contains('error')).length === 4",
                timeout=30_000,
            )
            rows = page.eval_on_selector_all("#results tbody tr", "rs => rs.map(r => r.innerText)")
            assert len(rows) == 4 and page.is_visible("#results")
            assert "phantom.dcm" in rows[2] and "done" in rows[2]
            assert "notes.png" in rows[3] and "not a recognised image" in rows[3]
            page.click("#results tbody tr:nth-child(3)")
            page.wait_for_function("() => document.getElementById('filename').textContent === 'phantom.dcm'")

            shot = tmp_path / "viewer.png"
            page.screenshot(path=str(shot), full_page=True)
            assert Image.open(shot).size[0] > 0
            keep = os.environ.get("PNEUMOSCOPE_SCREENSHOT_DIR")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy2(shot, Path(keep) / "viewer.png")
        finally:
            context.close()
    assert console_errors == [] or all("422" in e for e in console_errors), console_errors
