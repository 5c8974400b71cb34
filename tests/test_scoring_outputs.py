"""What ``predict``, ``explain`` and ``evaluate`` write, and how they refuse or stop.

Bad ``--out`` paths are refused before any work with one line and nothing created; an explanation
folder holding another run is not mixed into; failed inputs are counted as failed; a SIGTERM stops
a run like Ctrl-C does (part files kept for ``--resume``), with exit status 143.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_text_as_image, write_zero_byte
from test_scoring import _env, _inputs, _wait_for_parts

from pneumoscope.scoring.parts import parts_folder


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_error_line(result, path: object, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]


# --------------------------------------------------------------------------- bad --out paths


@pytest.mark.parametrize("case", ["predict-folder", "predict-parent-is-file", "predict-txt", "predict-no-suffix",
                                  "predict-proc", "explain-file", "explain-parent-is-file", "explain-proc",
                                  "predict-explain-file", "evaluate-file", "evaluate-parent-is-file"])
def test_a_bad_out_is_refused_up_front_and_creates_nothing(run_cli, tmp_path, case):
    imgs = _inputs(tmp_path / "imgs", 2)
    a_file = imgs / "img-000.png"
    # A checkpoint that does not exist: the path is refused before the model is even looked for.
    ckpt = ("--checkpoint", tmp_path / "no-such.ckpt")
    command, out, words = {
        "predict-folder": ("predict", imgs, ("is a folder", ".csv, .json or .parquet")),
        "predict-parent-is-file": ("predict", a_file / "p.csv", (f"{a_file} is a file, not a folder",)),
        "predict-txt": ("predict", tmp_path / "p.txt", ("unknown table format .txt", ".csv, .json or .parquet")),
        "predict-no-suffix": ("predict", tmp_path / "preds", ("unknown table format (no suffix)",)),
        "predict-proc": ("predict", Path("/proc/preds.csv"), ("cannot create files in /proc",)),
        "explain-file": ("explain", a_file, ("is a file", "expected a folder")),
        "explain-parent-is-file": ("explain", a_file / "cams", (f"{a_file} is a file, not a folder",)),
        "explain-proc": ("explain", Path("/proc/cams"), ("cannot create files in /proc",)),
        "predict-explain-file": ("predict --explain", a_file, ("is a file", "expected a folder")),
        "evaluate-file": ("evaluate", a_file, ("is a file", "expected a folder")),
        "evaluate-parent-is-file": ("evaluate", a_file / "eval", (f"{a_file} is a file, not a folder",)),
    }[case]
    if str(out).startswith("/proc") and not Path("/proc").is_dir():
        pytest.skip("no /proc here")
    before = _tree(tmp_path)
    if command == "evaluate":
        r = run_cli("evaluate", *ckpt, "--data", imgs, "--out", out)
    elif command == "predict --explain":
        r = run_cli("predict", imgs, *ckpt, "--out", tmp_path / "p.csv", "--explain", out)
    else:
        r = run_cli(command, imgs, *ckpt, "--out", out, "--no-progress")
    _one_error_line(r, out, *words)
    assert _tree(tmp_path) == before  # no part files, no folders, no probe left


def test_predict_method_without_explain_is_refused(run_cli, tmp_path):
    imgs = _inputs(tmp_path / "imgs", 1)
    r = run_cli("predict", imgs, "--checkpoint", tmp_path / "no-such.ckpt", "--method", "layercam")
    assert r.exit_code == 2 and "--method" in r.stderr and "--explain" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1


# --------------------------------------------------------------------------- runs that would mix


def test_explain_refuses_a_folder_holding_another_run(run_cli, tiny_ckpt, tmp_path):
    imgs = _inputs(tmp_path / "imgs", 3)
    cams = tmp_path / "cams"
    common = ("--checkpoint", tiny_ckpt, "--device", "cpu", "--precision", "fp32", "--no-progress")
    first = run_cli("explain", imgs, *common, "--out", cams)
    assert first.exit_code == 0, first.output
    written = _tree(cams)
    again = run_cli("explain", imgs / "img-001.png", *common, "--out", cams)
    _one_error_line(again, cams, "not empty", "--resume")
    assert _tree(cams) == written and not parts_folder(cams).exists()
    # An empty folder is fine (made beforehand, as scripts do).
    (tmp_path / "empty").mkdir()
    assert run_cli("explain", imgs, *common, "--out", tmp_path / "empty").exit_code == 0
    # --resume continues the finished run: nothing to redo.
    resumed = run_cli("explain", imgs, *common, "--out", cams, "--resume")
    assert resumed.exit_code == 0 and "scored 0 of 3 inputs; 3 already written" in resumed.stderr, resumed.stderr


# --------------------------------------------------------------------------- counting failures


def test_failed_inputs_are_counted_as_failed_and_no_lightning_warning_leaks(run_cli, tiny_ckpt, tmp_path):
    bad = tmp_path / "bad"
    write_text_as_image(bad / "text.png")
    write_zero_byte(bad / "empty.png")
    common = ("--checkpoint", tiny_ckpt, "--device", "cpu", "--precision", "fp32", "--no-progress")
    r = run_cli("predict", bad, *common)
    assert r.exit_code == 1, r.output
    assert "returned None" not in r.stderr and "warning" not in r.stderr, r.stderr
    assert "scored 0 of 2 inputs, 2 failed" in r.stderr and r.stderr.count("error: ") == 2, r.stderr
    good = _inputs(tmp_path / "good", 3)
    r = run_cli("predict", good, bad, *common, "--out", tmp_path / "p.csv")
    assert r.exit_code == 1 and "scored 3 of 5 inputs, 2 failed" in r.stderr, r.stderr
    r = run_cli("explain", good, bad, *common, "--out", tmp_path / "cams")
    assert r.exit_code == 1 and "scored 3 of 5 inputs, 2 failed" in r.stderr, r.stderr
    assert "explained 3 of 5 images" in r.stderr and "warning" not in r.stderr


# --------------------------------------------------------------------------- SIGTERM


def test_sigterm_stops_after_a_batch_keeps_the_part_files_and_resumes(run_cli, tiny_ckpt, tmp_path):
    imgs = _inputs(tmp_path / "imgs", 400, size=64)
    cams = tmp_path / "cams"
    common = ("--checkpoint", tiny_ckpt, "--device", "cpu", "--precision", "fp32", "--no-progress")
    args = [sys.executable, "-m", "pneumoscope", "explain", str(imgs), *map(str, common), "--out", str(cams),
            "--batch-size", "2", "--part-rows", "2"]
    parts = parts_folder(cams)
    job = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_parts(job, parts, 120)
        sent = time.monotonic()
        job.send_signal(signal.SIGTERM)  # the process alone, as a scheduler's or container's stop sends it
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 143, stderr
    assert time.monotonic() - sent < 20, "SIGTERM was not acted on promptly"
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if "SIGTERM" in ln]
    assert len(lines) == 1 and str(parts) in lines[0] and "--resume" in lines[0], stderr
    assert parts.is_dir() and not (cams / "manifest.json").exists()
    import pyarrow.parquet as pq

    kept = {p for f in parts.glob("part-*.parquet") for p in pq.read_table(f).column("path").to_pylist()}
    assert 0 < len(kept) < 400
    resumed = run_cli("explain", imgs, *common, "--out", cams, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert f"scored {400 - len(kept)} of 400 inputs" in resumed.stderr, resumed.stderr
    man = json.loads((cams / "manifest.json").read_text())
    assert [e["path"] for e in man["images"]] == [str(p) for p in sorted(imgs.iterdir())]
    assert len(list(cams.glob("*.overlay.png"))) == 400 and not parts.exists()
