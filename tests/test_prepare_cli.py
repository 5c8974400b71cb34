"""`pneumoscope prepare` on the command line: option checks up front, and Ctrl-C / SIGTERM mid-write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import assert_user_error

SRC = Path(__file__).resolve().parents[1] / "src"


def _png(path: Path, side: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    Image.fromarray(noise, mode="L").save(path)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """Kaggle layout, 12 NORMAL patients and 3 PNEUMONIA ones in train/."""
    root = tmp_path_factory.mktemp("prep") / "data"
    for i in range(12):
        _png(root / "train" / "NORMAL" / f"n{i}.png", 40, i)
    for i in range(3):
        _png(root / "train" / "PNEUMONIA" / f"p{i}.png", 40, 100 + i)
    return root


@pytest.mark.parametrize("args, needle", [
    (["--val-fraction", "0"], "--val-fraction must be between 0 and 1"),
    (["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    (["--val-fraction", "-0.2"], "--val-fraction must be between 0 and 1"),
    (["--chunk-bytes", "banana"], "such as 64MB"),
    (["--chunk-bytes", "0MB"], "at least 1B"),
    (["--image-size", "2"], "the smallest input any model takes"),
    (["--seed", "-1"], "--seed must be an integer from 0"),
])
def test_bad_options_are_refused_up_front(run_cli, small_data, tmp_path, args, needle):
    out = tmp_path / "STORE"
    assert_user_error(run_cli("prepare", small_data, "--out", out, "--no-progress", *args), needle)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a partial folder


def test_chunk_bytes_takes_litdata_sizes():
    from pneumoscope.data.store import parse_chunk_bytes

    assert parse_chunk_bytes("64MB") == 64_000_000
    assert parse_chunk_bytes(" 1.5 gb ") == 1_500_000_000
    assert parse_chunk_bytes("512k") == 512_000
    assert parse_chunk_bytes(4096) == 4096


def test_too_few_patients_names_the_class_and_the_dataset(run_cli, small_data, tmp_path):
    result = run_cli("prepare", small_data, "--out", tmp_path / "STORE", "--no-progress", "--image-size", "32")
    assert_user_error(result, str(small_data), "class PNEUMONIA has only 3 patient(s)")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- interrupts


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory) -> Path:
    """Enough big noise PNGs (hard links of one, --val-source val) for a write of several seconds."""
    root = tmp_path_factory.mktemp("slow") / "data"
    first = root / "train" / "NORMAL" / "img-0.png"
    _png(first, 1024, 0)
    for split, n in (("train", 600), ("val", 20)):
        for label in ("NORMAL", "PNEUMONIA"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                if not (folder / f"img-{i}.png").exists():
                    os.link(first, folder / f"img-{i}.png")
    return root


def _session_processes(sid: int) -> list[str]:
    """'pid state cmd' of every process (zombies too) still in session ``sid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:
            found.append(f"{entry.name} {fields[0]} {stat.split('(', 1)[1].rsplit(')', 1)[0]}")
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc")
@pytest.mark.parametrize("sig, to_group, code, said", [
    (signal.SIGINT, True, 130, "interrupted"),  # Ctrl-C: the terminal signals the whole group
    (signal.SIGTERM, False, 143, "interrupted by SIGTERM"),  # kill PID, as a scheduler does
])
def test_a_signal_mid_write_kills_the_workers_and_leaves_nothing(slow_data, tmp_path, sig, to_group, code, said):
    out = tmp_path / "STORE"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pneumoscope", "prepare", str(slow_data), "--out", str(out), "--image-size", "64",
         "--val-source", "val", "--no-jpeg-draft", "--workers", "2", "--chunk-bytes", "16KB", "--no-progress"],
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 60
        # Mid-write: LitData has written chunks of the train subset, far from its end.
        while not list(tmp_path.glob(".STORE.partial-*/train/chunk-*.bin")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code, err[-3000:]
    assert said in err.splitlines()[-1] and "Traceback" not in err, err[-3000:]
    assert list(tmp_path.iterdir()) == []  # neither STORE nor .STORE.partial-*
    deadline = time.time() + 5
    while (left := _session_processes(proc.pid)) and time.time() < deadline:
        time.sleep(0.1)
    assert left == [], left  # no decoding worker left running (or unreaped)
