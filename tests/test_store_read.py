"""Evaluating, calibrating and scoring a store from `pneumoscope prepare`, against the folder it was made from."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_IMAGE_SIZE, assert_user_error

import pneumoscope

SRC = Path(pneumoscope.__file__).resolve().parents[1]
COMMON = ("--precision", "fp32", "--device", "cpu")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _prepare(run_cli, data: Path, out: Path, *extra: object) -> Path:
    r = run_cli("prepare", data, "--out", out, "--image-size", TINY_IMAGE_SIZE, "--workers", 2, "--no-progress", *extra)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory, synth_root) -> Path:
    """The synthetic dataset prepared at the tiny checkpoint's size, validating on its val/ as the checkpoint did."""
    from typer.testing import CliRunner

    from pneumoscope.cli import app

    out = tmp_path_factory.mktemp("readstore") / "STORE"
    r = CliRunner().invoke(app, ["prepare", str(synth_root), "--out", str(out), "--image-size", str(TINY_IMAGE_SIZE),
                                 "--val-source", "val", "--workers", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    return out


def _store_paths(store: Path, *subsets: str) -> list[str]:
    rows = _rows(store / "samples.csv")
    return [r["path"] for sub in subsets for r in rows if r["subset"] == sub and r["status"] == "ok"]


def test_evaluate_a_store_equals_evaluating_its_folder(run_cli, tiny_ckpt, store, synth_root, tmp_path):
    a = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", store, "--out", tmp_path / "s", "--bootstrap", 0, *COMMON)
    assert a.exit_code == 0, a.output
    b = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", synth_root, "--out", tmp_path / "f", "--bootstrap", 0,
                *COMMON)
    assert b.exit_code == 0, b.output
    ps, pf = _rows(tmp_path / "s" / "predictions.csv"), _rows(tmp_path / "f" / "predictions.csv")
    assert [r["path"] for r in ps] == _store_paths(store, "test")
    assert sorted(r["path"] for r in ps) == sorted(r["path"] for r in pf) and len(ps) > 0
    by_path = {r["path"]: r for r in pf}
    for r in ps:  # PNGs: the stored images are the decoded ones byte for byte, so the same probabilities
        f = by_path[r["path"]]
        assert (r["true_label"], r["label"], r["patient_id"]) == (f["true_label"], f["label"], f["patient_id"])
        assert float(r["prob_pneumonia"]) == pytest.approx(float(f["prob_pneumonia"]), abs=2e-6)
    ms, mf = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("s", "f"))
    for key in ("n", "accuracy", "sensitivity", "specificity", "threshold"):
        assert ms[key] == mf[key], key
    assert ms["roc_auc"] == pytest.approx(mf["roc_auc"], abs=1e-9)
    assert ms["data"] == str(store)


def test_calibrate_on_a_store_equals_calibrating_on_its_folder(run_cli, tiny_ckpt, store, synth_root, tmp_path):
    from pneumoscope.checkpoint import read_metadata

    for name, data in (("s", store), ("f", synth_root)):
        r = run_cli("calibrate", "--checkpoint", tiny_ckpt, "--data", data, "--out", tmp_path / f"{name}.ckpt", *COMMON)
        assert r.exit_code == 0, r.output
    ms, mf = read_metadata(tmp_path / "s.ckpt"), read_metadata(tmp_path / "f.ckpt")
    assert ms["threshold"] == pytest.approx(mf["threshold"], abs=1e-6)
    assert ms["temperature"] == pytest.approx(mf["temperature"], rel=1e-4)
    assert ms["operating_point"]["n"] == mf["operating_point"]["n"] == len(_store_paths(store, "val"))


def test_a_store_prepared_otherwise_than_the_checkpoint_is_refused(run_cli, tiny_ckpt, synth_root, tmp_path):
    other = _prepare(run_cli, synth_root, tmp_path / "EQ", "--intensity", "equalize", "--val-source", "val")
    r = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", other, "--out", tmp_path / "e", *COMMON)
    assert_user_error(r, str(other), "intensity 'equalize'", "expects 'none'")
    r = run_cli("calibrate", "--checkpoint", tiny_ckpt, "--data", other, *COMMON)
    assert_user_error(r, str(other), "intensity")
    r = run_cli("predict", other, "--checkpoint", tiny_ckpt, "--out", tmp_path / "p.csv", *COMMON)
    assert_user_error(r, str(other), "intensity")
    assert not (tmp_path / "p.csv").exists()


def test_a_store_without_test_images_cannot_be_evaluated(run_cli, tiny_ckpt, synth_root, tmp_path):
    no_test = _prepare(run_cli, synth_root, tmp_path / "NT", "--val-source", "test")
    r = run_cli("evaluate", "--checkpoint", tiny_ckpt, "--data", no_test, "--out", tmp_path / "e", *COMMON)
    assert_user_error(r, str(no_test), "no test images")
    r = run_cli("predict", no_test, "--subset", "test", "--checkpoint", tiny_ckpt, "--out", tmp_path / "p.csv", *COMMON)
    assert_user_error(r, str(no_test), "no test images")


