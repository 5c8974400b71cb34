"""Manifests of the public chest X-ray datasets, read from the files each dataset ships.

Every format becomes the project's manifest, ``path,label,patient_id,split``, with paths
relative to the manifest and the labels ``NORMAL``/``PNEUMONIA``:

- ``kaggle``: Kermany et al.'s ``train/ val/ test/`` × ``NORMAL/ PNEUMONIA/`` folders.
- ``rsna``: the RSNA Pneumonia Detection Challenge (``stage_2_train_labels.csv`` + DICOMs).
- ``nih``: NIH ChestX-ray14 (``Data_Entry_2017.csv``, ``test_list.txt``, ``images*/``).
- ``chexpert``: CheXpert (``CheXpert-v1.0[-small]/train.csv``, ``valid.csv``).
- ``mimic``: MIMIC-CXR-JPG (``mimic-cxr-2.0.0-{chexpert,split,metadata}.csv[.gz]``, ``files/``).

Splits are only ``train`` and ``test``: validation is the patient-level split of train that
training makes, as for every other dataset. Partial downloads are common, so an image the
dataset's tables list but the disk lacks is skipped and counted, never fatal. A table that is
not the expected layout is one :class:`~pneumoscope.errors.DataError` naming the file and the
columns it should have.

"NORMAL" in these manifests means "no pneumonia": for NIH, CheXpert and MIMIC it includes
radiographs with other findings, which is what a pneumonia detector meets in practice.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import DataError
from ..fileio import atomic_path
from .dataset import CLASS_NAMES, scan_split_folder

FORMATS = ("kaggle", "rsna", "nih", "chexpert", "mimic")
UNCERTAIN_POLICIES = ("drop", "positive", "negative")
VIEW_POLICIES = ("frontal", "all")
MANIFEST_COLUMNS = ("path", "label", "patient_id", "split")

NORMAL, PNEUMONIA = CLASS_NAMES


@dataclass(frozen=True)
class ManifestRow:
    """One image of a manifest: an absolute path, its label, patient and split."""

    path: Path
    label: str
    patient_id: str
    split: str


@dataclass
class ManifestResult:
    """What :func:`build_manifest` found: the rows and what it left out, by reason."""

    format: str
    rows: list[ManifestRow]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    missing_examples: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and label, e.g. ``{"train": {"NORMAL": 10, "PNEUMONIA": 3}}``."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            out.setdefault(r.split, {n: 0 for n in CLASS_NAMES})[r.label] += 1
        return out

    def summary(self) -> str:
        parts = [
            f"{split}: {c[NORMAL]} {NORMAL} / {c[PNEUMONIA]} {PNEUMONIA}" for split, c in sorted(self.counts().items())
        ]
        line = f"{len(self.rows)} images ({'; '.join(parts) or 'none'})"
        if self.skipped:
            line += "; skipped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return line


# --- reading the datasets' tables ------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, newline="", encoding="utf-8-sig")


def read_table(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of the CSV ``path`` (``.csv`` or ``.csv.gz``), which must have the ``required`` columns.

    Raises:
        DataError: The file is missing, unreadable, or lacks a column; the message names the
            file, the dataset layout and every expected column.
    """
    expected = f"expected the {what} with columns {', '.join(required)}"
    if not path.is_file():
        raise DataError(f"{path}: not found; {expected}")
    try:
        with _open_text(path) as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(f"{path}: no column {', '.join(missing)}; {expected}")
            reader.fieldnames = header
            return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read it ({exc}); {expected}") from exc


def _find_table(folder: Path, name: str) -> Path:
    """``folder/name``, or its ``.gz`` as PhysioNet ships it; the plain name when neither exists."""
    plain = folder / name
    if plain.is_file():
        return plain
    gz = folder / f"{name}.gz"
    return gz if gz.is_file() else plain


def _chexpert_label(value: str, uncertain: str) -> str | None:
    """CheXpert-labeller value → label: 1 positive, 0 or blank negative, -1 by the policy."""
    try:
        v = float(value) if value else 0.0
    except ValueError:
        raise DataError(f"value {value!r}: expected 1, 0, -1 or blank") from None
    if v == 1.0:
        return PNEUMONIA
    if v == -1.0:
        return {"drop": None, "positive": PNEUMONIA, "negative": NORMAL}[uncertain]
    return NORMAL


