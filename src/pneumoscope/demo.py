"""``pneumoscope demo``: synthesise → train → evaluate → explain → one HTML report.

On synthetic phantoms the planted lesions are known, so the report measures whether the
Grad-CAM hotspot lands on them (pointing game, hotspot mass inside the lesion) rather than
just drawing it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import load_config
from .data.dataset import CLASS_NAMES
from .errors import DataError
from .fileio import atomic_write_text
from .explanation.cam import explain
from .explanation.overlay import hotspot_activation, hotspot_overlay, resize_map
from .inference import Predictor
from .runtime import cpu_summary

SYNTH_CREDIT = "Images are synthetic chest phantoms drawn by pneumoscope; no patient data."
MARKER = ".pneumoscope-demo"
KAGGLE_CREDIT = (
    "Data: Chest X-Ray Images (Pneumonia), Kermany, Zhang, Goldbaum et al., Cell 2018; "
    "Mendeley Data doi:10.17632/rscbjbr9sj.2, CC BY 4.0."
)


METHOD_TITLES = {
    "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
    "layercam": "LayerCAM", "scorecam": "Score-CAM", "occlusion": "occlusion",
}


def _outside_lungs(data_root: Path, paths: list[Path], maps: Any, size: int) -> float | None:
    """Mean share of map mass outside the lung fields, for images with a lung mask."""
    from .explanation.groundtruth import beside_mask, read_mask
    from .explanation.quality import mass_inside

    shares = []
    for p, m in zip(paths, maps.cpu().numpy()):
        lung = beside_mask(data_root, p, "lungs")
        if lung is not None:
            shares.append(1.0 - float(mass_inside(m[None], read_mask(lung, size)[None])[0]))
    vals = [v for v in shares if not np.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _import_pipeline() -> None:
    """Import the training, evaluation and report modules (Lightning, torchmetrics, matplotlib).

    That takes seconds; the demo does it while worker processes draw the phantoms.
    """
    from . import report, training  # noqa: F401
    from .evaluation import evaluate  # noqa: F401


@dataclass
class DemoResult:
    report: Path
    metrics: dict[str, Any]
    localisation: dict[str, Any] | None
    seconds: float
    shortcut: Any = None  # a pneumoscope.shortcut.ShortcutCheck when the check ran
    timings: dict[str, dict[str, float]] | None = None  # step -> {"wall": s, "cpu": s}, as in demo.json


class _StepClock:
    """Wall and CPU seconds of each demo step.

    CPU time counts every thread of this process, so on a shared machine it still says what
    a step costs when the wall clock is stretched by other work.
    """

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, float]] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        """Close the step ``name``: the time since the previous lap (or the start)."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.steps[name] = {"wall": round(wall - self._wall, 2), "cpu": round(cpu - self._cpu, 2)}
        self._wall, self._cpu = wall, cpu


def localisation_scores(cam_maps: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, Any]:
    """How well maps point at known lesions.

    ``pointing``: share of images whose map maximum falls inside the lesion (dilated by 2 px
    for the map's coarse resolution), with ``pointing_ci95``, its Wilson 95 % interval (60
    lesions leave a figure of 0.88 uncertain by about +-0.08); ``hotspot_in_lesion``: mean
    share of the drawn hotspot's mass that lies inside the lesion mask.
    """
    from scipy.stats import binomtest

    from .explanation.quality import pointing_hits

    hits, mass = [], []
    for raw, mask in zip(cam_maps, masks):
        act = hotspot_activation(raw, mask.shape)
        hits.append(bool(pointing_hits(resize_map(raw, mask.shape)[None], mask[None], tolerance=2)[0]))
        total = float(act.sum())
        mass.append(float(act[mask].sum() / total) if total > 0 else 0.0)
    n = len(hits)
    ci = binomtest(int(sum(hits)), n).proportion_ci(method="wilson") if n else None
    return {
        "n": n,
        "pointing": float(np.mean(hits)) if n else None,
        "pointing_ci95": [float(ci.low), float(ci.high)] if ci is not None else None,
        "hotspot_in_lesion": float(np.mean(mass)) if n else None,
    }


