"""``pneumoscope manifest``: each public dataset's own files, fabricated small in the real layouts.

The image files are tiny real images (a manifest only needs them to exist, but the round trip
through ``load_splits`` reads the manifest the way training does).
"""

from __future__ import annotations

import csv
import gzip
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error
from PIL import Image

from pneumoscope.data.dataset import load_splits, read_manifest
from pneumoscope.data.manifests import build_manifest, write_manifest
from pneumoscope.errors import DataError


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # distinct content per file: training merges patients that share a byte-identical image
    seed = zlib.crc32(str(path).encode())
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
    return path


def _write(path: Path, text: str, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "label", "patient_id", "split"]
        return list(reader)


def _by_path(result) -> dict[str, tuple[str, str, str]]:
    return {r.path.name: (r.label, r.patient_id, r.split) for r in result.rows}


# --------------------------------------------------------------------------- kaggle


def test_kaggle_folders_become_train_and_test(tmp_path):
    src = tmp_path / "chest_xray"
    _img(src / "train/NORMAL/IM-0001-0001.jpeg")
    _img(src / "train/PNEUMONIA/person12_bacteria_1.jpeg")
    _img(src / "val/NORMAL/NORMAL2-IM-0002-0001.jpeg")
    _img(src / "val/PNEUMONIA/person13_virus_2.jpeg")
    _img(src / "test/NORMAL/IM-0003-0001.jpeg")
    _img(src / "test/PNEUMONIA/person14_virus_3.jpeg")
    r = build_manifest("kaggle", src)
    got = _by_path(r)
    assert got["IM-0001-0001.jpeg"] == ("NORMAL", "IM-0001", "train")
    assert got["person12_bacteria_1.jpeg"] == ("PNEUMONIA", "person12", "train")
    assert got["NORMAL2-IM-0002-0001.jpeg"] == ("NORMAL", "IM-0002", "train")  # val/ joins the training pool
    assert got["person14_virus_3.jpeg"] == ("PNEUMONIA", "person14", "test")
    assert {r.split for r in r.rows} == {"train", "test"}


# --------------------------------------------------------------------------- rsna


RSNA_LABELS = """patientId,x,y,width,height,Target
0004cfab-14fd-4e49-80ba-63a80b6bddd6,,,,,0
00436515-870c-4b36-a041-de91049b9ab4,264.0,152.0,213.0,379.0,1
00436515-870c-4b36-a041-de91049b9ab4,562.0,152.0,256.0,453.0,1
00704310-78a8-4b38-8475-49f4573b2dbb,323.0,577.0,160.0,104.0,1
00704310-78a8-4b38-8475-49f4573b2dbb,,,,,0
0099b9c6-missing-on-disk,,,,,0
"""


def _rsna(root: Path, labels_name: str = "stage_2_train_labels.csv", images: str = "stage_2_train_images") -> Path:
    _write(root / labels_name, RSNA_LABELS)
    for pid in ("0004cfab-14fd-4e49-80ba-63a80b6bddd6", "00436515-870c-4b36-a041-de91049b9ab4",
                "00704310-78a8-4b38-8475-49f4573b2dbb"):
        (root / images).mkdir(parents=True, exist_ok=True)
        (root / images / f"{pid}.dcm").write_bytes(b"\0" * 132 + b"DICM")
    return root


def test_rsna_one_row_per_patient_positive_if_any_box(tmp_path):
    r = build_manifest("rsna", _rsna(tmp_path / "rsna"))
    got = _by_path(r)
    assert len(r.rows) == 3  # several box rows per patient collapse to one image
    assert got["0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm"] == ("NORMAL", "0004cfab-14fd-4e49-80ba-63a80b6bddd6", "train")
    assert got["00436515-870c-4b36-a041-de91049b9ab4.dcm"][0] == "PNEUMONIA"
    assert got["00704310-78a8-4b38-8475-49f4573b2dbb.dcm"][0] == "PNEUMONIA"  # one of its rows has Target 1
    assert r.skipped["missing images"] == 1
    assert "0099b9c6-missing-on-disk" in r.missing_examples[0]