class _Collector:
    """Accumulates rows, counting images skipped for being absent from the disk."""

    def __init__(self, fmt: str) -> None:
        self.result = ManifestResult(fmt, [])

    def skip(self, reason: str) -> None:
        self.result.skipped[reason] += 1

    def add(self, path: Path, label: str, patient_id: str, split: str, exists: Callable[[Path], bool] | None = None) -> None:
        if not (exists or Path.is_file)(path):
            self.skip("missing images")
            if len(self.result.missing_examples) < 3:
                self.result.missing_examples.append(str(path))
            return
        self.result.rows.append(ManifestRow(path, label, patient_id, split))


# --- the formats ------------------------------------------------------------------------------


def _kaggle(source: Path, **_: object) -> ManifestResult:
    if not (source / "train").is_dir():
        raise DataError(f"{source}: expected the Kaggle layout train/ (val/, test/) x NORMAL/ PNEUMONIA/")
    col = _Collector("kaggle")
    # The official val/ holds 16 images: too few to validate on. They join the training pool and
    # validation is the patient-level split, as for every other dataset.
    for folder, split in (("train", "train"), ("val", "train"), ("test", "test")):
        if (source / folder).is_dir():
            for s in scan_split_folder(source / folder):
                col.add(s.path, CLASS_NAMES[s.label], s.patient_id, split)
    return col.result


RSNA_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")


def _rsna(source: Path, labels: Path | None = None, images: Path | None = None, **_: object) -> ManifestResult:
    labels = labels or source / "stage_2_train_labels.csv"
    images = images or source / "stage_2_train_images"
    rows = read_table(labels, RSNA_COLUMNS, "RSNA Pneumonia Challenge labels (stage_2_train_labels.csv)")
    if not images.is_dir():
        raise DataError(f"{images}: no such folder; expected the RSNA DICOMs (PATIENTID.dcm), or name them with --images")
    positive: dict[str, bool] = {}
    for i, row in enumerate(rows, start=2):
        if row["Target"] not in ("0", "1"):
            raise DataError(f"{labels}:{i}: Target {row['Target']!r}; expected 0 or 1")
        pid = row["patientId"]
        positive[pid] = positive.get(pid, False) or row["Target"] == "1"  # several rows = several boxes
    col = _Collector("rsna")
    for pid, pos in positive.items():
        col.add(images / f"{pid}.dcm", PNEUMONIA if pos else NORMAL, pid, "train")
    return col.result


NIH_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


def _nih_image_index(source: Path, images: Path | None) -> dict[str, Path]:
    """File name → path of every image under ``images*/`` and ``images_*/images/`` (or ``--images``)."""
    roots = [images] if images else sorted(p for p in source.glob("images*") if p.is_dir())
    found: dict[str, Path] = {}
    for root in roots:
        for sub in (root, root / "images"):
            if sub.is_dir():
                with os.scandir(sub) as it:
                    for e in it:
                        if e.is_file():
                            found.setdefault(e.name, Path(e.path))
    return found


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise DataError(f"{path}: not found; expected NIH ChestX-ray14's official split, one image name per line")
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def _nih(source: Path, labels: Path | None = None, images: Path | None = None, **_: object) -> ManifestResult:
    labels = labels or source / "Data_Entry_2017.csv"
    # The shipped header is quirky: "OriginalImage[Width,Height]" splits into two columns and
    # the line ends with a comma; only the columns below are read, by name.
    rows = read_table(labels, NIH_COLUMNS, "NIH ChestX-ray14 table (Data_Entry_2017.csv)")
    test = _read_list(source / "test_list.txt")
    index = _nih_image_index(source, images)
    col = _Collector("nih")
    for row in rows:
        name = row["Image Index"]
        findings = {f.strip() for f in row["Finding Labels"].split("|")}
        label = PNEUMONIA if "Pneumonia" in findings else NORMAL
        path = index.get(name, (images or source / "images") / name)
        col.add(path, label, row["Patient ID"], "test" if name in test else "train", exists=lambda p, n=name: n in index)
    return col.result


CHEXPERT_COLUMNS = ("Path", "Frontal/Lateral", "Pneumonia")
_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


def _chexpert_folder(source: Path) -> Path:
    if (source / "train.csv").is_file():
        return source
    found = sorted(p.parent for p in source.glob("CheXpert-v1.0*/train.csv"))
    if not found:
        raise DataError(f"{source}: expected CheXpert-v1.0[-small]/ with train.csv and valid.csv (or that folder itself)")
    return found[0]


