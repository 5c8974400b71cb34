"""Scoring archives: part files, merge, resume, Parquet, and 2-process DDP runs (gloo on 127.0.0.1).

The multi-process tests start the real CLI as a subprocess (Lightning re-launches it once per
extra process), exactly as a user runs it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_text_as_image, write_zero_byte

import pneumoscope
from pneumoscope.errors import ConfigError
from pneumoscope.scoring import ExplainSettings, ScoringJob, read_table, score, write_table
from pneumoscope.scoring.parts import PartStore, merge, parts_folder

SRC = Path(pneumoscope.__file__).resolve().parents[1]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MASTER_ADDR"] = "127.0.0.1"  # gloo on loopback only
    if Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("MASTER_PORT", None)
    return env


def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "pneumoscope", *[str(a) for a in args]]


def _inputs(folder: Path, n: int, size: int = 48, seed: int = 0) -> Path:
    """``n`` random grey PNGs named img-000.png ... (any content scores; we compare runs, not accuracy)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(folder / f"img-{i:03d}.png")
    return folder


def _wait_for_parts(job: subprocess.Popen, parts: Path, seconds: float) -> None:
    """Wait until the running ``job`` has written its first part file; fail if it ended first."""
    deadline = time.monotonic() + seconds
    while not list(parts.glob("part-*.parquet")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.poll() is None, "the job ended before it could be stopped"


def _assert_same_rows(a: list[dict[str, str]], b: list[dict[str, str]]) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b):
        assert x["error"] == y["error"] and x["threshold"] == y["threshold"], (x, y)
        if x["error"]:
            assert x["label"] == y["label"] == "" and x["prob_pneumonia"] == y["prob_pneumonia"] == ""
        else:
            # Other batch compositions may move the last of the 6 decimals.
            assert float(x["prob_pneumonia"]) == pytest.approx(float(y["prob_pneumonia"]), abs=2e-6), (x, y)


# --------------------------------------------------------------------------- tables and part files


def test_merge_keeps_one_row_per_input_in_input_order(tmp_path):
    inputs = [tmp_path / f"x{i}.png" for i in range(5)]
    store = PartStore(tmp_path / "p.parts")

    def row(i: int, prob: float) -> dict:
        return {"index": i, "path": str(inputs[i]), "label": "NORMAL", "prob_pneumonia": prob, "threshold": 0.5, "error": ""}

    # Two ranks, out of order, and input 3 written twice (a resumed batch).
    store.write([row(3, 0.3), row(1, 0.1), row(4, 0.4)], rank=1)
    store.write([row(0, 0.0), row(2, 0.2), row(3, 0.3)], rank=0)
    assert not list(store.folder.glob("*.tmp"))
    table = merge(inputs, store, previous=None)
    assert table.column("path").to_pylist() == [str(p) for p in inputs]
    assert table.column("prob_pneumonia").to_pylist() == [0.0, 0.1, 0.2, 0.3, 0.4]
    with pytest.raises(RuntimeError, match="no row"):
        merge([*inputs, tmp_path / "never.png"], store, previous=None)


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_prediction_tables_round_trip(tmp_path, suffix):
    from pneumoscope.scoring.tables import rows_to_table

    rows = [
        {"path": "a.png", "label": "PNEUMONIA", "prob_pneumonia": 0.75, "threshold": 0.5, "error": ""},
        {"path": "b, with comma.png", "label": "", "prob_pneumonia": None, "threshold": 0.5, "error": "file is empty"},
    ]
    path = write_table(rows_to_table(rows), tmp_path / f"p{suffix}")
    back = read_table(path).to_pylist()
    assert back == rows


# --------------------------------------------------------------------------- one process, in-process CLI