def test_rsna_labels_and_images_elsewhere(tmp_path):
    root = _rsna(tmp_path / "rsna", labels_name="stage_1_train_labels.csv", images="stage_1_train_images")
    with pytest.raises(DataError, match="stage_2_train_labels.csv: not found; expected .*patientId, x, y, width, height, Target"):
        build_manifest("rsna", root)
    r = build_manifest("rsna", root, labels=root / "stage_1_train_labels.csv", images=root / "stage_1_train_images")
    assert len(r.rows) == 3


def test_rsna_missing_column_names_the_file_and_columns(tmp_path):
    root = _rsna(tmp_path / "rsna")
    _write(root / "stage_2_train_labels.csv", "patientId,x,y,width,height,Label\nabc,,,,,0\n")
    with pytest.raises(DataError) as e:
        build_manifest("rsna", root)
    msg = str(e.value)
    assert str(root / "stage_2_train_labels.csv") in msg and "no column Target" in msg
    assert "patientId, x, y, width, height, Target" in msg


# --------------------------------------------------------------------------- nih

# The header as shipped: OriginalImage[Width,Height] splits into two CSV columns, and a trailing comma.
NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
NIH_ROWS = """00000001_000.png,Cardiomegaly,0,1,58,M,PA,2682,2749,0.143,0.143
00000001_001.png,Cardiomegaly|Pneumonia,1,1,58,M,PA,2894,2729,0.143,0.143
00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171
00000003_000.png,Infiltration|Pneumonia|Effusion,0,3,74,F,AP,2500,2048,0.168,0.168
00000004_000.png,Pneumonia_like_but_not,0,4,74,F,AP,2500,2048,0.168,0.168
00000005_000.png,No Finding,0,5,30,F,PA,2500,2048,0.168,0.168
"""


def _nih(root: Path) -> Path:
    _write(root / "Data_Entry_2017.csv", NIH_HEADER + NIH_ROWS)
    _write(root / "train_val_list.txt", "00000001_000.png\n00000001_001.png\n00000003_000.png\n00000004_000.png\n")
    _write(root / "test_list.txt", "00000002_000.png\n00000005_000.png\n")
    _img(root / "images_001/images/00000001_000.png")  # the Kaggle mirror's layout
    _img(root / "images_001/images/00000001_001.png")
    _img(root / "images_002/images/00000002_000.png")
    _img(root / "images/00000003_000.png")  # the official tarballs' layout
    _img(root / "images/00000004_000.png")
    return root  # 00000005_000.png is missing: a partial download


def test_nih_quirky_header_labels_splits_and_both_image_layouts(tmp_path):
    r = build_manifest("nih", _nih(tmp_path / "nih"))
    got = _by_path(r)
    assert got == {
        "00000001_000.png": ("NORMAL", "1", "train"),
        "00000001_001.png": ("PNEUMONIA", "1", "train"),
        "00000002_000.png": ("NORMAL", "2", "test"),
        "00000003_000.png": ("PNEUMONIA", "3", "train"),
        "00000004_000.png": ("NORMAL", "4", "train"),  # a label must be exactly "Pneumonia"
    }
    assert r.skipped["missing images"] == 1


def test_nih_without_test_list_is_a_clear_error(tmp_path):
    root = _nih(tmp_path / "nih")
    (root / "test_list.txt").unlink()
    with pytest.raises(DataError, match="test_list.txt: not found; expected NIH ChestX-ray14's official split"):
        build_manifest("nih", root)


# --------------------------------------------------------------------------- chexpert

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices\n")


def _chexpert_row(path: str, view: str, pneumonia: str) -> str:
    return f"{path},Female,68,{view},{'AP' if view == 'Frontal' else ''},,,,1.0,,,,{pneumonia},,,,,,\n"


