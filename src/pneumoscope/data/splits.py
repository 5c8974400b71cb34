"""Patient-level validation splits with byte-identical duplicates kept on one side.

Kaggle file names carry the patient: ``person1234_bacteria_…``/``person1234_virus_…`` and
``IM-0123-…``/``NORMAL2-IM-0123-…``. Splitting by image would put one child's radiographs on
both sides and inflate validation figures, so we split by patient, and we merge patients
that share a byte-identical file so a duplicate can never straddle the split.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError

_PERSON = re.compile(r"person(\d+)_", re.IGNORECASE)
_IM = re.compile(r"(?:NORMAL2-)?IM-(\d+)-", re.IGNORECASE)


def patient_id_from_name(path: str | Path) -> str:
    """Patient id from a Kaggle-style file name; the file stem when no pattern matches.

    ``IM-0123`` and ``NORMAL2-IM-0123`` are grouped together: if they are different children we
    only lose a little randomness, if they are the same child we avoid a leak.
    """
    name = Path(path).name
    m = _PERSON.search(name)
    if m:
        return f"person{int(m.group(1))}"
    m = _IM.search(name)
    if m:
        return f"IM-{int(m.group(1)):04d}"
    return Path(path).stem


def content_hash(path: str | Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def merge_duplicate_groups(paths: Sequence[Path], groups: Sequence[str]) -> list[str]:
    """Union patients that share byte-identical files; returns one group label per path."""
    parent: dict[str, str] = {g: g for g in groups}

    def find(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    first_by_hash: dict[str, str] = {}
    for p, g in zip(paths, groups):
        h = content_hash(p)
        if h in first_by_hash:
            a, b = find(first_by_hash[h]), find(g)
            if a != b:
                parent[max(a, b)] = min(a, b)
        else:
            first_by_hash[h] = g
    return [find(g) for g in groups]


def patient_split(
    labels: Sequence[int], groups: Sequence[str], val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified group split: (train indices, val indices), no group on both sides.

    Uses scikit-learn's ``StratifiedGroupKFold`` with ``round(1 / val_fraction)`` folds and takes
    the first fold as validation, so class balance is kept as well as groups allow.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < val_fraction < 1.0:  # NaN fails this too
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), not {val_fraction!r}")
    y = np.asarray(labels)
    n_folds = max(2, int(round(1.0 / val_fraction)))
    n_groups = len(set(groups))
    if n_groups < n_folds:
        raise DataError(
            f"only {n_groups} patients: too few for a {val_fraction:.0%} patient-level validation split; "
            "add images, raise val_fraction, or pass --val-source val"
        )
    for c in np.unique(y):
        n_class = len({g for g, lab in zip(groups, y) if lab == c})
        if n_class < n_folds:
            from .dataset import CLASS_NAMES  # (dataset imports this module)

            name = CLASS_NAMES[int(c)] if 0 <= int(c) < len(CLASS_NAMES) else f"label {int(c)}"
            # StratifiedGroupKFold would silently leave a class out of validation.
            raise DataError(
                f"class {name} has only {n_class} patient(s), fewer than the {n_folds} a {val_fraction:.0%} "
                "patient-level validation split needs; add images, raise val_fraction, or pass --val-source val"
            )
    sgkf = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    train_idx, val_idx = next(sgkf.split(np.zeros(len(y)), y, groups=list(groups)))
    return np.sort(train_idx), np.sort(val_idx)
