"""The viewer page in a real browser: Playwright driving Debian's Chromium against a live server.

Skipped, with the reason, where /usr/bin/chromium or the playwright package is missing
(``.ci/run`` installs Chromium with apt). Screenshots of each viewport are kept in
``test-artifacts/viewer/`` (ignored by git; CI keeps the folder as an artifact), or in
``PNEUMOSCOPE_SCREENSHOT_DIR`` when set.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
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
ARTIFACTS = Path(os.environ.get("PNEUMOSCOPE_SCREENSHOT_DIR") or Path(__file__).resolve().parents[1] / "test-artifacts" / "viewer")
VIEWPORTS = {"1280x800": (1280, 800), "1920x1080": (1920, 1080), "390x844": (390, 844)}
LONG_NAME = "scan_" + "0123456789abcdef" * 12 + ".png"  # no spaces: it can only wrap where CSS lets it

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium; .ci/run does)"),
]


@contextmanager
def serving(ckpt: Path, **settings: object) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    app = create_app(ckpt, ServeSettings(device="cpu", precision="fp32", **settings))
    with serve_in_thread(app) as (host, port):
        yield f"http://{host}:{port}"


@pytest.fixture(scope="module")
def live_server(tiny_ckpt) -> Iterator[str]:
    with serving(tiny_ckpt) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    sync_api = require("playwright.sync_api", "playwright")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def files(synth_root, tmp_path_factory) -> dict[str, Path]:
    """Upload files: phantoms, a 1400x1100 phantom, a DICOM phantom and a bad file with a long name."""
    from test_serving import dicom_bytes

    out = tmp_path_factory.mktemp("uploads")
    phantoms = sorted((synth_root / "test").rglob("*.png"))
    big = out / "big_phantom.png"
    Image.open(phantoms[3]).convert("L").resize((1400, 1100), Image.BILINEAR).save(big)
    dcm = out / "phantom.dcm"
    dcm.write_bytes(dicom_bytes(
        np.asarray(Image.open(phantoms[1]).convert("L")), ViewPosition="AP", PixelSpacing=[0.15, 0.16],
        PatientName="Doe^Jane", PatientID="PID-4711",
    ))
    bad = out / LONG_NAME
    bad.write_text("not an image\n" * 10)
    return {"first": phantoms[0], "second": phantoms[2], "big": big, "dcm": dcm, "bad": bad}


@contextmanager
def viewer_page(browser, url: str, size: tuple[int, int], **context_args: object):
    """A fresh page on the viewer, its console errors collected; the model line loaded."""
    context = browser.new_context(viewport={"width": size[0], "height": size[1]}, accept_downloads=True, **context_args)
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        # The page runs under its own Content-Security-Policy (no bypass_csp): predicates are
        # passed as functions, which CDP calls without eval.
        page.goto(url + "/")
        page.wait_for_function("() => document.getElementById('model').textContent.startsWith('Model vgg_tiny')")
        yield page
    finally:
        context.close()
    # The bad file's 422 is logged by Chromium as a failed resource; nothing else may be.
    assert errors == [] or all("422" in e for e in errors), errors


def upload(page, paths: list[Path]) -> None:
    page.set_input_files("#file", [str(p) for p in paths])
    n = len(paths)
    page.wait_for_function(
        "n => document.querySelectorAll('#results tbody tr').length >= n && "
        "Array.from(document.querySelectorAll('#results tbody tr')).every(r => "
        "r.querySelector('td.error') || r.querySelector('td.prob'))",
        arg=n, timeout=30_000,
    )
    page.wait_for_function("() => !document.getElementById('viewer').hidden ? "
                           "document.getElementById('canvas').width > 0 : true")


def box(page, selector: str) -> dict[str, float]:
    b = page.locator(selector).first.bounding_box()
    assert b is not None, f"{selector} is not displayed"
    return b


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


def inside(inner: dict[str, float], outer: dict[str, float], tol: float = 0.5) -> bool:
    return (inner["x"] >= outer["x"] - tol and inner["y"] >= outer["y"] - tol
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + tol
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + tol)


def scale_and_shift(page) -> tuple[float, float, float]:
    """The main layer's transform as (scale, translate x, translate y), from the computed matrix."""
    m = page.eval_on_selector("#pane-main .layer", "e => getComputedStyle(e).transform")
    a, _, _, _, e, f = (float(v) for v in re.findall(r"-?[\d.e+-]+", m.split("(", 1)[1]))
    return a, e, f