def _chexpert(root: Path) -> Path:
    folder = root / "CheXpert-v1.0-small"
    train = [
        ("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Frontal", "1.0"),
        ("CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg", "Frontal", "0.0"),
        ("CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg", "Lateral", "1.0"),
        ("CheXpert-v1.0-small/train/patient00003/study2/view1_frontal.jpg", "Frontal", ""),
        ("CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg", "Frontal", "-1.0"),
    ]
    valid = [("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "Frontal", "1.0")]
    _write(folder / "train.csv", CHEXPERT_HEADER + "".join(_chexpert_row(*r) for r in train))
    _write(folder / "valid.csv", CHEXPERT_HEADER + "".join(_chexpert_row(*r) for r in valid))
    for p, _, _ in train + valid:
        _img(root / p)
    return root


def test_chexpert_labels_views_uncertain_and_splits(tmp_path):
    root = _chexpert(tmp_path / "data")
    r = build_manifest("chexpert", root)
    got = {(r.patient_id, r.path.name): (r.label, r.split) for r in r.rows}
    assert got == {
        ("patient00001", "view1_frontal.jpg"): ("PNEUMONIA", "train"),
        ("patient00002", "view1_frontal.jpg"): ("NORMAL", "train"),
        ("patient00003", "view1_frontal.jpg"): ("NORMAL", "train"),  # blank is negative
        ("patient64541", "view1_frontal.jpg"): ("PNEUMONIA", "test"),  # valid.csv is the test split
    }
    assert r.skipped == {"lateral views": 1, "uncertain labels": 1}
    # the folder itself works as SOURCE too, and the policies change what is kept
    r2 = build_manifest("chexpert", root / "CheXpert-v1.0-small", uncertain="positive", views="all")
    labels = {(r.patient_id, r.path.name): r.label for r in r2.rows}
    assert labels[("patient00004", "view1_frontal.jpg")] == "PNEUMONIA"
    assert labels[("patient00002", "view2_lateral.jpg")] == "PNEUMONIA"
    r3 = build_manifest("chexpert", root, uncertain="negative")
    assert {(r.patient_id, r.label) for r in r3.rows} >= {("patient00004", "NORMAL")}


def test_chexpert_wrong_table_names_the_file_and_columns(tmp_path):
    root = _chexpert(tmp_path / "data")
    _write(root / "CheXpert-v1.0-small/valid.csv", "Path,Sex,Age\nx,Male,3\n")
    with pytest.raises(DataError) as e:
        build_manifest("chexpert", root)
    assert "valid.csv: no column Frontal/Lateral, Pneumonia; expected the CheXpert labels with columns Path, Frontal/Lateral, Pneumonia" in str(e.value)


# --------------------------------------------------------------------------- mimic


def _mimic(root: Path, gz: bool = True) -> Path:
    ext = ".csv.gz" if gz else ".csv"
    _write(root / f"mimic-cxr-2.0.0-chexpert{ext}",
           "subject_id,study_id,Atelectasis,Cardiomegaly,Pneumonia,No Finding\n"
           "10000032,50414267,,,1.0,\n"
           "10000032,53189527,,,0.0,\n"
           "10000764,57375967,1.0,,-1.0,\n"
           "10000898,50771383,,,,1.0\n", gz)
    _write(root / f"mimic-cxr-2.0.0-split{ext}",
           "dicom_id,study_id,subject_id,split\n"
           "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,train\n"
           "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,50414267,10000032,train\n"
           "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,53189527,10000032,validate\n"
           "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,57375967,10000764,train\n"
           "fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818,50771383,10000898,test\n"
           "deadbeef-00000000-00000000-00000000-00000000,59999999,10000898,test\n", gz)
    _write(root / f"mimic-cxr-2.0.0-metadata{ext}",
           "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
           "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544\n"
           "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544\n"
           "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PORTABLE AP),AP,2705,2539\n"
           "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714,10000764,57375967,CHEST (PA AND LAT),PA,3056,2544\n"
           "fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818,10000898,50771383,CHEST (PA AND LAT),PA,3056,2544\n"
           "deadbeef-00000000-00000000-00000000-00000000,10000898,59999999,CHEST (PA AND LAT),PA,3056,2544\n", gz)
    for subj, study, dicom in (
        ("10000032", "50414267", "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"),
        ("10000032", "50414267", "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"),
        ("10000032", "53189527", "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"),
        ("10000764", "57375967", "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"),
        ("10000898", "50771383", "fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818"),
    ):
        _img(root / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{study}" / f"{dicom}.jpg")
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_mimic_labels_by_study_views_and_official_test_split(tmp_path, gz):
    r = build_manifest("mimic", _mimic(tmp_path / "mimic", gz=gz))
    got = {r.path.stem.split("-")[0]: (r.label, r.patient_id, r.split) for r in r.rows}
    assert got == {
        "02aa804e": ("PNEUMONIA", "10000032", "train"),
        "2a2277a9": ("NORMAL", "10000032", "train"),  # "validate" joins train; val is the patient split
        "fffabebf": ("NORMAL", "10000898", "test"),  # blank Pneumonia is negative
    }
    assert r.skipped == {"non-frontal views": 1, "uncertain labels": 1, "studies without labels": 1}
    assert r.rows[0].path.parent.parent.parent.name == "p10"  # files/pXX/pSUBJECT/sSTUDY/ID.jpg


def test_mimic_missing_split_table_is_a_clear_error(tmp_path):
    root = _mimic(tmp_path / "mimic")
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(DataError, match=r"mimic-cxr-2.0.0-split.csv: not found; expected the MIMIC-CXR-JPG split with columns dicom_id, study_id, subject_id, split"):
        build_manifest("mimic", root)


# --------------------------------------------------------------------------- writing + CLI


def test_written_manifest_is_relative_and_trains(tmp_path):
    root = _chexpert(tmp_path / "data")
    out = tmp_path / "manifests" / "chexpert.csv"
    write_manifest(build_manifest("chexpert", root).rows, out)
    rows = _rows(out)
    assert all(not Path(r["path"]).is_absolute() and r["path"].startswith("../data/") for r in rows)
    read = read_manifest(out)  # what training reads: every path resolves
    assert len(read) == 4 and all(s.path.is_file() for s, _ in read)
    assert {sp for _, sp in read} == {"train", "test"}


def test_kaggle_manifest_gives_the_same_patient_split_as_the_folder(tmp_path):
    src = tmp_path / "chest_xray"
    for i in range(8):
        _img(src / f"train/NORMAL/IM-{i:04d}-0001.jpeg")
        _img(src / f"train/PNEUMONIA/person{i}_bacteria_{i}.jpeg")
    _img(src / "test/NORMAL/IM-0100-0001.jpeg")
    _img(src / "test/PNEUMONIA/person100_virus_1.jpeg")
    out = tmp_path / "kaggle.csv"
    write_manifest(build_manifest("kaggle", src).rows, out)
    from_csv, from_folder = load_splits(out, val_fraction=0.25, seed=3), load_splits(src, val_fraction=0.25, seed=3)
    assert [s.path.name for s in from_csv.val] == [s.path.name for s in from_folder.val]
    assert [s.patient_id for s in from_csv.train] == [s.patient_id for s in from_folder.train]
    assert from_csv.test is not None and len(from_csv.test) == 2


def test_cli_writes_the_manifest_and_warns_about_missing_images(run_cli, tmp_path):
    root = _nih(tmp_path / "nih")
    out = tmp_path / "nih.csv"
    res = run_cli("manifest", "--format", "nih", root, "--out", out)
    assert res.exit_code == 0, res.output
    assert "warning: 1 of 6 listed images are not on disk and were skipped" in res.stderr
    assert "00000005_000.png" in res.stderr
    assert f"wrote {out}: 5 images (test: 1 NORMAL / 0 PNEUMONIA; train: 2 NORMAL / 2 PNEUMONIA)" in res.stderr
    assert len(_rows(out)) == 5


def test_cli_bad_layout_is_one_error_line_and_writes_nothing(run_cli, tmp_path):
    root = tmp_path / "rsna"
    _write(root / "stage_2_train_labels.csv", "id,Target\n1,0\n")
    (root / "stage_2_train_images").mkdir()
    out = tmp_path / "m.csv"
    line = assert_user_error(run_cli("manifest", "--format", "rsna", root, "--out", out),
                             "stage_2_train_labels.csv", "patientId, x, y, width, height, Target")
    assert "no column patientId" in line
    assert not out.exists()
    assert_user_error(run_cli("manifest", "--format", "kaggle", tmp_path / "nowhere", "--out", out), "no such folder")
    res = run_cli("manifest", "--format", "dicomdir", root, "--out", out)
    assert res.exit_code == 2 and "dicomdir" in res.output
