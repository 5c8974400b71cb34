"""`pneumoscope prepare` and training streamed from its store: index, errors, re-runs, kills, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_user_error, write_text_as_image

DRIVER = Path(__file__).with_name("_train_driver.py")
SRC = Path(__file__).resolve().parents[1] / "src"

TINY = {
    "model.backbone": "vgg_tiny", "model.weights": "none", "data.image_size": 32,
    "train.precision": "fp32", "train.device": "cpu", "train.batch_size": 8, "train.seed": 0,
    "train.stages": [{"name": "stage1", "epochs": 2, "lr": 1e-3, "trainable_from": None}],
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def run_driver(tmp: Path, data: Path, out: Path, record: Path, overrides: dict, **extra) -> subprocess.CompletedProcess:
    spec = tmp / f"spec-{len(list(tmp.glob('spec-*')))}.json"
    spec.write_text(json.dumps({"data": str(data), "out": str(out), "record": str(record), "overrides": overrides,
                                **extra}))
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(spec)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # every rank: a hung collective must not hang the suite
        out, err = proc.communicate()
        pytest.fail(f"training driver timed out:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def records(folder: Path, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in (folder / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def store_data(tmp_path_factory) -> Path:
    """A 72-image phantom dataset with one corrupt file and one big JPEG in train/."""
    from pneumoscope.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("storedata") / "data"
    synth_dataset(root, n=72, size=48, seed=3, difficulty=0.2)
    write_text_as_image(root / "train" / "NORMAL" / "broken.png")
    big = np.clip(np.add.outer(np.arange(600), np.arange(480)) / 1080 * 255, 0, 255).astype(np.uint8)
    Image.fromarray(big, mode="L").save(root / "train" / "PNEUMONIA" / "big-IM-9999-0001.jpeg", quality=95)
    return root


@pytest.fixture(scope="session")
def store(tmp_path_factory, store_data) -> Path:
    from typer.testing import CliRunner

    from pneumoscope.cli import app

    out = tmp_path_factory.mktemp("store") / "STORE"
    result = CliRunner().invoke(app, ["prepare", str(store_data), "--out", str(out), "--image-size", "32",
                                      "--workers", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "1 file(s) could not be read" in result.output
    return out


def test_store_index_records_preprocessing_counts_and_the_patient_split(store, store_data):
    from pneumoscope.data.dataset import CLASS_NAMES, load_splits

    index = json.loads((store / "pneumoscope_store.json").read_text())
    assert index["format"] == "pneumoscope-store" and index["image_size"] == 32
    assert index["preprocessing"]["image_size"] == 32 and index["preprocessing"]["jpeg_draft"] is True
    assert index["split"]["val_source"] == "split" and index["split"]["seed"] == 42
    rows = list(csv.DictReader(open(store / "samples.csv")))
    for name, sub in index["subsets"].items():
        ok = [r for r in rows if r["subset"] == name and r["status"] == "ok"]
        assert sub["n"] == len(ok) > 0
        assert sub["counts"] == {c: sum(r["label"] == c for r in ok) for c in CLASS_NAMES}
    assert index["errors"] == 1 and index["inputs"] == len(rows)
    # The held-out patients are exactly the in-memory path's, and no patient is on both sides.
    splits = load_splits(store_data, "split", 0.1, 42)
    assert {r["path"] for r in rows if r["subset"] == "val"} == {str(s.path) for s in splits.val}
    train_p = {r["patient_id"] for r in rows if r["subset"] == "train"}
    assert not train_p & {r["patient_id"] for r in rows if r["subset"] == "val"}
    errors = list(csv.DictReader(open(store / "prepare_errors.csv")))
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.png") and "not a recognised image" in errors[0]["error"]


def test_store_items_are_the_in_memory_images(store):
    from pneumoscope.data.dataset import decode_images
    from pneumoscope.data.store import Store
    from pneumoscope.data.transforms import Preprocessing

    s = Store(store)
    rows = [r for r in s.rows(("val",))]
    items = sorted((int(i), img, int(y)) for img, y, i in s.dataset("val"))
    assert [i for i, _, _ in items] == sorted(int(r["id"]) for r in rows)
    expected = decode_images([Path(r["path"]) for r in sorted(rows, key=lambda r: int(r["id"]))], Preprocessing(32),
                             progress=False)
    for (_, img, y), exp, r in zip(items, expected, sorted(rows, key=lambda r: int(r["id"]))):
        assert img.dtype == torch.uint8 and img.shape == (1, 32, 32)
        assert torch.equal(img[0], exp)  # PNGs: byte-identical to the in-memory cache
        assert y == ["NORMAL", "PNEUMONIA"].index(r["label"])


def test_store_records_carry_label_patient_split_and_source_path(store):
    import litdata

    rows = {int(r["id"]): r for r in csv.DictReader(open(store / "samples.csv")) if r["subset"] == "train"}
    ds = litdata.StreamingDataset(str(store / "train"))
    for item in ds:
        row = rows[item["index"]]
        assert bytes(item["path"]).decode() == row["path"] and item["patient"] == row["patient_id"]
        assert item["split"] == "train" and ["NORMAL", "PNEUMONIA"][item["label"]] == row["label"]
    # Only the decoded pixels and a few fields: the source file itself is never copied in
    # (LitData stores a str naming an image file as that file).
    chunk_bytes = sum(p.stat().st_size for p in (store / "train").glob("chunk-*.bin"))
    assert chunk_bytes < len(ds) * (32 * 32 + 400)


def test_jpeg_is_decoded_at_reduced_scale_and_matches_full_decode(store_data):
    from pneumoscope.data.io import read_image
    from pneumoscope.data.store import decode_reduced
    from pneumoscope.data.transforms import Preprocessing

    path = store_data / "train" / "PNEUMONIA" / "big-IM-9999-0001.jpeg"
    small = decode_reduced(path, 100)
    assert small.shape == (150, 120)  # 1/4 scale: the smallest that keeps both sides >= 100
    full = read_image(path)
    assert full.shape == (600, 480)
    prep = Preprocessing(100)
    diff = (prep.to_uint8(small).float() - prep.to_uint8(full).float()).abs()
    assert float(diff.mean()) < 2.0
    png = store_data / "train" / "NORMAL"
    first = sorted(png.glob("synth-*.png"))[0]
    np.testing.assert_array_equal(decode_reduced(first, 16), read_image(first))  # non-JPEG: the reader itself


def test_prepare_rerun_is_idempotent_or_refuses(run_cli, store, store_data, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    result = run_cli("prepare", store_data, "--out", store, "--image-size", "32", "--no-progress")
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before
    result = run_cli("prepare", store_data, "--out", store, "--image-size", "64", "--no-progress")
    assert_user_error(result, str(store), "image_size=32")
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("x")
    assert_user_error(run_cli("prepare", store_data, "--out", other, "--no-progress"), "not a pneumoscope store")


def test_prepare_killed_midway_leaves_no_store_and_a_rerun_completes(store_data, tmp_path):
    out = tmp_path / "STORE"
    code = ("import sys, time; import litdata.processing.functions as f; real = f.optimize\n"
            "def slow(*a, **k):\n    time.sleep(60)\n    return real(*a, **k)\n"
            "f.optimize = slow; import litdata; litdata.optimize = slow\n"
            "from pneumoscope.cli import main; sys.argv = ['pneumoscope'] + sys.argv[1:]; main()")
    proc = subprocess.Popen([sys.executable, "-c", code, "prepare", str(store_data), "--out", str(out),
                             "--image-size", "32", "--workers", "1", "--no-progress"], env=_env(),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".STORE.partial-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert list(tmp_path.glob(".STORE.partial-*")), proc.communicate()
    os.killpg(proc.pid, signal.SIGKILL)  # kill -9: no clean-up code runs
    proc.wait()
    assert not out.exists()  # nothing at STORE that could pass for a store
    from pneumoscope.data.store import prepare_store

    # The re-run reads the dataset's CSV manifest this time (path,label,patient_id,split,...).
    with pytest.warns(UserWarning, match="left-over partial store"):
        result = prepare_store(store_data / "manifest.csv", out, image_size=32, workers=1, progress=False)
    rows = list(csv.DictReader(open(store_data / "manifest.csv")))
    # With --val-source split, the dataset's own val/ rows are not used (as train --data does).
    assert result.n_images == sum(r["split"] in ("train", "test") for r in rows) and result.n_errors == 0
    assert result.index["subsets"]["test"]["n"] == sum(r["split"] == "test" for r in rows)
    assert (out / "pneumoscope_store.json").is_file()


def test_train_streams_from_the_store(run_cli, store, tmp_path):
    from pneumoscope.data.store import Store

    out = tmp_path / "run"
    result = run_cli("train", "--data", store, "--out", out, "--backbone", "vgg_tiny", "--weights", "none",
                     "--image-size", "32", "--epochs", "2", "--precision", "fp32", "--device", "cpu",
                     "--batch-size", "8", "--set", "train.stages=[{name: s1, epochs: 2, lr: 0.001}]", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    s = Store(store)
    assert summary["data_source"] == "store" and summary["world_size"] == 1
    assert summary["n_train"] == s.count("train") and summary["n_val"] == s.count("val")
    assert summary["samples_per_epoch"] == [s.count("train")] * 2
    assert summary["train_counts"] == dict(zip(("NORMAL", "PNEUMONIA"), s.class_counts("train")))
    splits = list(csv.DictReader(open(out / "splits.csv")))
    assert sum(r["split"] == "val" for r in splits) == s.count("val")
    assert (out / "best.ckpt").is_file()
    from pneumoscope.checkpoint import read_metadata

    op = read_metadata(out / "best.ckpt")["operating_point"]
    assert op is None or op["n"] == s.count("val")  # calibrated on every validation image
    # A run that asks for another size or validation than the store holds is refused clearly.
    bad = run_cli("train", "--data", store, "--out", tmp_path / "bad", "--backbone", "vgg_tiny", "--weights", "none",
                  "--image-size", "48", "--epochs", "1", "--device", "cpu")
    assert_user_error(bad, str(store), "32 px", "--image-size 32")
    bad = run_cli("train", "--data", store, "--out", tmp_path / "bad2", "--backbone", "vgg_tiny", "--weights", "none",
                  "--image-size", "32", "--epochs", "1", "--device", "cpu", "--val-source", "val")
    assert_user_error(bad, "--val-source split")
    bad = run_cli("train", "--data", store, "--out", tmp_path / "bad3", "--backbone", "vgg_tiny", "--weights", "none",
                  "--image-size", "32", "--epochs", "1", "--device", "cpu", "--set", "train.epoch_sampling=balanced")
    assert_user_error(bad, str(store), "epoch_sampling", "streamed")
    assert not (tmp_path / "bad3").exists()


def test_distributed_flags_are_config_keys_and_checked(run_cli, store, tmp_path):
    from pneumoscope.config import dump_config, load_config
    from pneumoscope.distributed import trainer_kwargs

    cfg = load_config(None, {"distributed.devices": 2, "distributed.accelerator": "cpu"})
    assert cfg.distributed.world_size == 2
    kw = trainer_kwargs(cfg.distributed)
    assert kw["devices"] == 2 and kw["strategy"].process_group_backend == "gloo"
    assert kw["strategy"]._ddp_kwargs.get("find_unused_parameters") is False
    assert trainer_kwargs(cfg.distributed, find_unused_parameters=True)["strategy"]._ddp_kwargs["find_unused_parameters"]
    named = load_config(None, {"distributed.devices": 2, "distributed.accelerator": "cpu",
                               "distributed.strategy": "ddp_find_unused_parameters_true"})
    kw = trainer_kwargs(named.distributed)  # the named strategy keeps its meaning on gloo
    assert kw["strategy"].process_group_backend == "gloo" and kw["strategy"]._ddp_kwargs["find_unused_parameters"]
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").distributed == cfg.distributed  # dataclass -> YAML -> back
    base = ["train", "--data", store, "--backbone", "vgg_tiny", "--weights", "none", "--image-size", "32"]
    assert_user_error(run_cli(*base, "--out", tmp_path / "a", "--devices", "0"), "distributed.devices")
    assert_user_error(run_cli(*base, "--out", tmp_path / "b", "--accelerator", "tpu"), "distributed.accelerator")
    assert_user_error(run_cli(*base, "--out", tmp_path / "c", "--strategy", "ddp_spawn", "--devices", "2",
                              "--accelerator", "cpu"), "ddp_spawn")
    if not torch.cuda.is_available():
        assert_user_error(run_cli(*base, "--out", tmp_path / "d", "--accelerator", "gpu"), "CUDA is not available")
    assert not any((tmp_path / x).exists() for x in "abcd")  # refused before any run folder appears


def test_train_killed_mid_epoch_resumes_where_the_loader_stopped(store, tmp_path):
    from pneumoscope.data.store import Store

    n_train = Store(store).count("train")
    overrides = {**TINY, "train.checkpoint_every_n_steps": 1, "train.batch_size": 4}
    out, rec = tmp_path / "run", tmp_path / "rec"
    killed = run_driver(tmp_path, store, out, rec, overrides, kill_at_step=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpt = torch.load(out / "state" / "stage1-step.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0  # the state after step 2, mid-epoch
    assert ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"], "no loader state in the checkpoint"
    first = [r for r in records(rec) if r["kind"] == "batch"]
    resumed = run_driver(tmp_path, store, out, rec, overrides, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = [r for r in records(rec) if r["kind"] == "batch" and r["pid"] != first[0]["pid"]]
    epoch0 = [i for r in first if r["step"] <= 2 for i in r["ids"]] + [i for r in after if r["epoch"] == 0 for i in r["ids"]]
    train_ids = {int(r["id"]) for r in Store(store).rows(("train",))}
    assert len(epoch0) == n_train and set(epoch0) == train_ids  # every image once: none lost, none repeated
    assert min(r["step"] for r in after) == 3  # continued after step 2, not from the start
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples_per_epoch"] == [n_train, n_train]