CANVAS_SUM = """() => {
  const c = document.getElementById('canvas');
  return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.reduce((a, v) => a + v, 0);
}"""


def canvas_sum(page) -> int:
    """The sum of the main canvas's RGBA bytes: changes with any window/level that changes a pixel."""
    return page.evaluate(CANVAS_SUM)


IDENTICAL_TO_BASE = """() => {
  const base = document.getElementById('base'), shown = document.getElementById('canvas');
  const c = document.createElement('canvas');
  c.width = base.naturalWidth; c.height = base.naturalHeight;
  const ctx = c.getContext('2d');
  ctx.drawImage(base, 0, 0);
  const a = ctx.getImageData(0, 0, c.width, c.height).data;
  const b = shown.getContext('2d').getImageData(0, 0, shown.width, shown.height).data;
  return a.length === b.length && a.every((v, i) => v === b[i]);
}"""


# Touch pointers 1 and 2 go down 40 px apart about (x, y) and move to 80 px apart.
PINCH = """([x, y]) => {
  const pane = document.getElementById('pane-main');
  const fire = (type, id, dx) => pane.dispatchEvent(new PointerEvent(type, {
    pointerId: id, pointerType: 'touch', isPrimary: id === 1, button: type === 'pointermove' ? -1 : 0,
    clientX: x + dx, clientY: y, bubbles: true, cancelable: true }));
  fire('pointerdown', 1, -20); fire('pointerdown', 2, 20);
  fire('pointermove', 1, -40); fire('pointermove', 2, 40);
  fire('pointerup', 1, -40); fire('pointerup', 2, 40);
}"""


def current_row(page) -> int:
    return page.eval_on_selector_all("#results tbody tr", "rs => rs.findIndex(r => r.classList.contains('current'))")


def test_viewer_upload_shows_label_and_overlay(browser, live_server, tiny_ckpt, files, tmp_path) -> None:
    from pneumoscope.explanation.cam import METHODS
    from pneumoscope.inference import Predictor

    first = files["first"]
    ref = Predictor(tiny_ckpt, device="cpu", precision="fp32").predict([first])[0]
    with viewer_page(browser, live_server, (1200, 900)) as page:
        assert "not a diagnosis" in page.inner_text("#disclaimer")
        assert "paediatric" in page.inner_text("#disclaimer")
        assert page.eval_on_selector_all("#method option", "os => os.map(o => o.value)") == list(METHODS)

        upload(page, [first])
        assert page.inner_text("#label") == ref.label
        assert page.inner_text("#prob") == f"{ref.prob_pneumonia:.3f}"
        assert page.inner_text("#threshold") == f"{ref.threshold:.3f}"
        assert page.is_hidden("#dicom")  # a PNG has no DICOM panel
        page.wait_for_function(
            "() => ['base', 'heat'].every(id => document.getElementById(id).complete && "
            "document.getElementById(id).naturalWidth > 0)"
        )
        w, h = Image.open(first).size
        assert page.eval_on_selector("#heat", "i => [i.naturalWidth, i.naturalHeight]") == [w, h]
        assert page.eval_on_selector("#canvas", "c => [c.width, c.height]") == [w, h]

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

        # Side by side: the original pane appears beside the overlay pane, same size, no colour layer.
        page.click("#side")
        left, right = box(page, "#pane-original"), box(page, "#pane-main")
        assert left["x"] + left["width"] <= right["x"] and abs(left["width"] - right["width"]) < 1
        assert page.locator("#pane-original #heat").count() == 0
        assert canvas_sum(page) == page.evaluate(CANVAS_SUM.replace("'canvas'", "'canvas-original'"))
        page.keyboard.press("s")
        assert page.is_hidden("#pane-original")


