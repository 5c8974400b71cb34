"""Dataset audit: acquisition cues that alone tell the classes (or two sites) apart.

A classifier learns whatever separates its training classes, and in chest X-ray collections
that is often how the images were made rather than what they show. In the Kaggle pneumonia
data, for example, the NORMAL originals are wider than tall by 1.1-1.4 and the PNEUMONIA ones
by 1.25-1.75 (its 16 full-resolution validation images); a third party squashed them all to
224 x 224, so PNEUMONIA chests look narrower, and a model can read the label off the squash.
Auditing ``chest_xray_224`` shows it: ``anisotropy`` alone separates the training classes
(AUC 0.83), and the test NORMALs sit between train NORMAL and PNEUMONIA on it.

The audit measures cheap statistics that carry acquisition, not anatomy, on each image:

* ``aspect``: width / height of the stored image (constant once a dataset was resized);
* ``megapixels``: its size;
* ``anisotropy``: mean horizontal over mean vertical intensity gradient in the central 60 %
  of the image after resizing it to a square, as the model sees it. Squashing a wide image
  raises it (ribs and edges get steeper), stretching lowers it;
* ``border``: the share of the square image outside the box of rows and columns whose mean
  grey is at least 0.1 (black collimation and padding margins of wide views);
* ``brightness`` and ``contrast``: mean and standard deviation of grey;
* ``marks_tl``, ``marks_tr``, ``marks_bl``, ``marks_br``: the share of each corner (a square of
  20 % of the side, top-left to bottom-right as displayed) covered by small bright marks, the
  burned-in lead markers and text of the acquisition: pixels more than 0.25 above the corner's
  grey opening at 4 % of the side, which keeps strokes and drops the broad shapes of anatomy.
  Where markers sit depends on the site, the room and the period; in the Kaggle training split a
  top-left one is several times as common on PNEUMONIA images (``marks_tl`` AUC about 0.7), and
  the test NORMALs the models get wrong carry it too. Corners are measured apart because the
  classes can differ in opposite directions at different corners.

For each cue it reports the class medians and the ROC AUC of the cue alone as a PNEUMONIA
score (0.5: useless, 1.0 or 0.0: it separates the classes on its own). Given a second
collection (another site, or the test split), it also reports, class by class, how far the
cue moved: the AUC of the cue for telling the two collections apart within that class.
A cue that separates the classes in training and moves between collections is a shortcut
the model can learn and will pay for at the other site; augment or normalise it away (the
offline configuration's aspect jitter exists because of ``anisotropy`` here). Part of a
cue's separation can be the disease itself (consolidation lowers contrast, for one), so the
audit flags risks for a person to judge; it does not decide.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import CLASS_NAMES, Sample, map_images, resolve_split_samples
from .io import read_image

MARK_CORNERS = ("tl", "tr", "bl", "br")
CUES = ("aspect", "megapixels", "anisotropy", "border", "brightness", "contrast",
        *(f"marks_{c}" for c in MARK_CORNERS))
AUDIT_SIZE = 256  # the square every image is resized to for the cues the model sees
BORDER_GREY = 0.1  # rows/columns darker than this on average count as margin
STRONG, MODERATE = 0.75, 0.65  # |AUC - 0.5| + 0.5 at which a cue is flagged
MARK_CORNER = 0.2  # side of each corner square searched for burned-in marks, of the image side
MARK_OPENING = 0.04  # the grey opening's square, of the side: wider than a stroke, narrower than anatomy
MARK_LIFT = 0.25  # how far above the opening a pixel must be to count as a mark (grey in [0, 1])


def corner_marks(sq: np.ndarray) -> dict[str, float]:
    """Share of each corner of a square grey image (S, S) in [0, 1] covered by small bright marks."""
    from scipy import ndimage

    size = sq.shape[0]
    k = int(round(size * MARK_CORNER))
    o = max(3, int(round(size * MARK_OPENING)))
    boxes = {"tl": sq[:k, :k], "tr": sq[:k, -k:], "bl": sq[-k:, :k], "br": sq[-k:, -k:]}
    return {f"marks_{c}": float(((b - ndimage.grey_opening(b, size=(o, o))) > MARK_LIFT).mean())
            for c, b in boxes.items()}


def image_cues(gray: np.ndarray, size: int = AUDIT_SIZE) -> dict[str, float]:
    """The audit's cues of one grey image (H, W) in [0, 1]."""
    h, w = gray.shape
    t = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    sq = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0].clamp(0, 1)
    lo, hi = int(round(size * 0.2)), int(round(size * 0.8))
    centre = sq[lo:hi, lo:hi]
    gx = (centre[:, 1:] - centre[:, :-1]).abs().mean()
    gy = (centre[1:, :] - centre[:-1, :]).abs().mean()
    rows = (sq.mean(dim=1) >= BORDER_GREY).nonzero()
    cols = (sq.mean(dim=0) >= BORDER_GREY).nonzero()
    if len(rows) and len(cols):
        inside = (rows[-1] - rows[0] + 1).item() * (cols[-1] - cols[0] + 1).item()
    else:
        inside = 0
    return {
        "aspect": w / h,
        "megapixels": w * h / 1e6,
        "anisotropy": float(gx / gy) if gy > 0 else float("nan"),
        "border": 1.0 - inside / (size * size),
        "brightness": float(sq.mean()),
        "contrast": float(sq.std()),
        **corner_marks(sq.numpy()),
    }


