"""The smaller commands (synth, audit, calibrate, compact, manifest, explain-eval) refuse a bad
--out or --seed up front, in one line, before any work and without leaving anything behind."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer

from conftest import assert_user_error

import pneumoscope


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    return f


def _only(tmp_path, *names: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_negative_seeds_are_one_line_errors(run_cli, synth_root, tiny_ckpt, tmp_path):
    assert_user_error(run_cli("synth", "--out", tmp_path / "s", "--n", 10, "--seed", -1), "seed must be an integer")
    assert_user_error(run_cli("train", "--data", synth_root, "--out", tmp_path / "r", "--seed", -1),
                      "train.seed must be an integer")
    assert_user_error(run_cli("explain-eval", "--checkpoint", tiny_ckpt, "--data", synth_root, "--out", tmp_path / "x",
                              "--seed", -1), "seed must be an integer")
    assert_user_error(run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", synth_root, "--out", tmp_path / "e",
                              "--ci-seed", -1), "--ci-seed must be an integer")
    _only(tmp_path)


def test_outputs_in_the_way_are_refused_before_any_work(run_cli, synth_root, tiny_ckpt, tmp_path, a_file):
    cases = [
        (("synth", "--out", a_file, "--n", 10), "is a file"),
        (("audit", synth_root, "--out", synth_root, "--no-progress"), "is a folder"),
        (("audit", synth_root, "--out", a_file / "r.json", "--no-progress"), "is a file, not a folder"),
        (("compact", tiny_ckpt, a_file / "x.ckpt"), "is a file, not a folder"),
        (("manifest", "--format", "kaggle", synth_root, "--out", a_file / "m.csv"), "is a file, not a folder"),
        (("explain-eval", "--checkpoint", tiny_ckpt, "--data", synth_root, "--out", a_file), "is a file"),
        (("calibrate", "--checkpoint", tiny_ckpt, "--data", synth_root, "--out", a_file / "c.ckpt"),
         "is a file, not a folder"),
    ]
    for args, needle in cases:
        result = run_cli(*args)
        assert_user_error(result, needle)
        assert result.stdout.strip() == "", args  # no work reported: refused before it started
    _only(tmp_path, "a-file")


def test_calibrate_names_its_threshold_flag(run_cli, synth_root, tiny_ckpt, tmp_path):
    result = run_cli("calibrate", "--checkpoint", tiny_ckpt, "--data", synth_root, "--method", "fixed",
                     "--threshold", 2, "--out", tmp_path / "c.ckpt")
    assert_user_error(result, "--threshold must be a probability in (0, 1)")
    _only(tmp_path)


def test_an_oserror_about_a_path_is_one_line_naming_the_target(capsys, tmp_path, a_file):
    from pneumoscope.cli import user_errors

    @user_errors
    def rename_onto_a_folder():
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(tmp_path / ".x.123.tmp"), None, str(tmp_path))

    @user_errors
    def mkdir_under_a_file():
        raise FileExistsError(errno.EEXIST, "File exists", str(a_file))

    @user_errors
    def a_bug():
        raise OSError("no path involved")

    with pytest.raises(typer.Exit):
        rename_onto_a_folder()
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: Is a directory"  # not the temporary file
    with pytest.raises(typer.Exit):
        mkdir_under_a_file()
    assert capsys.readouterr().err.strip() == f"error: {a_file}: is a file, where a folder was expected"
    with pytest.raises(OSError, match="no path involved"):
        a_bug()


def test_synth_stopped_by_sigterm_leaves_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(pneumoscope.__file__).resolve().parents[1])}
    job = subprocess.Popen([sys.executable, "-m", "pneumoscope", "synth", "--out", str(tmp_path / "big"), "--n", "4000",
                            "--size", "128", "--workers", "2"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".big.partial-*/*")) and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.poll() is None, "synth ended before it could be stopped"
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # neither the dataset nor its hidden partial folder