def test_zoom_pan_window_level_and_keys(browser, live_server, files) -> None:
    with viewer_page(browser, live_server, (1280, 800)) as page:
        upload(page, [files["first"], files["big"], files["second"]])
        page.click("#results tbody tr:nth-child(2)")  # the 1400x1100 image
        page.wait_for_function("() => document.getElementById('canvas').width === 1024")
        fit, tx0, ty0 = scale_and_shift(page)
        pane = box(page, "#pane-main")
        cx, cy = pane["x"] + pane["width"] / 2, pane["y"] + pane["height"] / 2
        assert 0 < fit < 1  # the 1024-px display image is fitted into the smaller pane

        # Wheel up over the pane zooms in about the pointer.
        page.mouse.move(cx + 40, cy + 30)
        page.mouse.wheel(0, -400)
        page.wait_for_function("f => new DOMMatrix(getComputedStyle(document.querySelector('#pane-main .layer'))"
                               ".transform).a > f", arg=fit)
        zoomed, tx1, ty1 = scale_and_shift(page)
        assert zoomed > fit * 1.5
        # The image point under the pointer stays under it.
        u = (cx + 40 - pane["x"] - tx0) / fit
        assert abs(pane["x"] + tx1 + u * zoomed - (cx + 40)) < 1.0

        # Left-drag pans by the drag.
        page.mouse.down()
        page.mouse.move(cx - 60, cy - 10, steps=4)
        page.mouse.up()
        s2, tx2, ty2 = scale_and_shift(page)
        assert s2 == pytest.approx(zoomed, rel=1e-4) and tx2 - tx1 == pytest.approx(-100, abs=1) and ty2 - ty1 == pytest.approx(-40, abs=1)

        # Right-drag sets window/level: the rendered pixels change; the controls follow.
        before = canvas_sum(page)
        page.mouse.move(cx, cy)
        page.mouse.down(button="right")
        page.mouse.move(cx - 150, cy - 60, steps=5)
        page.mouse.up(button="right")
        assert page.input_value("#window") == "106" and page.input_value("#level") == "68"
        page.wait_for_function(f"() => ({CANVAS_SUM})() !== {before}")
        dragged = canvas_sum(page)
        assert dragged > before  # a narrower window centred below mid-grey brightens the image
        # The level control alone changes the pixels too.
        page.fill("#level", "160")
        page.wait_for_function(f"() => ({CANVAS_SUM})() < {dragged}")
        assert page.inner_text("#level-value") == "160"

        # Reset restores the pixels and the fitted view.
        page.click("#reset")
        page.wait_for_function(f"() => ({CANVAS_SUM})() === {before}")
        assert scale_and_shift(page) == pytest.approx((fit, tx0, ty0), rel=1e-4, abs=0.01)
        assert page.input_value("#window") == "256" and page.input_value("#level") == "128"
        # Window 256 / level 128 is the identity: the canvas holds exactly the server's display image.
        assert page.evaluate(IDENTICAL_TO_BASE)

        # Keyboard: up/down move through the results, 'o' toggles the overlay, '+' zooms, 'r' resets.
        page.locator("body").click(position={"x": 5, "y": 5})
        assert current_row(page) == 1
        page.keyboard.press("ArrowDown")
        assert current_row(page) == 2
        page.wait_for_function(f"() => document.getElementById('filename').textContent === '{files['second'].name}'")
        page.keyboard.press("ArrowDown")  # already the last: stays
        assert current_row(page) == 2
        page.keyboard.press("ArrowUp")
        page.keyboard.press("ArrowUp")
        assert current_row(page) == 0
        assert page.inner_text("#filename") == files["first"].name
        assert page.is_visible("#heat")
        page.keyboard.press("o")
        assert page.is_hidden("#heat") and page.inner_text("#toggle") == "Show overlay"
        page.keyboard.press("o")
        assert page.is_visible("#heat")
        page.wait_for_function("() => document.getElementById('canvas').width === 48")
        s_before = scale_and_shift(page)[0]
        page.keyboard.press("=")  # the '+' key without shift
        assert scale_and_shift(page)[0] == pytest.approx(s_before * 1.25, rel=1e-4)
        page.keyboard.press("r")
        assert scale_and_shift(page)[0] == pytest.approx(s_before, rel=1e-4)