def measure(samples: Sequence[Sample], progress: bool = True, desc: str = "auditing", workers: int | None = None) -> np.ndarray:
    """Cues of every sample → (N, len(CUES)); a bad file stops with an error naming it."""

    def one(s: Sample) -> list[float]:
        c = image_cues(read_image(s.path))
        return [c[k] for k in CUES]

    rows = list(map_images(one, samples, progress, desc, workers))
    return np.asarray(rows, dtype=np.float64).reshape(len(samples), len(CUES))


def _auc(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """P(pos > neg) + ½ P(tie): the cue's ROC AUC as a score for ``pos``; None if a side is empty."""
    neg, pos = neg[np.isfinite(neg)], pos[np.isfinite(pos)]
    if len(neg) == 0 or len(pos) == 0:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))


def _quartiles(v: np.ndarray) -> list[float]:
    v = v[np.isfinite(v)]
    return [float(x) for x in np.percentile(v, [25, 50, 75])] if len(v) else [float("nan")] * 3


def _strength(auc: float | None) -> str:
    if auc is None:
        return ""
    d = abs(auc - 0.5) + 0.5
    return "strong" if d >= STRONG else "moderate" if d >= MODERATE else ""


@dataclass
class CueRow:
    cue: str
    quartiles: dict[str, list[float]]  # class → [q1, median, q3] in the audited collection
    class_auc: float | None  # the cue alone as a PNEUMONIA score
    flag: str  # strong | moderate | constant | ""
    compare_quartiles: dict[str, list[float]] = field(default_factory=dict)
    shift_auc: dict[str, float | None] = field(default_factory=dict)  # class → AUC for "from the compared collection"


