"""Take the documentation's screenshot of the web viewer (docs/assets/viewer.png).

Synthetic phantoms only (``pneumoscope synth``), never a real radiograph: three PNGs and one
of them wrapped as a DICOM (so the DICOM panel shows), served by the given checkpoint and
photographed in headless Chromium at 1280x800 with the DICOM selected, side by side.

    .venv/bin/python scripts/viewer_screenshot.py --checkpoint demo-out/run/best.ckpt

Needs /usr/bin/chromium and the playwright package (both used by the browser tests).
"""

from __future__ import annotations

import argparse
import io
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def phantom_dicom(png: Path) -> bytes:
    """The phantom as an 8-bit DX DICOM with a view position and a plausible pixel spacing."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(Image.open(png).convert("L"))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.PatientName, ds.PatientID = "Phantom^Synthetic", "PHANTOM-1"
    ds.PixelSpacing = [0.7, 0.7]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="A checkpoint trained on phantoms (the demo's).")
    parser.add_argument("--out", type=Path, default=Path("docs/assets/viewer.png"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import uvicorn
    from playwright.sync_api import sync_playwright

    from pneumoscope.data.synth import synth_dataset
    from pneumoscope.serving import ServeSettings, create_app

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "synth"
        synth_dataset(root, n=40, size=512, seed=args.seed, difficulty=0.3)
        normal = sorted((root / "test" / "NORMAL").glob("*.png"))
        pneumonia = sorted((root / "test" / "PNEUMONIA").glob("*.png"))
        dcm = Path(tmp) / "phantom-pa.dcm"
        dcm.write_bytes(phantom_dicom(pneumonia[-2]))
        uploads = [normal[0], pneumonia[-1], dcm, normal[1]]

        app = create_app(args.checkpoint, ServeSettings(device="cpu", precision="fp32"))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"http://127.0.0.1:{sock.getsockname()[1]}/")
                page.wait_for_function("() => document.getElementById('model').textContent.startsWith('Model ')")
                page.set_input_files("#file", [str(p) for p in uploads])
                page.wait_for_function(
                    "n => document.querySelectorAll('#results td.prob').length === n", arg=len(uploads), timeout=120_000)
                page.click("#results tbody tr:nth-child(3)")
                page.wait_for_function("() => document.getElementById('canvas').width === 512")
                page.click("#side")
                page.locator("body").click(position={"x": 2, "y": 2})  # no focus ring on a button
                page.wait_for_timeout(200)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
