"""Shared fixtures: a tiny synthetic dataset, a tiny trained run, bad-file writers, a CLI runner.

Everything here is sized for a 2-core CPU: ``vgg_tiny`` at 32 px on ~48 images, one epoch
per stage. Expensive fixtures are session-scoped; tests that modify their output must copy it
first (``shutil.copytree``) so other tests see the pristine version.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pytest
from PIL import Image

# --------------------------------------------------------------------------- constants

TINY_BACKBONE = "vgg_tiny"
TINY_IMAGE_SIZE = 32

# Two stages like the default config, but with layer names vgg_tiny has.
TINY_CONFIG_YAML = f"""\
data:
  image_size: {TINY_IMAGE_SIZE}
  val_source: val
model:
  backbone: {TINY_BACKBONE}
  weights: none
train:
  batch_size: 16
  seed: 0
  precision: fp32
  device: cpu
  stages:
    - name: stage1
      epochs: 1
      lr: 1.0e-3
      trainable_from: null
    - name: stage2
      epochs: 1
      lr: 1.0e-3
      trainable_from: block3_conv1
"""


# --------------------------------------------------------------------------- test-only dependencies


def require(module: str, package: str):
    """Import ``module`` of a test-only dependency (``.[test]`` in pyproject.toml), or skip the
    test with a reason that names the missing package and how to install it: never pass silently."""
    return pytest.importorskip(
        module, reason=f"{package} is not installed: pip install -e '.[test]' (or pip install {package})"
    )


# --------------------------------------------------------------------------- CLI helpers


@pytest.fixture(scope="session")
def cli_app():
    from pneumoscope.cli import app

    return app


@pytest.fixture
def run_cli(cli_app) -> Callable[..., object]:
    """``run_cli("train", "--data", path, ...)`` → typer Result (stdout/stderr kept separate).

    Arguments are converted with ``str``. Exceptions are caught by the runner and left on
    ``result.exception`` so tests can assert "no traceback" precisely.
    """
    from typer.testing import CliRunner

    runner = CliRunner()

    def _run(*args: object) -> object:
        return runner.invoke(cli_app, [str(a) for a in args])

    return _run


def assert_user_error(result, *needles: str, exit_code: int = 2) -> str:
    """Assert the CLI's user-error contract; return the error line.

    Exit code 2 (by default), exactly one ``error:`` line on stderr containing every needle,
    and no traceback / uncaught exception.
    """
    out = result.output
    assert result.exit_code == exit_code, f"exit {result.exit_code}, output:\n{out}\nexception: {result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, f"expected one error line, got:\n{result.stderr}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def tiny_train_args(data: Path, out: Path, config: Path, *extra: object) -> list[object]:
    """Arguments for a fast ``pneumoscope train`` of vgg_tiny (one epoch per stage)."""
    return [
        "train", "--data", data, "--config", config, "--backbone", TINY_BACKBONE, "--weights", "none",
        "--image-size", TINY_IMAGE_SIZE, "--epochs", "1", "--precision", "fp32", "--device", "cpu",
        "--out", out, *extra,
    ]


# --------------------------------------------------------------------------- data fixtures


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A 48-image synthetic dataset (Kaggle layout train/val/test + masks/), 48 px, read-only by convention."""
    from pneumoscope.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    synth_dataset(root, n=48, size=48, seed=0, difficulty=0.2)
    return root


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    """A YAML config for vgg_tiny with two 1-epoch stages."""
    p = tmp_path_factory.mktemp("config") / "tiny.yaml"
    p.write_text(TINY_CONFIG_YAML, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synth_root, tiny_config) -> Path:
    """A finished vgg_tiny run folder (best.ckpt, config.yaml, metrics.csv, summary.json, state/)."""
    from typer.testing import CliRunner

    from pneumoscope.cli import app

    run = tmp_path_factory.mktemp("run") / "tiny"
    args = tiny_train_args(synth_root, run, tiny_config, "--val-source", "val")
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"tiny training failed:\n{result.output}\n{result.exception!r}"
    return run


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_run) -> Path:
    return tiny_run / "best.ckpt"


@pytest.fixture
def test_images(synth_root) -> list[Path]:
    """The synthetic test split's image files, sorted."""
    return sorted((synth_root / "test").rglob("*.png"))


@pytest.fixture
def copy_images(tmp_path, synth_root) -> Callable[[int], Path]:
    """``copy_images(k)`` → a fresh folder with k images from the synthetic test split."""

    def _copy(k: int, name: str = "inputs") -> Path:
        src = sorted((synth_root / "test").rglob("*.png"))[:k]
        dst = tmp_path / name
        dst.mkdir()
        for p in src:
            shutil.copy2(p, dst / f"{p.parent.name}-{p.name}")
        return dst

    return _copy


# --------------------------------------------------------------------------- bad files


def write_zero_byte(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_text_as_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image, just some text\n" * 8, encoding="utf-8")
    return path


def jpeg_bytes(size: int = 48, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_truncated_jpeg(path: Path) -> Path:
    """A valid JPEG cut in half: the header parses, the decode fails."""
    data = jpeg_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


def write_dicom_without_pixels(path: Path) -> Path:
    """A well-formed DICOM file (preamble, DICM, file meta) with no PixelData element."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "TEST"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_random_bytes(path: Path, n: int = 4096, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


BAD_FILE_WRITERS: dict[str, Callable[[Path], Path]] = {
    "zero_byte": write_zero_byte,
    "text_as_jpeg": write_text_as_image,
    "truncated_jpeg": write_truncated_jpeg,
    "dicom_no_pixels": write_dicom_without_pixels,
}


@pytest.fixture
def bad_file(tmp_path) -> Callable[[str, str], Path]:
    """``bad_file(kind, name)`` writes one of BAD_FILE_WRITERS' kinds to ``tmp_path/bad/name``."""

    def _make(kind: str, name: str | None = None) -> Path:
        default = "x.dcm" if kind == "dicom_no_pixels" else "x.jpeg"
        return BAD_FILE_WRITERS[kind](tmp_path / "bad" / (name or default))

    return _make


def copy_tree(src: Path, dst: Path, ignore: Sequence[str] = ()) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*ignore) if ignore else None)
    return dst


# --------------------------------------------------------------------------- a live server


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[tuple[str, int]]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields (host, port).

    For what an in-process client cannot show: the bytes a real client puts on the wire
    (httpx normalises ``/static/../x`` to ``/x`` before sending).
    """
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
