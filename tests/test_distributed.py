"""DDP on two CPU processes (gloo, loopback) from a phantom store: what every rank saw and decided."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_store import TINY, _env, records, run_driver


@pytest.fixture(scope="module")
def ddp_store(tmp_path_factory) -> Path:
    """A store whose train subset splits evenly over 2 ranks, so the union check is exact."""
    from pneumoscope.data.store import prepare_store
    from pneumoscope.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("ddpdata") / "data"
    synth_dataset(root, n=80, size=48, seed=5, difficulty=0.2)
    out = root.parent / "STORE"
    prepare_store(root, out, image_size=32, workers=2, progress=False)
    return out


def _batch_size(n_train: int, world: int) -> int:
    """A batch size that splits the training set into whole batches on every rank (nothing dropped)."""
    return next(b for b in (8, 7, 6, 5, 4, 3, 2, 1) if n_train % (b * world) == 0)


def _check_ddp_run(out: Path, rec: Path, n_train: int, train_ids: set[int], world: int) -> dict:
    ranks = [records(rec, r) for r in range(world)]
    epochs = sorted({r["epoch"] for r in ranks[0] if r["kind"] == "batch"})
    assert epochs, "no training batches recorded"
    for e in epochs:
        seen = [[i for r in rk if r["kind"] == "batch" and r["epoch"] == e for i in r["ids"]] for rk in ranks]
        for a in range(world):
            for b in range(a + 1, world):
                assert not set(seen[a]) & set(seen[b]), f"epoch {e}: ranks {a} and {b} saw the same images"
        union = [i for s in seen for i in s]
        assert len(union) == len(set(union)) == n_train and set(union) == train_ids
    vals = [[(r["epoch"], r["val_loss"], r["val_acc"], r["val_auc"], r["n_val"]) for r in rk if r["kind"] == "val"]
            for rk in ranks]
    assert all(v == vals[0] for v in vals), "validation metrics differ between ranks"
    ends = [[(r["epoch"], r["should_stop"]) for r in rk if r["kind"] == "end"] for rk in ranks]
    assert all(e == ends[0] for e in ends), "ranks stopped at different epochs"
    # Every rank left its process group before exiting, and returned only once rank 0's files were written.
    exits = [[r for r in rk if r["kind"] == "exit"] for rk in ranks]
    assert all(len(e) == 1 and not e[0]["group_alive"] and e[0]["summary_written"] for e in exits), exits
    assert [p.name for p in out.glob("*.ckpt")] == ["best.ckpt"]
    assert sorted(p.name for p in (out / "state").glob("*.ckpt")) == ["stage1-last.ckpt"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == world and summary["samples_per_epoch"] == [n_train] * len(epochs)
    return {"summary": summary, "vals": vals[0], "ends": ends[0]}


def test_two_cpu_processes_split_the_data_and_agree(ddp_store, tmp_path):
    from pneumoscope.checkpoint import read_metadata
    from pneumoscope.data.store import Store

    s = Store(ddp_store)
    n_train = s.count("train")
    assert n_train % 2 == 0
    train_ids = {int(r["id"]) for r in s.rows(("train",))}
    overrides = {**TINY, "distributed.devices": 2, "distributed.accelerator": "cpu",
                 "train.batch_size": _batch_size(n_train, 2),
                 "train.stages": [{"name": "stage1", "epochs": 3, "lr": 1e-3, "early_stopping_patience": 1}]}
    out, rec = tmp_path / "run", tmp_path / "rec"
    proc = run_driver(tmp_path, ddp_store, out, rec, overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = _check_ddp_run(out, rec, n_train, train_ids, 2)
    assert got["summary"]["devices"] == 2 and got["summary"]["num_nodes"] == 1
    # Calibrated on every validation image, gathered from both ranks.
    assert got["vals"][0][4] == s.count("val")
    op = read_metadata(out / "best.ckpt")["operating_point"]
    assert op is None or op["n"] == s.count("val")


def test_late_epochs_freeze_layers_under_ddp(ddp_store, tmp_path):
    """A stage whose last epoch trains from a later layer (train.stages[].late_epochs): DDP's
    reducer is told that parameters may stop taking part, and both ranks still agree."""
    from pneumoscope.data.store import Store

    s = Store(ddp_store)
    n_train = s.count("train")
    overrides = {**TINY, "distributed.devices": 2, "distributed.accelerator": "cpu",
                 "train.batch_size": _batch_size(n_train, 2),
                 "train.stages": [{"name": "stage1", "epochs": 2, "lr": 1e-3, "trainable_from": "all",
                                   "late_epochs": 1, "late_trainable_from": "block3_conv1",
                                   "early_stopping_patience": 5}]}
    out, rec = tmp_path / "run", tmp_path / "rec"
    proc = run_driver(tmp_path, ddp_store, out, rec, overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = _check_ddp_run(out, rec, n_train, {int(r["id"]) for r in s.rows(("train",))}, 2)
    assert [e for e, _ in got["ends"]] == [2]


@pytest.mark.slow
def test_torchrun_two_nodes_on_loopback(ddp_store, tmp_path):
    """``torchrun --nnodes 2 --nproc-per-node 1`` twice on 127.0.0.1, as two machines would run it."""
    from pneumoscope.data.store import Store

    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not installed")
    s = Store(ddp_store)
    overrides = {**TINY, "distributed.devices": 1, "distributed.num_nodes": 2, "distributed.accelerator": "cpu",
                 "train.batch_size": _batch_size(s.count("train"), 2),
                 "train.stages": [{"name": "stage1", "epochs": 2, "lr": 1e-3}]}
    out, rec = tmp_path / "run", tmp_path / "rec"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"data": str(ddp_store), "out": str(out), "record": str(rec), "overrides": overrides}))
    driver = Path(__file__).with_name("_train_driver.py")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    nodes = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                          "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", port,
                          str(driver), str(spec)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=600) for p in nodes]
    for p, (_, err) in zip(nodes, outs):
        assert p.returncode == 0, err[-4000:]
    got = _check_ddp_run(out, rec, s.count("train"), {int(r["id"]) for r in s.rows(("train",))}, 2)
    assert got["summary"]["num_nodes"] == 2 and got["summary"]["devices"] == 1


def test_balanced_epochs_under_ddp_are_drawn_alike_and_dealt_out(tmp_path):
    """train.epoch_sampling: balanced on two CPU processes from in-memory data: each epoch's draw
    (every NORMAL, as many PNEUMONIA) is the same on both ranks and split between them."""
    from pneumoscope.data.synth import synth_dataset

    root = tmp_path / "data"
    synth_dataset(root, n=60, size=40, seed=2, difficulty=0.2)
    normals = sorted((root / "train" / "NORMAL").iterdir())
    for f in normals[6:]:
        f.unlink()
    n_pneumonia = len(list((root / "train" / "PNEUMONIA").iterdir()))
    assert n_pneumonia > 6
    overrides = {**TINY, "data.val_source": "val", "train.epoch_sampling": "balanced", "train.batch_size": 3,
                 "distributed.devices": 2, "distributed.accelerator": "cpu",
                 "train.stages": [{"name": "stage1", "epochs": 3, "lr": 1e-3, "early_stopping_patience": 5}]}
    out, rec = tmp_path / "run", tmp_path / "rec"
    proc = run_driver(tmp_path, root, out, rec, overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [records(rec, r) for r in range(2)]
    draws = []
    for e in range(3):
        seen = [[i for r in rk if r["kind"] == "batch" and r["epoch"] == e for i in r["ids"]] for rk in ranks]
        assert len(seen[0]) == len(seen[1]) == 6 and not set(seen[0]) & set(seen[1])
        draws.append(frozenset(seen[0]) | frozenset(seen[1]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_counts"]["NORMAL"] == 6 and summary["samples_per_epoch"] == [12, 12, 12]
    assert summary["class_weights"] is None
    # The ids are indices into the in-memory training images, listed in that order in splits.csv.
    import csv

    train_rows = [r for r in csv.DictReader(open(out / "splits.csv")) if r["split"] == "train"]
    normal_ids = {i for i, r in enumerate(train_rows) if r["label"] == "NORMAL"}
    assert len(normal_ids) == 6
    assert all(normal_ids <= d for d in draws)  # every NORMAL in every epoch
    assert len(set(draws)) > 1  # PNEUMONIA drawn afresh