def test_layout_never_overlaps_at_three_viewports(browser, live_server, files) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, size in VIEWPORTS.items():
        phone = size[0] < 500
        extra = {"is_mobile": True, "has_touch": True, "device_scale_factor": 2} if phone else {}
        with viewer_page(browser, live_server, size, **extra) as page:
            upload(page, [files["big"], files["bad"], files["second"]])
            page.click("#results tbody tr:nth-child(1)")
            page.wait_for_function("() => document.getElementById('canvas').width === 1024")
            page.wait_for_timeout(50)  # let the ResizeObserver's fit land
            results, stage = box(page, "#results-box"), box(page, "#stage")
            assert not overlaps(results, stage), (name, results, stage)
            assert not overlaps(box(page, ".left"), box(page, ".right")), name
            # The long error and the long file name wrap inside their row, inside the table.
            table = box(page, "#results")
            error_cell = box(page, "#results td.error")
            name_cell = box(page, "#results tbody tr:nth-child(2) td:first-child")
            error_row = box(page, "#results tbody tr:nth-child(2)")
            assert inside(error_cell, error_row) and inside(name_cell, error_row) and inside(error_row, table), name
            assert error_cell["height"] > box(page, "#results tbody tr:nth-child(1)")["height"], name  # it wrapped
            # No cell's text runs out of its cell (a label such as PNEUMONIA fits its column).
            spill = page.eval_on_selector_all("#results th, #results td", "cs => cs.filter(c => c.scrollWidth > c.clientWidth)"
                                              ".map(c => c.textContent)")
            assert spill == [], (name, spill)
            # Nothing pushes the page sideways, and the image pane stays on screen horizontally.
            assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), name
            assert stage["x"] >= 0 and stage["x"] + stage["width"] <= size[0] + 0.5, name
            if phone:
                assert results["y"] + results["height"] <= stage["y"], "phone: the list comes above the image"
            else:
                assert results["x"] + results["width"] <= stage["x"], "desktop: the list is left of the image"
                # The image fills the first screen without running below it.
                assert stage["height"] >= 320 and stage["y"] + stage["height"] <= size[1], (name, stage)
            if phone:
                # Two fingers spreading apart zoom in (no wheel or keys on a phone).
                fit = scale_and_shift(page)[0]
                page.evaluate(PINCH, [stage["x"] + stage["width"] / 2, stage["y"] + stage["height"] / 2])
                assert scale_and_shift(page)[0] == pytest.approx(fit * 2, rel=1e-3)
                page.evaluate("() => document.getElementById('reset').click()")
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
            assert Image.open(ARTIFACTS / f"{name}.png").size[0] == size[0] * (2 if phone else 1)


@pytest.mark.parametrize("show_patient", [False, True], ids=["default", "show-patient"])
def test_dicom_panel_and_csv(browser, tiny_ckpt, files, tmp_path, show_patient: bool) -> None:
    with serving(tiny_ckpt, show_patient=show_patient) as url, viewer_page(browser, url, (1280, 800)) as page:
        upload(page, [files["first"], files["dcm"], files["bad"]])
        page.click("#results tbody tr:nth-child(2)")
        page.wait_for_function("() => document.getElementById('filename').textContent === 'phantom.dcm'")
        assert page.is_visible("#dicom")
        assert page.inner_text("#d-modality") == "DX"
        assert page.inner_text("#d-view") == "AP"
        assert page.inner_text("#d-size") == "48 × 48 px"
        assert page.inner_text("#d-spacing") == "0.15 × 0.16 mm"
        panel = page.inner_text("#dicom")
        if show_patient:
            assert page.inner_text("#d-patient") == "Doe^Jane (ID PID-4711)"
            assert page.is_hidden("#d-patient-note")
        else:
            assert "Doe" not in panel and "PID-4711" not in panel and page.is_hidden("#d-patient")
            assert "--show-patient" in page.inner_text("#d-patient-note")
        page.keyboard.press("ArrowUp")
        assert page.is_hidden("#dicom")  # the PNG above has none

        with page.expect_download() as info:
            page.click("#download-all")
        assert info.value.suggested_filename == "pneumoscope-results.csv"
        saved = tmp_path / "results.csv"
        info.value.save_as(saved)
        text = saved.read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        table = page.eval_on_selector_all("#results tbody tr", "rs => rs.map(r => Array.from(r.cells, c => c.textContent))")
        assert [r["file"] for r in rows] == [files["first"].name, "phantom.dcm", LONG_NAME]
        for r, cells in zip(rows[:2], table[:2]):
            assert r["status"] == "done" and r["label"] == cells[1] and r["label"] in ("NORMAL", "PNEUMONIA")
            assert f"{float(r['prob_pneumonia']):.3f}" == cells[2] and r["model"].startswith("vgg_tiny-")
        assert rows[1]["modality"] == "DX" and rows[1]["view_position"] == "AP"
        assert (rows[1]["columns"], rows[1]["rows"], rows[1]["pixel_spacing_mm"]) == ("48", "48", "0.15 x 0.16")
        assert rows[0]["modality"] == ""
        assert rows[2]["status"] == "error" and "not a recognised image" in rows[2]["error"] and rows[2]["label"] == ""
        assert ("patient_name" in rows[0]) is show_patient
        if show_patient:
            assert rows[1]["patient_name"] == "Doe^Jane" and rows[1]["patient_id"] == "PID-4711"
        else:
            assert "Doe" not in text