def run_demo(
    out: str | Path = "demo-out",
    data: str | Path | None = None,
    *,
    n: int = 800,
    size: int | None = None,
    difficulty: float = 0.25,
    seed: int = 0,
    config: str | Path = "demo",
    overrides: dict[str, Any] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
    replace: bool = False,
    method: str = "gradcam",
    shortcut: bool = True,
) -> DemoResult:
    """Run the whole pipeline into ``out`` and return the report path and figures.

    ``replace`` deletes ``out`` first, but only if an earlier demo wrote it (marker file).
    ``method`` is the explanation method of the gallery and the localisation scores;
    ``shortcut`` adds the shortcut check (synthetic data only; a second small model).
    ``size`` is the phantoms' size in pixels; by default the configuration's image size, so
    nothing is drawn at a resolution the model never sees.
    """
    from .explanation.cam import canonical_method

    method = canonical_method(method)

    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (replace and (out / MARKER).is_file()):
            hint = "" if (out / MARKER).is_file() else " (and it is not an earlier demo, so it is left alone)"
            raise DataError(f"{out}: demo output folder is not empty{hint}; pass another --out or --replace")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `pneumoscope demo`; --replace may delete this folder\n")
    try:
        return _run(out, data, n, size, difficulty, seed, config, overrides, progress, log, t0, method, shortcut)
    except BaseException:
        # A failed demo leaves nothing half-written behind.
        shutil.rmtree(out, ignore_errors=True)
        raise


