"""``pneumoscope explain-eval``: how good are the explanations? One table row per method.

For every test image and method: deletion and insertion AUC of the predicted class's map.
For PNEUMONIA images with ground truth, the PNEUMONIA class's map is scored against the
lesion (pointing game, hit rate, IoU of the map thresholded at 0.5) and the lung fields
(share of the map's mass inside them). The same maps from a copy of the model with its top
layers re-initialised give the randomisation check. A ``random`` row (smooth noise at the
layer's resolution) is the chance level for every column.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.dataset import decode_images, resolve_eval_samples
from ..config import check_seed
from ..errors import ConfigError
from ..fileio import atomic_write_text, check_output_folder
from ..inference import Predictor
from .cam import GRADIENT_METHODS, canonical_method, explain_many
from .groundtruth import folder_masks, lesion_ground_truth
from .quality import (
    deletion_insertion,
    mass_inside,
    overlap_scores,
    pointing_hits,
    random_maps,
    randomized_top_layers,
    rank_correlation,
)

DEFAULT_METHODS = tuple(GRADIENT_METHODS)
COLUMNS = ("method", "deletion_auc", "insertion_auc", "pointing", "hit_rate", "iou", "lung_mass", "rand_spearman")
SANITY_MAX_SPEARMAN = 0.5  # mean rank correlation with the randomised model must fall below this


@dataclass
class ExplainEvalResult:
    rows: list[dict[str, Any]]
    table: str
    csv_path: Path
    json_path: Path
    seconds: float


def _auto_folder(data: Path, name: str) -> Path | None:
    """``masks/``/``lungs/`` of a synthetic dataset root, given the root or one of its splits."""
    for base in (data, data.parent, data.parent.parent):
        if (base / name).is_dir():
            return base / name
    return None


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def explain_eval(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    masks: str | Path | None = None,
    boxes: str | Path | None = None,
    lungs: str | Path | None = None,
    max_images: int | None = None,
    steps: int = 16,
    batch_size: int = 32,
    tolerance: int = 2,
    iou_threshold: float = 0.5,
    device: str = "auto",
    precision: str = "auto",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> ExplainEvalResult:
    """Score explanation methods on a labelled split; write ``explain_eval.csv`` and ``.json``.

    Args:
        checkpoint: a pneumoscope checkpoint; data: a split folder, dataset root or CSV.
        out: folder for the outputs.
        methods: explanation methods (see :data:`~pneumoscope.explanation.cam.METHODS`).
        masks: folder of lesion masks (PNG, named like the images); boxes: an RSNA-format CSV
            instead. Neither: ``masks/`` of a synthetic dataset root if there is one.
        lungs: folder of lung-field masks; default ``lungs/`` of a synthetic dataset root.
        max_images: evaluate a seeded random subset of this many images.
        steps: deletion/insertion steps; tolerance: pointing-game tolerance in pixels;
        iou_threshold: where the [0, 1] map is cut for hit rate and IoU.
    """
    t0 = time.perf_counter()
    names = list(dict.fromkeys(canonical_method(m) for m in methods))
    if masks is not None and boxes is not None:
        raise ConfigError("give lesion --masks or --boxes, not both")
    for name, value, ok, limit in (("steps", steps, steps >= 1, "at least 1"),
                                   ("batch size", batch_size, batch_size >= 1, "at least 1"),
                                   ("tolerance", tolerance, tolerance >= 0, "at least 0"),
                                   ("IoU threshold", iou_threshold, 0 < iou_threshold <= 1, "in (0, 1]")):
        if not ok:
            raise ConfigError(f"{name} must be {limit}, not {value}")
    check_seed(seed)
    check_output_folder(out, "a folder for explain_eval.csv and .json (--out)")  # before any work
    data = Path(data)
    predictor = Predictor(checkpoint, device=device, precision=precision, batch_size=batch_size)
    ckpt, model = predictor.ckpt, predictor.ckpt.model
    samples, source = resolve_eval_samples(data)
    if max_images is not None and max_images < len(samples):
        if max_images < 1:
            raise ConfigError(f"max images must be at least 1, got {max_images}")
        keep = sorted(np.random.default_rng(seed).permutation(len(samples))[:max_images].tolist())
        samples = [samples[i] for i in keep]
    if masks is None and boxes is None:
        masks = _auto_folder(source if source.is_dir() else data, "masks")
    if lungs is None:
        lungs = _auto_folder(source if source.is_dir() else data, "lungs")
    size = ckpt.preprocessing.image_size
    lesion, lung = _ground_truth(samples, size, masks, boxes, lungs)
    log(f"{len(samples)} images from {source}; lesion ground truth for {sum(m is not None for m in lesion)}, "
        f"lung masks for {sum(m is not None for m in lung)}")
    images = decode_images([s.path for s in samples], ckpt.preprocessing, progress, desc="decoding")
    layer = ckpt.target_layer
    rand_model = randomized_top_layers(model, layer, seed=seed).to(predictor.device)
    pos = ckpt.positive_index
    kw: dict[str, Any] = {"layer": layer, "precision": predictor.precision, "batch_size": batch_size}
    rows = {name: _Acc() for name in [*names, "random"]}
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(samples), batch_size), desc="explain-eval", unit="batch", disable=not progress, leave=False):
        sl = slice(start, min(len(samples), start + batch_size))
        x = ckpt.preprocessing.normalize(images[sl]).to(predictor.device)
        pred = explain_many(model, x, names, threshold=predictor.threshold, class_names=ckpt.class_names, **kw)
        first = pred[names[0]]
        coarse = next((e.raw.shape[-2:] for e in pred.values() if e.layer != "input"), (max(1, size // 16),) * 2)
        noise = random_maps(len(x), tuple(coarse), (size, size), seed=seed + start)
        randomised = explain_many(rand_model, x, names, target=first.targets, **kw)
        for name in [*names, "random"]:
            maps = noise if name == "random" else pred[name].maps
            dele, ins = deletion_insertion(
                model, x, maps, first.targets, steps=steps, batch_size=batch_size, precision=predictor.precision, seed=seed,
            )
            rows[name].deletion += dele.tolist()
            rows[name].insertion += ins.tolist()
            if name != "random":
                rows[name].spearman += rank_correlation(maps, randomised[name].maps).tolist()
        # Localisation: the PNEUMONIA evidence on PNEUMONIA images with ground truth.
        idx = [i for i in range(sl.start, sl.stop) if samples[i].label == pos and (lesion[i] is not None or lung[i] is not None)]
        if not idx:
            continue
        local = torch.tensor([i - start for i in idx])
        pmaps = explain_many(model, x[local.to(x.device)], names, target=pos, **kw)
        for name in [*names, "random"]:
            m = (noise[local] if name == "random" else pmaps[name].maps).cpu().numpy()
            les = [k for k, i in enumerate(idx) if lesion[i] is not None and lesion[i].any()]
            if les:
                gt = np.stack([lesion[idx[k]] for k in les])
                hit, iou = overlap_scores(m[les], gt, iou_threshold)
                rows[name].pointing += pointing_hits(m[les], gt, tolerance).tolist()
                rows[name].hit += hit.tolist()
                rows[name].iou += iou.tolist()
            lg = [k for k, i in enumerate(idx) if lung[i] is not None]
            if lg:
                rows[name].lung += mass_inside(m[lg], np.stack([lung[idx[k]] for k in lg])).tolist()
    table_rows = [rows[name].row(name) for name in [*names, "random"]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(table_rows)
    csv_path, json_path = out / "explain_eval.csv", out / "explain_eval.json"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*COLUMNS, "n", "n_lesion", "n_lungs"], lineterminator="\n")
    w.writeheader()
    w.writerows([{k: ("" if v is None else v) for k, v in r.items() if k in w.fieldnames} for r in table_rows])
    atomic_write_text(csv_path, buf.getvalue())
    seconds = time.perf_counter() - t0
    atomic_write_text(json_path, json.dumps({
        "schema_version": 1,
        "checkpoint": str(checkpoint),
        "architecture": ckpt.architecture,
        "layer": layer,
        "data": str(source),
        "lesion_ground_truth": str(masks or boxes) if (masks or boxes) else None,
        "lung_masks": str(lungs) if lungs else None,
        "n_images": len(samples),
        "steps": steps,
        "pointing_tolerance_px": tolerance,
        "iou_threshold": iou_threshold,
        "randomisation": "head and backbone from the explained layer's block up re-initialised; "
                         f"sanity passes when the mean Spearman correlation is below {SANITY_MAX_SPEARMAN}",
        "device": str(predictor.device),
        "precision": predictor.precision,
        "seconds": round(seconds, 1),
        "methods": table_rows,
    }, indent=2))
    return ExplainEvalResult(table_rows, table, csv_path, json_path, seconds)


class _Acc:
    def __init__(self) -> None:
        self.deletion: list[float] = []
        self.insertion: list[float] = []
        self.spearman: list[float] = []
        self.pointing: list[bool] = []
        self.hit: list[bool] = []
        self.iou: list[float] = []
        self.lung: list[float] = []

    def row(self, name: str) -> dict[str, Any]:
        rho = _mean(self.spearman)
        lung_in = _mean(self.lung)
        return {
            "method": name,
            "deletion_auc": _mean(self.deletion),
            "insertion_auc": _mean(self.insertion),
            "pointing": _mean([float(h) for h in self.pointing]),
            "hit_rate": _mean([float(h) for h in self.hit]),
            "iou": _mean(self.iou),
            "lung_mass": lung_in,
            "outside_lung_mass": None if lung_in is None else 1.0 - lung_in,
            "rand_spearman": rho,
            "sanity_pass": None if rho is None else bool(rho < SANITY_MAX_SPEARMAN),
            "n": len(self.deletion),
            "n_lesion": len(self.pointing),
            "n_lungs": len(self.lung),
        }


def _ground_truth(
    samples: Sequence[Any], size: int, masks: str | Path | None, boxes: str | Path | None, lungs: str | Path | None,
) -> tuple[list[np.ndarray | None], list[np.ndarray | None]]:
    lesion = lesion_ground_truth(samples, size, masks=masks, boxes=boxes)
    lung: list[np.ndarray | None] = folder_masks(samples, lungs, size) if lungs is not None else [None] * len(samples)
    return lesion, lung


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as an aligned text table; ``-`` where a measure does not apply."""
    head = ["method", "deletion↓", "insertion↑", "pointing↑", "hit↑", "IoU↑", "in lungs↑", "rand ρ↓", "n"]
    keys = ["deletion_auc", "insertion_auc", "pointing", "hit_rate", "iou", "lung_mass", "rand_spearman"]
    body = [[r["method"], *("-" if r[k] is None else f"{r[k]:.3f}" for k in keys), str(r["n"])] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
    return "\n".join(lines)
