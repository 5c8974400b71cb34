"""``train.select: pointing``: keep the epoch whose Grad-CAM points best at the validation lesions."""

from __future__ import annotations

import json

import lightning as L
import pytest

TINY = {
    "model.backbone": "vgg_tiny", "model.weights": "none", "data.image_size": 32, "data.val_source": "val",
    "train.precision": "fp32", "train.device": "cpu", "train.batch_size": 8, "train.seed": 0,
    "train.stages": [{"name": "stage1", "epochs": 4, "lr": 3e-3, "trainable_from": "all", "early_stopping_patience": 4}],
}


class _Record(L.Callback):
    def __init__(self) -> None:
        self.rows: list[tuple[float, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            m = trainer.callback_metrics
            self.rows.append((float(m["val_pointing"]), float(m["val_loss"])))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from pneumoscope.data.synth import synth_dataset

    root = tmp_path_factory.mktemp("sel") / "data"
    synth_dataset(root, n=96, size=32, seed=3, difficulty=0.2, splits=(0.5, 0.3, 0.2))
    return root


def test_the_kept_epoch_is_the_best_pointing_then_the_lowest_loss(phantoms, tmp_path):
    from pneumoscope.config import load_config
    from pneumoscope.training import train

    rec = _Record()
    res = train(load_config(None, {**TINY, "train.select": "pointing"}), phantoms, tmp_path / "run", progress=False,
                callbacks=[rec])
    assert len(rec.rows) == 4 and all(0.0 <= p <= 1.0 for p, _ in rec.rows)
    want = max(range(4), key=lambda i: (rec.rows[i][0], -rec.rows[i][1])) + 1
    assert res.best_epoch == want
    assert res.best_val_loss == pytest.approx(rec.rows[want - 1][1])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] == want
    from pneumoscope.checkpoint import read_metadata

    val = read_metadata(tmp_path / "run" / "best.ckpt")["info"]["validation"]
    assert val["epoch"] == want and val["val_pointing"] == pytest.approx(rec.rows[want - 1][0])
    # metrics.csv and curves.png carry the pointing of every epoch.
    from pneumoscope.training.curves import read_metrics

    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r["val_pointing"] for r in rows] == pytest.approx([p for p, _ in rec.rows], abs=1e-5)
    assert (tmp_path / "run" / "curves.png").is_file()


def test_pointing_needs_masks_and_says_where(phantoms, tmp_path):
    import shutil

    from pneumoscope.config import load_config
    from pneumoscope.errors import ConfigError
    from pneumoscope.training import train

    bare = tmp_path / "bare"
    shutil.copytree(phantoms, bare, ignore=shutil.ignore_patterns("masks"))
    with pytest.raises(ConfigError, match=r"train.select: pointing needs lesion masks .*masks"):
        train(load_config(None, {**TINY, "train.select": "pointing"}), bare, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing half-made


def test_select_accepts_pointing_and_rejects_others():
    from pneumoscope.config import load_config
    from pneumoscope.errors import ConfigError

    assert load_config(None, {"train.select": "pointing"}).train.select == "pointing"
    with pytest.raises(ConfigError, match="best, last or pointing"):
        load_config(None, {"train.select": "auc"}).validate()


@pytest.mark.parametrize("kind", ["folder", "boxes"])
def test_lesion_masks_from_a_folder_or_rsna_boxes(phantoms, tmp_path, kind):
    """Masks kept elsewhere (named like the images) or RSNA boxes serve the selection too."""
    import shutil

    import numpy as np
    from PIL import Image

    from pneumoscope.config import load_config
    from pneumoscope.training import train

    bare = tmp_path / "bare"
    shutil.copytree(phantoms, bare, ignore=shutil.ignore_patterns("masks"))
    val_masks = sorted((phantoms / "masks" / "val" / "PNEUMONIA").glob("*.png"))
    assert val_masks
    if kind == "folder":
        source = tmp_path / "lesions"
        (source / "anywhere").mkdir(parents=True)
        for m in val_masks:
            shutil.copy(m, source / "anywhere" / m.name)
    else:
        source = tmp_path / "boxes.csv"
        lines = ["patientId,x,y,width,height,Target"]
        for m in val_masks:
            ys, xs = np.nonzero(np.asarray(Image.open(m)) > 127)
            lines.append(f"{m.stem},{xs.min()},{ys.min()},{xs.max() - xs.min() + 1},{ys.max() - ys.min() + 1},1")
        source.write_text("\n".join(lines) + "\n")
    rec = _Record()
    cfg = load_config(None, {**TINY, "train.select": "pointing", "train.lesion_masks": str(source)})
    res = train(cfg, bare, tmp_path / "run", progress=False, callbacks=[rec])
    assert len(rec.rows) == 4 and res.best_epoch == max(range(4), key=lambda i: (rec.rows[i][0], -rec.rows[i][1])) + 1


def test_lesion_masks_errors_are_one_line_and_leave_no_run(phantoms, tmp_path):
    from pneumoscope.config import load_config
    from pneumoscope.errors import ConfigError
    from pneumoscope.training import train

    with pytest.raises(ConfigError, match=r"train.lesion_masks: .*nowhere does not exist"):
        train(load_config(None, {**TINY, "train.select": "pointing", "train.lesion_masks": str(tmp_path / "nowhere")}),
              phantoms, tmp_path / "run", progress=False)
    other = tmp_path / "other.csv"
    other.write_text("patientId,x,y,width,height,Target\nsomeone-else,1,1,4,4,1\n")
    with pytest.raises(ConfigError, match="no patientId matches"):
        train(load_config(None, {**TINY, "train.select": "pointing", "train.lesion_masks": str(other)}),
              phantoms, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="read only by train.select: pointing"):
        load_config(None, {**TINY, "train.lesion_masks": str(other)}).validate()


def test_a_kept_epoch_far_behind_on_val_loss_is_flagged(tmp_path):
    """A model that never learns to point keeps its luckiest early epoch; the run says so."""
    from pneumoscope.training.run import selection_caveat

    head = "epoch,stage,train_loss,train_acc,val_loss,val_acc,val_auc,val_pointing,lr,samples,seconds\n"
    rows = ["1,s,0.7,0.5,0.69,0.52,0.66,0.52,0.001,8,1", "2,s,0.6,0.6,0.59,0.59,0.73,0.73,0.001,8,1",
            "3,s,0.4,0.9,0.20,0.96,0.99,0.50,0.001,8,1", "4,s,0.3,0.9,0.18,0.97,0.99,0.45,0.001,8,1"]
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(head + "\n".join(rows) + "\n")
    msg = selection_caveat(csv_path, kept_epoch=2)
    assert msg and "kept epoch 2" in msg and "epoch 4 reached val_loss 0.180" in msg
    assert selection_caveat(csv_path, kept_epoch=3) is None  # 0.20 is within 1.5x of 0.18
    # Lower-resolution epochs (no pointing) do not count as the yardstick.
    csv_path.write_text(head + "1,a,0.3,0.9,0.05,0.99,0.99,,0.001,8,1\n" + "\n".join(rows[2:]) + "\n")
    assert selection_caveat(csv_path, kept_epoch=3) is None