def _run(
    out: Path,
    data: str | Path | None,
    n: int,
    size: int | None,
    difficulty: float,
    seed: int,
    config: str | Path,
    overrides: dict[str, Any] | None,
    progress: bool,
    log: Callable[[str], None],
    t0: float,
    method: str = "gradcam",
    shortcut: bool = True,
) -> DemoResult:
    from .data.synth import synth_dataset

    clock = _StepClock()
    synthetic = data is None
    # Real data rarely has a usable val/ (Kaggle's holds 16 images, chest_xray_224 none), so
    # a real-data demo validates on a patient-level split of train unless told otherwise.
    defaults = {} if synthetic else {"data.val_source": "split"}
    cfg = load_config(config, {**defaults, **(overrides or {})})
    if synthetic:
        size = size or cfg.data.image_size
        log(f"[1/5] drawing {n} synthetic chest phantoms ({size} px)")
        data_root = out / "data"
        synth_dataset(data_root, n=n, size=size, seed=seed, difficulty=difficulty, progress=progress,
                      meanwhile=_import_pipeline)
    else:
        data_root = Path(data)
        log(f"[1/5] using data from {data_root}")
    from .evaluation.evaluate import evaluate
    from .report import GalleryTile, render_gallery, select_gallery, write_report
    from .training import train

    clock.lap("synth")
    log(f"[2/5] training {cfg.model.backbone} at {cfg.data.image_size} px")
    result = train(cfg, data_root, out / "run", progress=progress)
    kept = {"last": "the last epoch", "pointing": "the epoch pointing best at the validation lesions"}.get(
        cfg.train.select, "the lowest-val_loss epoch")
    log(f"      kept {kept}, {result.best_epoch}: val_loss {result.best_val_loss:.4f} ({result.seconds:.0f} s)")
    if result.summary.get("calibration_summary"):
        log(f"      {result.summary['calibration_summary']}")
    clock.lap("train")
    log("[3/5] evaluating on the test split")
    ev = evaluate(result.checkpoint, data_root, out / "eval", progress=progress, precision=cfg.train.precision)
    log(f"      accuracy {ev.metrics['accuracy']:.3f}, ROC AUC {ev.metrics['roc_auc']:.3f}")

    clock.lap("evaluate")
    log(f"[4/5] explaining the test images ({METHOD_TITLES[method]})")
    predictor = Predictor(result.checkpoint, precision=cfg.train.precision)
    prep = predictor.ckpt.preprocessing
    raws: list[np.ndarray] = []
    for i in range(0, len(ev.images), 64):
        exp = explain(
            predictor.ckpt.model, prep.normalize(ev.images[i : i + 64]).to(predictor.device), method=method,
            layer=predictor.ckpt.target_layer, threshold=predictor.threshold, precision=predictor.precision,
            temperature=predictor.temperature,
        )
        raws += list(exp.raw.cpu().numpy())
    grays = [img.numpy().astype(np.float32) / 255.0 for img in ev.images]

    from .explanation.groundtruth import beside_mask, read_mask

    masks: list[np.ndarray | None] = []
    for s in ev.samples:
        mp = beside_mask(data_root, s.path) if s.label == 1 else None
        masks.append(None if mp is None else read_mask(mp, prep.image_size))
    with_mask = [i for i, m in enumerate(masks) if m is not None]
    loc = None
    if with_mask:
        # Localisation asks whether the model's PNEUMONIA evidence sits on the lesion, so it
        # explains that class for every lesion image, including the ones the model missed.
        x = prep.normalize(ev.images[with_mask]).to(predictor.device)
        lesion = explain(predictor.ckpt.model, x, method=method, layer=predictor.ckpt.target_layer, target="PNEUMONIA",
                         precision=predictor.precision, class_names=predictor.ckpt.class_names,
                         temperature=predictor.temperature)
        loc = localisation_scores(list(lesion.raw.cpu().numpy()), [masks[i] for i in with_mask])  # type: ignore[misc]
        loc["outside_lungs"] = _outside_lungs(data_root, [ev.samples[i].path for i in with_mask], lesion.maps, prep.image_size)

    clock.lap("explain")
    check = None
    if synthetic and shortcut:
        from .shortcut import run_shortcut_check

        log("      shortcut check: training a small model on phantoms with a PNEUMONIA corner marker")
        check = run_shortcut_check(out / "shortcut", seed=seed, method=method, precision=cfg.train.precision,
                                   progress=progress, log=log)
        clock.lap("shortcut")

    log("[5/5] writing the report")
    picks = select_gallery(ev.labels, ev.probs, predictor.threshold)
    tiles = [
        GalleryTile(
            image=hotspot_overlay(grays[i], raws[i]), true_label=int(ev.labels[i]), prob=float(ev.probs[i]),
            threshold=predictor.threshold, group=g, name=ev.samples[i].path.name, contour=masks[i],
        )
        for g, i in picks
    ]
    gallery = render_gallery(tiles, out / "gallery.png", class_names=CLASS_NAMES)
    sections = []
    if loc is not None:
        sections.append((
            "Do the explanations point at the lesions?",
            f"<p>On the {loc['n']} PNEUMONIA test phantoms, whose planted lesions are known (cyan outlines in "
            f"the gallery), the maximum of the {METHOD_TITLES[method]} map for the PNEUMONIA class falls inside the lesion for "
            f"<b>{loc['pointing']:.0%}</b> of images (95 % interval {loc['pointing_ci95'][0]:.0%}-"
            f"{loc['pointing_ci95'][1]:.0%}; pointing game, lesion dilated by 2 px for the map's coarse "
            f"grid), and <b>{loc['hotspot_in_lesion']:.0%}</b> of the red top-5% hotspot's mass lies inside the "
            "lesion on average. The gallery shows the map of the predicted class, as the seed drew it.</p>",
        ))
    if check is not None:
        from .report import figure_html

        inside = "" if loc is None or loc.get("outside_lungs") is None else (
            f" (the demo model above: {loc['outside_lungs']:.0%})")
        honest = "" if loc is None or loc.get("pointing") is None else f" (the demo model above: {loc['pointing']:.0%})"
        sections.append((
            "Would the explanations catch a model that cheats?",
            f"<p>A second small model was trained on phantoms where every PNEUMONIA image carries a bright "
            f"square in the top-left corner, a cue that predicts the label perfectly, like a site-specific "
            f"marker in real data. It scores <b>{check.accuracy_marked:.0%}</b> accuracy on marked test phantoms "
            f"but <b>{check.accuracy_clean:.0%}</b> on the same phantoms without the marker: it learned the "
            f"marker, not the lesions. What its explanations show, on the {check.n} PNEUMONIA test phantoms: "
            f"<b>{check.marker_mass:.0%}</b> of the {METHOD_TITLES[method]} map's mass lies near the marker "
            f"(the marker grown by two cells of the map's grid, {check.marker_area:.0%} of the image, which is "
            f"what a map blind to the marker would put there); the map's maximum is near the marker for "
            f"<b>{check.on_marker:.0%}</b> and on the lesion for <b>{check.lesion_pointing:.0%}</b>{honest}; "
            f"<b>{check.outside_lungs:.0%}</b> of the mass falls outside the lung fields{inside}. "
            f"({check.seconds:.0f} s; <code>pneumoscope synth --shortcut</code> draws such data.)</p>"
            + figure_html(check.figure, "The shortcut model's PNEUMONIA evidence, drawn as the seed's red hotspot"),
        ))
    seconds = time.perf_counter() - t0
    steps = ", ".join(f"{k} {v['wall']:.0f}" for k, v in clock.steps.items())
    run_info = {
        "data": str(data_root),
        "model": f"{cfg.model.backbone} (weights: {cfg.model.weights})",
        "image size": cfg.data.image_size,
        "training": f"{result.summary['n_train']} train / {result.summary['n_val']} val images, "
                    f"{result.summary['epochs_run']} epochs, kept {kept} ({result.best_epoch})",
        "explanation": f"{METHOD_TITLES[method]} at {predictor.ckpt.target_layer}, red top-5% hotspot (the seed's style)",
        "device / precision": f"{predictor.device} / {predictor.precision}",
        "CPU": cpu_summary(),
        "checkpoint": str(result.checkpoint),
        "total time": f"{seconds:.0f} s ({steps} s)",
    }
    curves = result.run_dir / "curves.png"
    report = write_report(
        out, title="pneumoscope demo report", metrics=ev.metrics,
        plots={k: ev.out_dir / f"{k}.png" for k in ("confusion_matrix", "roc", "pr", "reliability")},
        gallery=gallery, sections=sections, run_info=run_info,
        credit=SYNTH_CREDIT if synthetic else KAGGLE_CREDIT,
        training_curves=curves if curves.is_file() else None,
    )
    clock.lap("report")
    total = time.perf_counter() - t0
    _write_summary(out / "demo.json", ev.metrics, loc, check, clock.steps, total, predictor.precision,
                   cfg.data.image_size, int(result.summary["epochs_run"]))
    return DemoResult(report, ev.metrics, loc, total, check, clock.steps)


def _write_summary(
    path: Path, metrics: dict[str, Any], loc: dict[str, Any] | None, check: Any, steps: dict[str, dict[str, float]],
    seconds: float, precision: str, image_size: int, epochs: int,
) -> None:
    """``demo.json``: the headline figures and the time of each step, for benchmarks and CI."""
    doc = {
        "seconds": round(seconds, 2),
        "steps": steps,
        "machine": cpu_summary(),
        "precision": precision,
        "image_size": image_size,
        "epochs": epochs,
        "accuracy": metrics.get("accuracy"),
        "roc_auc": metrics.get("roc_auc"),
        "pointing": None if loc is None else loc.get("pointing"),
        "pointing_ci95": None if loc is None else loc.get("pointing_ci95"),
        "hotspot_in_lesion": None if loc is None else loc.get("hotspot_in_lesion"),
        "shortcut": None if check is None else {
            "accuracy_marked": check.accuracy_marked, "accuracy_clean": check.accuracy_clean,
            "marker_mass": check.marker_mass, "marker_area": check.marker_area, "on_marker": check.on_marker,
            "lesion_pointing": check.lesion_pointing, "seconds": round(check.seconds, 2),
        },
    }
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