def test_predict_a_store_keys_rows_by_source_path_and_resumes(run_cli, tiny_ckpt, store, tmp_path):
    out = tmp_path / "all.csv"
    r = run_cli("predict", store, "--checkpoint", tiny_ckpt, "--out", out, "--part-rows", 4, *COMMON)
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert [x["path"] for x in rows] == _store_paths(store, "train", "val", "test")
    assert all(x["error"] == "" and x["label"] in ("NORMAL", "PNEUMONIA") for x in rows)
    # The test subset alone: the same rows as scoring its files (PNGs: identical pixels).
    r = run_cli("predict", store, "--subset", "test", "--checkpoint", tiny_ckpt, "--out", tmp_path / "t.csv", *COMMON)
    assert r.exit_code == 0, r.output
    files = run_cli("predict", *_store_paths(store, "test"), "--checkpoint", tiny_ckpt, "--out", tmp_path / "f.csv",
                    *COMMON)
    assert files.exit_code == 0, files.output
    t, f = _rows(tmp_path / "t.csv"), _rows(tmp_path / "f.csv")
    assert [x["path"] for x in t] == [x["path"] for x in f]
    for x, y in zip(t, f):
        assert float(x["prob_pneumonia"]) == pytest.approx(float(y["prob_pneumonia"]), abs=2e-6)
    # --resume of a run that had written only some rows scores exactly the rest.
    with open(out, newline="") as fh:
        lines = fh.readlines()
    out.write_text("".join(lines[:6]))
    r = run_cli("predict", store, "--checkpoint", tiny_ckpt, "--out", out, "--resume", *COMMON)
    assert r.exit_code == 0, r.output
    assert f"scored {len(rows) - 5} of {len(rows)} inputs" in r.output
    again = _rows(out)
    assert [x["path"] for x in again] == [x["path"] for x in rows]
    assert [x["prob_pneumonia"] for x in again] == [x["prob_pneumonia"] for x in rows]


def test_explain_a_store_draws_on_the_stored_image(run_cli, tiny_ckpt, store, tmp_path):
    from PIL import Image

    r = run_cli("explain", store, "--subset", "val", "--checkpoint", tiny_ckpt, "--out", tmp_path / "cams", *COMMON)
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "cams" / "manifest.json").read_text())
    assert [e["path"] for e in man["images"]] == _store_paths(store, "val")
    overlays = sorted((tmp_path / "cams").glob("*.overlay.png"))
    assert len(overlays) == len(man["images"])
    assert Image.open(overlays[0]).size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)  # the stored model-size image


def test_mixing_a_store_with_files_is_refused(run_cli, tiny_ckpt, store, test_images, tmp_path):
    r = run_cli("predict", store, test_images[0], "--checkpoint", tiny_ckpt, "--out", tmp_path / "p.csv", *COMMON)
    assert_user_error(r, str(store), "only input")
    r = run_cli("predict", test_images[0], "--subset", "test", "--checkpoint", tiny_ckpt, "--out", tmp_path / "p.csv",
                *COMMON)
    assert_user_error(r, "--subset")


def test_two_processes_score_a_store_as_one(run_cli, tiny_ckpt, store, tmp_path):
    from test_scoring import _env

    one = run_cli("predict", store, "--checkpoint", tiny_ckpt, "--out", tmp_path / "one.csv", *COMMON)
    assert one.exit_code == 0, one.output
    two = subprocess.run(
        [sys.executable, "-m", "pneumoscope", "predict", str(store), "--checkpoint", str(tiny_ckpt), "--out",
         str(tmp_path / "two.csv"), "--precision", "fp32", "--devices", "2", "--accelerator", "cpu", "--batch-size", "3",
         "--part-rows", "2", "--no-progress"],
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr
    a, b = _rows(tmp_path / "one.csv"), _rows(tmp_path / "two.csv")
    assert [x["path"] for x in b] == [x["path"] for x in a] and len({x["path"] for x in b}) == len(a)
    for x, y in zip(a, b):
        assert float(x["prob_pneumonia"]) == pytest.approx(float(y["prob_pneumonia"]), abs=2e-6)


def _rank_share(rank: int, store: str, port: int, out: str) -> None:
    """One rank of a 2-process gloo group: the input indices its loader (2 workers) streams."""
    import os

    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from pneumoscope.data.transforms import Preprocessing
    from pneumoscope.scoring.dataset import StoreImages, StoreInputs

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        inputs = StoreInputs.open(Path(store), "test")
        ds = StoreImages(inputs, range(len(inputs.paths())), Preprocessing(TINY_IMAGE_SIZE))
        # fork: a spawned rank's workers would otherwise be spawned too (seconds of imports each).
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=list, multiprocessing_context="fork")
        seen = [item["index"] for batch in loader for item in batch]
        Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


def test_each_rank_and_worker_streams_its_own_share_of_a_store(store, tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    from test_scoring import _free_port

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_rank_share, args=(str(store), _free_port(), str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    n = len(_store_paths(store, "test"))
    assert r0 and r1 and not set(r0) & set(r1)  # no input scored twice: merge would hide it, the time would not
    assert sorted(r0 + r1) == list(range(n))
