"""PACS round trip: dcmsend into Orthanc -> routed to `pneumoscope listen` -> SR and overlay back in Orthanc.

Starts a throw-away Orthanc (loopback ports, own storage, the routing Lua script of
docs/how-to/pacs.md) and a DICOM node in this process, sends N synthetic radiographs (one study
each) into Orthanc with DCMTK's dcmsend as fast as it takes them, and times, per image, from just
before its dcmsend to the moment Orthanc lists its SR. Prints images per minute over the whole
burst and latency p50/p95 (which include queueing behind the burst: the node scores one image at
a time), with the CPU model and flags.

    PYTHONPATH=src python bench/pacs_roundtrip.py                       # 100 images, VGG19 at 256 px
    PYTHONPATH=src python bench/pacs_roundtrip.py --checkpoint runs/x/best.ckpt --n 100

Without --checkpoint a random-weight VGG19 (the default architecture, 256 px) is saved to a temp
folder: scoring costs the same whatever the weights. Needs orthanc, orthanc-dicomweb, dcmtk.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the Orthanc launcher the integration tests use

from orthanc_util import Orthanc, missing_tools  # noqa: E402

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def cpu_description() -> str:
    from pneumoscope.runtime import cpu_summary

    return cpu_summary()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_checkpoint(folder: Path, arch: str, size: int) -> Path:
    import pneumoscope
    from pneumoscope.checkpoint import save_checkpoint
    from pneumoscope.data.transforms import Preprocessing
    from pneumoscope.models import get_model_info

    model = pneumoscope.create_model(arch, weights=None)
    return save_checkpoint(folder / f"{arch}.ckpt", model, architecture=arch, preprocessing=Preprocessing(size),
                           target_layer=get_model_info(arch).default_layer)


class SrWatcher(threading.Thread):
    """Follows Orthanc's change log; records when each study's SR arrived."""

    def __init__(self, pacs: Orthanc) -> None:
        super().__init__(daemon=True)
        self.pacs, self.arrived, self.stop = pacs, {}, threading.Event()
        self.since = requests.get(f"{pacs.url}/changes?last", timeout=10).json().get("Last", 0)

    def run(self) -> None:
        while not self.stop.is_set():
            r = requests.get(f"{self.pacs.url}/changes?since={self.since}&limit=200", timeout=10).json()
            for change in r["Changes"]:
                if change["ChangeType"] == "NewInstance":
                    tags = requests.get(f"{self.pacs.url}/instances/{change['ID']}/simplified-tags", timeout=10).json()
                    if tags.get("SOPClassUID") == SR_CLASS:
                        self.arrived[tags["StudyInstanceUID"]] = time.monotonic()
            self.since = r["Last"]
            if not r["Changes"]:
                self.stop.wait(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, help="default: a random-weight --arch model")
    ap.add_argument("--arch", default="vgg19")
    ap.add_argument("--image-size", type=int, default=256, help="model input size of the default checkpoint")
    ap.add_argument("--n", type=int, default=100, help="radiographs to send")
    ap.add_argument("--pixels", type=int, default=1024, help="side of each synthetic radiograph")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    missing = missing_tools()
    if missing:
        sys.exit("needs " + ", ".join(missing))

    import torch

    from pneumoscope.dicomnode import DicomNode, NodeSettings
    from pneumoscope.dicomnode.synthetic import synthetic_radiograph
    from pneumoscope.inference import Predictor

    work = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    ckpt = args.checkpoint or default_checkpoint(work, args.arch, args.image_size)
    predictor = Predictor(ckpt, device=args.device, precision=args.precision)
    node_port = free_port()
    pacs = Orthanc(work / "orthanc", free_port(), free_port(), node_port).start()
    settings = NodeSettings(spool=work / "spool", send_to=[f"dimse://ORTHANC@127.0.0.1:{pacs.dicom_port}"],
                            port=node_port, device=args.device, precision=args.precision, retry_min=0.2, retry_max=2)
    node = DicomNode(settings, predictor)
    files, studies = [], []
    kinds = ("cr_mono1", "dx_jpeg", "sc_cr")
    for i in range(args.n):
        ds = synthetic_radiograph(kinds[i % 3], size=args.pixels, seed=i, label=i % 2, patient_id=f"BENCH{i:04d}")
        path = work / "in" / f"{i:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        studies.append(ds.StudyInstanceUID)
    print(f"CPU: {cpu_description()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {predictor.ckpt.architecture} at "
          f"{predictor.ckpt.preprocessing.image_size} px, precision {predictor.precision} on {predictor.device}; "
          f"{args.n} radiographs of {args.pixels}x{args.pixels} (CR MONOCHROME1 / DX JPEG / SC-as-CR)")
    watcher = SrWatcher(pacs)
    watcher.start()
    sent: dict[str, float] = {}
    try:
        with node:
            t_start = time.monotonic()
            for path, study in zip(files, studies):
                sent[study] = time.monotonic()
                subprocess.run(["dcmsend", "-aet", "MODALITY", "-aec", "ORTHANC", "127.0.0.1", str(pacs.dicom_port),
                                str(path)], check=True, capture_output=True)
            t_sent = time.monotonic()
            deadline = time.monotonic() + 60 * 60
            while len(watcher.arrived) < args.n and time.monotonic() < deadline:
                time.sleep(0.2)
            t_end = max(watcher.arrived.values()) if watcher.arrived else time.monotonic()
    finally:
        watcher.stop.set()
        pacs.stop()
    lat = np.array([watcher.arrived[s] - sent[s] for s in studies if s in watcher.arrived])
    print(f"sent {args.n} with dcmsend in {t_sent - t_start:.1f} s; {len(lat)} SRs back in Orthanc")
    print(f"throughput: {len(lat) / (t_end - t_start) * 60:.1f} images/minute "
          f"(first dcmsend to last SR: {t_end - t_start:.1f} s)")
    first = watcher.arrived.get(studies[0], float("nan")) - sent[studies[0]]
    print(f"latency dcmsend -> SR in Orthanc: p50 {np.percentile(lat, 50):.2f} s, p95 {np.percentile(lat, 95):.2f} s "
          f"(queued behind the burst); first image {first:.2f} s (nothing queued ahead)")


if __name__ == "__main__":
    main()