def _chexpert(source: Path, uncertain: str = "drop", views: str = "frontal", images: Path | None = None, **_: object) -> ManifestResult:
    folder = _chexpert_folder(source)
    base = images or folder.parent  # Path is relative to the folder's parent
    col = _Collector("chexpert")
    for table, split in (("train.csv", "train"), ("valid.csv", "test")):
        path = folder / table
        for i, row in enumerate(read_table(path, CHEXPERT_COLUMNS, "CheXpert labels"), start=2):
            if views == "frontal" and row["Frontal/Lateral"] != "Frontal":
                col.skip("lateral views")
                continue
            try:
                label = _chexpert_label(row["Pneumonia"], uncertain)
            except DataError as exc:
                raise DataError(f"{path}:{i}: Pneumonia {exc}") from None
            if label is None:
                col.skip("uncertain labels")
                continue
            m = _CHEXPERT_PATIENT.search(row["Path"])
            if not m:
                raise DataError(f"{path}:{i}: Path {row['Path']!r}; expected …/patientNNNNN/studyN/viewN_….jpg")
            col.add(base / row["Path"], label, m.group(1), split)
    return col.result


MIMIC_LABEL_COLUMNS = ("subject_id", "study_id", "Pneumonia")
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
MIMIC_META_COLUMNS = ("dicom_id", "ViewPosition")


def _mimic(source: Path, uncertain: str = "drop", views: str = "frontal", images: Path | None = None, **_: object) -> ManifestResult:
    labels = {
        r["study_id"]: r["Pneumonia"]
        for r in read_table(_find_table(source, "mimic-cxr-2.0.0-chexpert.csv"), MIMIC_LABEL_COLUMNS, "MIMIC-CXR-JPG CheXpert labels")
    }
    view = {
        r["dicom_id"]: r["ViewPosition"]
        for r in read_table(_find_table(source, "mimic-cxr-2.0.0-metadata.csv"), MIMIC_META_COLUMNS, "MIMIC-CXR-JPG metadata")
    }
    split_path = _find_table(source, "mimic-cxr-2.0.0-split.csv")
    files = images or source / "files"
    col = _Collector("mimic")
    for row in read_table(split_path, MIMIC_SPLIT_COLUMNS, "MIMIC-CXR-JPG split"):
        dicom_id, study, subject = row["dicom_id"], row["study_id"], row["subject_id"]
        if views == "frontal" and view.get(dicom_id, "").upper() not in ("PA", "AP"):
            col.skip("non-frontal views")
            continue
        if study not in labels:
            col.skip("studies without labels")
            continue
        try:
            label = _chexpert_label(labels[study], uncertain)
        except DataError as exc:
            raise DataError(f"mimic-cxr-2.0.0-chexpert.csv study {study}: Pneumonia {exc}") from None
        if label is None:
            col.skip("uncertain labels")
            continue
        path = files / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
        col.add(path, label, subject, "test" if row["split"] == "test" else "train")
    return col.result


_BUILDERS: dict[str, Callable[..., ManifestResult]] = {
    "kaggle": _kaggle, "rsna": _rsna, "nih": _nih, "chexpert": _chexpert, "mimic": _mimic,
}


def build_manifest(
    fmt: str,
    source: str | Path,
    *,
    labels: str | Path | None = None,
    images: str | Path | None = None,
    uncertain: str = "drop",
    views: str = "frontal",
) -> ManifestResult:
    """Read a public dataset as it ships into manifest rows.

    Args:
        fmt: One of :data:`FORMATS`.
        source: The dataset's folder, as downloaded.
        labels: RSNA/NIH: a labels table other than the default (e.g. RSNA stage 1's).
        images: The image folder, where it is not the dataset's default place.
        uncertain: CheXpert/MIMIC: what an uncertain (-1) Pneumonia label becomes:
            ``drop`` (default), ``positive`` or ``negative``.
        views: ``frontal`` (default) keeps PA/AP views where the dataset records the view;
            ``all`` keeps laterals too.

    Raises:
        DataError: An unknown format or option, a missing folder, or a table of the wrong layout.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown manifest format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise DataError(f"--uncertain {uncertain!r}: expected one of {', '.join(UNCERTAIN_POLICIES)}")
    if views not in VIEW_POLICIES:
        raise DataError(f"--views {views!r}: expected one of {', '.join(VIEW_POLICIES)}")
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: no such folder; expected the {fmt} dataset as it ships")
    return _BUILDERS[fmt](
        source, labels=Path(labels) if labels else None, images=Path(images) if images else None,
        uncertain=uncertain, views=views,
    )


def _relative(path: Path, folder: Path) -> str:
    return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()


def write_manifest(rows: Iterable[ManifestRow], out: str | Path) -> Path:
    """Write ``rows`` as ``path,label,patient_id,split`` (paths relative to ``out``), atomically."""
    out = Path(out)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(MANIFEST_COLUMNS)
        for r in rows:
            w.writerow([_relative(r.path, out.parent), r.label, r.patient_id, r.split])
    return out