def test_predict_parquet_output_matches_csv(run_cli, tiny_ckpt, copy_images, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = copy_images(4)
    bad = write_zero_byte(folder / "zz-empty.png")
    r1 = run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--out", tmp_path / "p.csv", "--precision", "fp32")
    r2 = run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--out", tmp_path / "p.parquet", "--precision", "fp32")
    assert r1.exit_code == r2.exit_code == 1, r2.output  # the empty file fails, the others score
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.schema.field("prob_pneumonia").type == pa.float64()
    assert table.schema.field("path").type == pa.string()
    rows = table.to_pylist()
    text = _read_csv(tmp_path / "p.csv")
    assert [r["path"] for r in rows] == [r["path"] for r in text]
    assert rows[-1]["path"] == str(bad) and rows[-1]["prob_pneumonia"] is None and rows[-1]["error"]
    for r, t in zip(rows[:-1], text[:-1]):
        assert f"{r['prob_pneumonia']:.6f}" == t["prob_pneumonia"] and r["label"] == t["label"]
    assert not parts_folder(tmp_path / "p.parquet").exists()  # merged, then removed


def test_multi_process_or_resume_need_out(run_cli, tiny_ckpt, copy_images):
    from conftest import assert_user_error

    folder = copy_images(1)
    assert_user_error(run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--devices", "2"), "--out")
    assert_user_error(run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--resume"), "--out")


def _crash_at(monkeypatch, index: int) -> None:
    """Make the dataset raise (not a bad file: a crash of the rank) when it reaches input ``index``."""
    from pneumoscope.scoring import dataset

    original = dataset.ImageFiles.__getitem__

    def getitem(self, i):
        if self.indices[i] == index:
            raise RuntimeError("simulated crash")
        return original(self, i)

    monkeypatch.setattr(dataset.ImageFiles, "__getitem__", getitem)


def test_resume_after_a_crash_scores_only_what_is_missing(monkeypatch, run_cli, tiny_ckpt, tmp_path):
    folder = _inputs(tmp_path / "in", 12)
    write_text_as_image(folder / "img-005.png")  # a bad file among them: an error row, not a crash
    inputs = sorted(folder.iterdir())
    out, cams = tmp_path / "p.csv", tmp_path / "cams"

    def job(**kw) -> ScoringJob:
        kw = {"explain": ExplainSettings(cams), **kw}
        return ScoringJob(inputs=inputs, checkpoint=tiny_ckpt, out=out, device="cpu", precision="fp32", batch_size=2,
                          part_rows=2, **kw)

    _crash_at(monkeypatch, 9)
    with pytest.raises(RuntimeError, match="simulated crash"):
        score(job())
    monkeypatch.undo()
    parts = parts_folder(out)
    assert parts.is_dir() and not out.exists() and not (cams / "manifest.json").exists()
    written = read_parts_paths(parts)
    # The batches finished before the crash are on disk, whole (the loop fetches one batch ahead).
    assert 0 < len(written) < 9 and len(written) % 2 == 0
    assert sorted(written) == [str(p) for p in inputs[: len(written)]]

    # Without --resume the leftovers are not silently overwritten.
    refused = run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--out", out, "--explain", cams, "--device", "cpu")
    assert refused.exit_code == 2 and str(parts) in refused.stderr and "--resume" in refused.stderr
    # Nor resumed with other settings.
    with pytest.raises(ConfigError, match="explain"):
        score(job(resume=True, explain=ExplainSettings(cams, style="heatmap")))

    result = score(job(resume=True))
    assert result.scored == len(inputs) - len(written)
    assert not parts.exists()
    score(ScoringJob(inputs=inputs, checkpoint=tiny_ckpt, out=tmp_path / "ref.csv", explain=ExplainSettings(tmp_path / "ref"),
                     device="cpu", precision="fp32", batch_size=5))
    _assert_same_rows(_read_csv(out), _read_csv(tmp_path / "ref.csv"))
    man, ref = (json.loads((d / "manifest.json").read_text()) for d in (cams, tmp_path / "ref"))
    assert [e["path"] for e in man["images"]] == [str(p) for p in inputs]
    assert [e.get("overlay") for e in man["images"]] == [e.get("overlay") for e in ref["images"]]
    assert sorted(f.name for f in cams.iterdir()) == sorted(f.name for f in (tmp_path / "ref").iterdir())


def test_a_row_is_written_only_after_its_overlay(monkeypatch, tiny_ckpt, tmp_path):
    from pneumoscope.scoring import engine

    inputs = sorted(_inputs(tmp_path / "in", 6).iterdir())
    original = engine.write_explanation

    def failing(out, stem, *args):
        if stem == "img-003":
            raise OSError(28, "No space left on device")
        return original(out, stem, *args)

    monkeypatch.setattr(engine, "write_explanation", failing)
    job = ScoringJob(inputs=inputs, checkpoint=tiny_ckpt, explain=ExplainSettings(tmp_path / "cams"), device="cpu",
                     precision="fp32", batch_size=6, part_rows=6)
    with pytest.raises(OSError, match="No space"):
        score(job)
    written = read_parts_paths(parts_folder(tmp_path / "cams"))
    assert sorted(written) == sorted(str(p) for p in inputs if p.stem != "img-003")  # the others are kept
    monkeypatch.undo()
    result = score(dataclasses.replace(job, resume=True))
    assert result.scored == 1 and (tmp_path / "cams" / "img-003.overlay.png").is_file()


def read_parts_paths(folder: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [p for f in sorted(folder.glob("part-*.parquet")) for p in pq.read_table(f).column("path").to_pylist()]


def test_resume_of_a_finished_run_scores_new_inputs_only(tiny_ckpt, tmp_path):
    folder = _inputs(tmp_path / "in", 6)
    out = tmp_path / "p.parquet"
    first = score(ScoringJob(inputs=sorted(folder.iterdir()), checkpoint=tiny_ckpt, out=out, device="cpu", precision="fp32"))
    assert first.scored == 6
    _inputs(tmp_path / "more", 2, seed=1)
    for f in (tmp_path / "more").iterdir():
        f.rename(folder / f"new-{f.name}")
    inputs = sorted(folder.iterdir())
    again = score(ScoringJob(inputs=inputs, checkpoint=tiny_ckpt, out=out, device="cpu", precision="fp32", resume=True))
    assert again.scored == 2
    assert read_table(out).column("path").to_pylist() == [str(p) for p in inputs]


# --------------------------------------------------------------------------- two processes (subprocess, gloo)


def test_two_processes_give_the_rows_and_overlays_of_one(run_cli, tiny_ckpt, copy_images, tmp_path):
    folder = copy_images(7)
    bad = write_text_as_image(folder / "m-bad.png")  # mid-list: lands on one of the ranks
    common = ("--checkpoint", tiny_ckpt, "--precision", "fp32", "--method", "gradcam")
    one = run_cli("predict", folder, *common, "--out", tmp_path / "one.csv", "--explain", tmp_path / "cams1",
                  "--device", "cpu")
    assert one.exit_code == 1, one.output
    two = subprocess.run(
        _cli("predict", folder, *common, "--out", tmp_path / "two.csv", "--explain", tmp_path / "cams2",
             "--devices", 2, "--accelerator", "cpu", "--batch-size", 3, "--part-rows", 2, "--no-progress"),
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 1, two.stderr  # exit 1: one input failed, as with one process
    assert f"error: {bad}" in two.stderr and "Traceback" not in two.stderr
    rows = _read_csv(tmp_path / "two.csv")
    assert len(rows) == 8 and len({r["path"] for r in rows}) == 8
    _assert_same_rows(rows, _read_csv(tmp_path / "one.csv"))
    assert [r["path"] for r in rows if r["error"]] == [str(bad)]
    # Every overlay and raw map once, named as with one process; one manifest entry per input, in order.
    assert sorted(f.name for f in (tmp_path / "cams2").iterdir()) == sorted(f.name for f in (tmp_path / "cams1").iterdir())
    assert len(list((tmp_path / "cams2").glob("*.overlay.png"))) == 7
    man = json.loads((tmp_path / "cams2" / "manifest.json").read_text())
    assert [e["path"] for e in man["images"]] == [r["path"] for r in rows]
    assert not parts_folder(tmp_path / "two.csv").exists()


@pytest.mark.slow
def test_fewer_inputs_than_processes(tiny_ckpt, test_images, tmp_path):
    out = tmp_path / "one.csv"
    done = subprocess.run(
        _cli("predict", test_images[0], "--checkpoint", tiny_ckpt, "--out", out, "--devices", 2, "--accelerator", "cpu",
             "--precision", "fp32", "--no-progress"),
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert [r["path"] for r in _read_csv(out)] == [str(test_images[0])]  # both ranks scored it; one row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigkill_part_way_then_resume_loses_and_duplicates_nothing(run_cli, tiny_ckpt, tmp_path):
    folder = _inputs(tmp_path / "in", 300, size=256)
    write_zero_byte(folder / "img-150-empty.png")
    inputs = sorted(folder.iterdir())
    out, cams = tmp_path / "p.csv", tmp_path / "cams"
    args = _cli("predict", folder, "--checkpoint", tiny_ckpt, "--precision", "fp32", "--out", out, "--explain", cams,
                "--devices", 2, "--accelerator", "cpu", "--batch-size", 4, "--part-rows", 8, "--no-progress")
    parts = parts_folder(out)
    job = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_parts(job, parts, 300)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the whole job, both ranks, as a scheduler would
        job.wait()
    assert not out.exists()
    before = len(set(read_parts_paths(parts)))
    assert 0 < before < len(inputs)

    resumed = subprocess.run([*args, "--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 1, resumed.stderr  # the empty file's row
    reference = run_cli("predict", folder, "--checkpoint", tiny_ckpt, "--precision", "fp32", "--out", tmp_path / "ref.csv",
                        "--explain", tmp_path / "ref", "--device", "cpu", "--batch-size", 16)
    assert reference.exit_code == 1
    rows = _read_csv(out)
    assert len(rows) == len(inputs)
    _assert_same_rows(rows, _read_csv(tmp_path / "ref.csv"))
    assert sorted(f.name for f in cams.iterdir()) == sorted(f.name for f in (tmp_path / "ref").iterdir())  # no .tmp left
    man = json.loads((cams / "manifest.json").read_text())
    assert [e["path"] for e in man["images"]] == [str(p) for p in inputs]
    assert not parts.exists()


@pytest.mark.slow
def test_torchrun_two_nodes_on_loopback_explain(run_cli, tiny_ckpt, copy_images, tmp_path):
    """``explain`` as two torchrun "nodes" of one process each: every overlay once, the manifest in input order."""
    folder = copy_images(6)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
             "-m", "pneumoscope", "explain", str(folder), "--checkpoint", str(tiny_ckpt), "--precision", "fp32",
             "--out", str(tmp_path / "cams"), "--devices", "1", "--num-nodes", "2", "--accelerator", "cpu",
             "--batch-size", "2", "--no-progress"],
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ref = run_cli("explain", folder, "--checkpoint", tiny_ckpt, "--precision", "fp32", "--out", tmp_path / "ref",
                  "--device", "cpu")
    assert ref.exit_code == 0
    assert sorted(f.name for f in (tmp_path / "cams").iterdir()) == sorted(f.name for f in (tmp_path / "ref").iterdir())
    man, want = (json.loads((tmp_path / d / "manifest.json").read_text())["images"] for d in ("cams", "ref"))
    assert [e["path"] for e in man] == [e["path"] for e in want] == [str(p) for p in sorted(folder.iterdir())]
    for e, w in zip(man, want):
        assert e["overlay"] == w["overlay"] and e["label"] == w["label"]
        assert e["prob_pneumonia"] == pytest.approx(w["prob_pneumonia"], abs=2e-6)