@dataclass
class AuditReport:
    data: str
    counts: dict[str, int]
    rows: list[CueRow]
    compare: str | None = None
    compare_counts: dict[str, int] = field(default_factory=dict)

    def flagged(self) -> list[CueRow]:
        return [r for r in self.rows if r.flag in ("strong", "moderate")]

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        from ..fileio import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    def lines(self) -> list[str]:
        """A plain-text table: one line per cue, then the flags explained."""
        n, p = CLASS_NAMES
        head = f"{'cue':<11} {n + ' median':>15} {p + ' median':>17} {'class AUC':>9}"
        if self.compare:
            head += f"  {n + ' shift':>13} {p + ' shift':>15}"
        out = [f"{self.data}: {self.counts[n]} {n}, {self.counts[p]} {p}"]
        if self.compare:
            out.append(f"compared with {self.compare}: {self.compare_counts[n]} {n}, {self.compare_counts[p]} {p}")
        out.append(head)
        for r in self.rows:
            auc = "n/a" if r.class_auc is None else f"{r.class_auc:.3f}"
            line = f"{r.cue:<11} {r.quartiles[n][1]:>15.4g} {r.quartiles[p][1]:>17.4g} {auc:>9}"
            if self.compare:
                line += "".join(f"  {_fmt(r.shift_auc.get(c)):>{len(c) + 6}}" for c in (n, p))
            out.append(line + (f"  [{r.flag}]" if r.flag else ""))
        out.append(
            "class AUC: the cue alone as a PNEUMONIA score (0.5 tells nothing; near 0 or 1 it separates the classes)"
            + ("; shift: the same, telling the compared collection from this one within a class" if self.compare else "")
        )
        constant = [r.cue for r in self.rows if r.flag == "constant"]
        if constant:
            out.append(
                f"{', '.join(constant)}: the same for every image"
                + ("; the images were stored at one shape, so anisotropy is what shows a squash" if "aspect" in constant else "")
            )
        flagged = self.flagged()
        if flagged:
            out.append(
                "these cues alone separate the classes; where acquisition rather than disease makes them differ, "
                "a model can learn them instead of the disease: augment or normalise them away"
            )
        for r in flagged:
            assert r.class_auc is not None
            moved = [f"{c} {_fmt(a)}" for c, a in r.shift_auc.items() if _strength(a)]
            out.append(
                f"  {r.cue}: AUC {r.class_auc:.3f}, higher in {p if r.class_auc > 0.5 else n}"
                + (f"; moved between the collections (shift {', '.join(moved)})" if moved else "")
            )
        few = min(self.counts.values())
        if few < 30:
            out.append(f"only {few} images in the smaller class: these AUCs are rough")
        return out


def _fmt(auc: float | None) -> str:
    return "n/a" if auc is None else f"{auc:.3f}"


def audit(data: str | Path, compare: str | Path | None = None, progress: bool = True) -> AuditReport:
    """Audit ``data`` (a split folder, a dataset root's train/ or a CSV's train rows), optionally
    against ``compare`` (a split folder, a dataset root's test/ or a CSV's test rows)."""
    samples, folder = resolve_split_samples(data, "train")
    cues = measure(samples, progress, desc=f"auditing {folder.name}")
    labels = np.array([s.label for s in samples])
    other = other_labels = None
    other_folder = None
    if compare is not None:
        other_samples, other_folder = resolve_split_samples(compare, "test")
        other = measure(other_samples, progress, desc=f"auditing {other_folder.name}")
        other_labels = np.array([s.label for s in other_samples])
    rows = []
    for j, cue in enumerate(CUES):
        v = cues[:, j]
        quart = {c: _quartiles(v[labels == k]) for k, c in enumerate(CLASS_NAMES)}
        finite = v[np.isfinite(v)]
        constant = len(finite) > 0 and np.ptp(finite) == 0
        auc = None if constant else _auc(v[labels == 0], v[labels == 1])
        row = CueRow(cue, quart, auc, "constant" if constant else _strength(auc))
        if other is not None and other_labels is not None:
            w = other[:, j]
            row.compare_quartiles = {c: _quartiles(w[other_labels == k]) for k, c in enumerate(CLASS_NAMES)}
            row.shift_auc = {c: _auc(v[labels == k], w[other_labels == k]) for k, c in enumerate(CLASS_NAMES)}
        rows.append(row)
    counts = {c: int((labels == k).sum()) for k, c in enumerate(CLASS_NAMES)}
    other_counts = {c: int((other_labels == k).sum()) for k, c in enumerate(CLASS_NAMES)} if other_labels is not None else {}
    return AuditReport(str(folder), counts, rows, str(other_folder) if other_folder else None, other_counts)
