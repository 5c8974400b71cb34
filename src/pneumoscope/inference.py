"""Predict and explain image files with a checkpoint: batched, per-file errors, progress.

A file that cannot be read gets its own row with an ``error`` and the rest still run, which
is what a user pointing the tool at a folder of mixed exports needs.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .checkpoint import Checkpoint, load_checkpoint
from .data.io import read_image
from .errors import PneumoscopeError
from .explanation.cam import explain
from .explanation.overlay import render_overlay
from .fileio import atomic_path, atomic_write_text
from .runtime import autocast, channels_last_preferred, resolve_device, resolve_precision, to_memory_format

if TYPE_CHECKING:
    from .explanation.cam import Explanation

MAX_OVERLAY_SIDE = 1024  # overlays keep the image's aspect ratio, capped for file size


@dataclass
class Prediction:
    """One row of ``predict`` output."""

    path: str
    label: str
    prob_pneumonia: float | None
    threshold: float
    error: str = ""


def _chunks(items: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class Predictor:
    """A checkpoint loaded once, ready to predict or explain batches of files."""

    def __init__(
        self,
        checkpoint: str | Path | Checkpoint,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 16,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, self.device)
        self.ckpt.model.to(self.device).eval()
        if channels_last_preferred(self.device):
            self.ckpt.model.to(memory_format=torch.channels_last)
        self.batch_size = max(1, batch_size)

    @property
    def threshold(self) -> float:
        return self.ckpt.threshold

    @property
    def temperature(self) -> float:
        return self.ckpt.temperature

    def label_of(self, prob: float) -> str:
        return self.ckpt.class_names[int(prob >= self.threshold)]

    def _read(self, paths: Sequence[Path]) -> tuple[list[tuple[int, np.ndarray]], dict[int, str]]:
        ok: list[tuple[int, np.ndarray]] = []
        errors: dict[int, str] = {}
        for i, p in enumerate(paths):
            try:
                ok.append((i, read_image(p)))
            except PneumoscopeError as exc:
                errors[i] = getattr(exc, "problem", str(exc))
        return ok, errors

    def batch_tensor(self, grays: Iterable[np.ndarray]) -> torch.Tensor:
        return torch.stack([self.ckpt.preprocessing(g) for g in grays]).to(self.device)

    @torch.inference_mode()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw float32 logits (N, C) for a preprocessed batch (N, 3, S, S), on the CPU."""
        with autocast(self.device, self.precision):
            logits = self.ckpt.model(to_memory_format(x.to(self.device), self.ckpt.model))
        return logits.float().cpu()

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """P(PNEUMONIA) from raw logits, with the checkpoint's temperature applied."""
        return (logits.float() / self.temperature).softmax(1)[:, self.ckpt.positive_index]

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated P(PNEUMONIA) for a preprocessed batch (N, 3, S, S)."""
        return self.calibrated(self.logits(x))

    def predict(self, paths: Sequence[str | Path], progress: bool = False) -> list[Prediction]:
        """Predict every file; unreadable files get a row with ``error`` set."""
        from tqdm.auto import tqdm

        paths = [Path(p) for p in paths]
        rows: list[Prediction] = []
        bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress, leave=False)
        for chunk in _chunks(paths, self.batch_size):
            ok, errors = self._read(chunk)
            probs = self.probabilities(self.batch_tensor(g for _, g in ok)).tolist() if ok else []
            by_index = {i: p for (i, _), p in zip(ok, probs)}
            for i, p in enumerate(chunk):
                if i in errors:
                    rows.append(Prediction(str(p), "", None, self.threshold, errors[i]))
                else:
                    prob = float(by_index[i])
                    rows.append(Prediction(str(p), self.label_of(prob), prob, self.threshold))
            bar.update(len(chunk))
        bar.close()
        return rows

    def check_explain_args(self, method: str, layer: str | None, target: str, score: str) -> tuple[str, str]:
        """Validate explanation settings before anything is written; returns (method, layer).

        Raises:
            ConfigError: an unknown method, layer, score or target.
        """
        from .errors import ConfigError
        from .explanation.cam import SCORES, canonical_method

        method = canonical_method(method)
        layer = layer or self.ckpt.target_layer
        self.ckpt.model.module_path(layer)
        if score not in SCORES:
            raise ConfigError(f"unknown score {score!r}; expected one of {', '.join(SCORES)}")
        if target != "predicted" and target not in self.ckpt.class_names:
            raise ConfigError(f"unknown target {target!r}; expected predicted or one of {', '.join(self.ckpt.class_names)}")
        return method, layer

    def explain_batch(
        self, x: torch.Tensor, *, method: str, layer: str, target: str = "predicted", score: str = "log_prob",
        tta: bool = False,
    ) -> "Explanation":
        """Explain a preprocessed batch (N, 3, S, S) with already checked settings (gradients on)."""
        with torch.enable_grad():  # callers may run under no_grad (Lightning's predict loop)
            return explain(
                self.ckpt.model, x.to(self.device), method=method, layer=layer,
                target=None if target == "predicted" else target, threshold=self.threshold,
                precision=self.precision, class_names=self.ckpt.class_names, score=score, tta=tta,
                temperature=self.temperature,
            )

    def explanation_row(
        self, path: str | Path, exp: "Explanation", k: int, overlay: str, raw_map: str
    ) -> tuple[Prediction, dict[str, Any]]:
        """The prediction row and the ``manifest.json`` entry of image ``k`` of an explained batch."""
        raw = exp.raw[k]
        probs = exp.probs[k].cpu().tolist()
        prob = float(probs[self.ckpt.positive_index])
        label = self.label_of(prob)
        entry = {
            "path": str(path), "overlay": overlay, "raw_map": raw_map,
            "label": label, "prob_pneumonia": prob,
            "probabilities": dict(zip(self.ckpt.class_names, probs)),
            "target": self.ckpt.class_names[int(exp.targets[k])],
            "map_shape": list(raw.shape),
        }
        return Prediction(str(path), label, prob, self.threshold), entry

    def manifest(
        self, entries: list[dict[str, Any]], *, method: str, layer: str, target: str, score: str, tta: bool, style: str
    ) -> dict[str, Any]:
        """The ``manifest.json`` of an explanation run: settings, provenance and one entry per image."""
        return {
            "schema_version": 1,
            "method": method,
            "layer": "input" if method == "occlusion" else layer,
            "target": target,
            "score": score,
            "tta": tta,
            "style": style,
            "threshold": self.threshold,
            "temperature": self.temperature,
            "checkpoint": str(self.ckpt.path) if self.ckpt.path else None,
            "architecture": self.ckpt.architecture,
            "class_names": list(self.ckpt.class_names),
            "precision": self.precision,
            "device": str(self.device),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "images": entries,
        }

    def explain_files(
        self,
        paths: Sequence[str | Path],
        out_dir: str | Path,
        *,
        method: str = "gradcam",
        layer: str | None = None,
        target: str = "predicted",
        style: str = "hotspot",
        score: str = "log_prob",
        tta: bool = False,
        progress: bool = False,
    ) -> tuple[list[Prediction], Path]:
        """Explain every file into ``out_dir``: ``<name>.overlay.png``, ``<name>.cam.npy``, ``manifest.json``.

        ``method`` is any name from :data:`pneumoscope.explanation.cam.METHODS`; ``score`` and
        ``tta`` are as for :func:`pneumoscope.explain`.

        Files written by a run that fails part-way (not a per-file read error, which is
        recorded and skipped) are removed again, so no half-finished output is left.
        """
        from tqdm.auto import tqdm

        method, layer = self.check_explain_args(method, layer, target, score)  # fail before writing anything
        out = Path(out_dir)
        created_dir = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        names: set[str] = set()
        rows: list[Prediction] = []
        entries: list[dict] = []
        paths = [Path(p) for p in paths]
        try:
            bar = tqdm(total=len(paths), desc="explaining", unit="img", disable=not progress, leave=False)
            for chunk in _chunks(paths, self.batch_size):
                ok, errors = self._read(chunk)
                exp = None
                if ok:
                    exp = self.explain_batch(self.batch_tensor(g for _, g in ok), method=method, layer=layer,
                                             target=target, score=score, tta=tta)
                slot = {i: k for k, (i, _) in enumerate(ok)}
                for i, p in enumerate(chunk):
                    if i in errors:
                        rows.append(Prediction(str(p), "", None, self.threshold, errors[i]))
                        entries.append({"path": str(p), "error": errors[i]})
                        continue
                    assert exp is not None
                    k = slot[i]
                    stem = unique_stem(p, names)
                    paths_written = write_explanation(out, stem, display_image(ok[k][1]), exp.raw[k].cpu().numpy(), style)
                    written.extend(paths_written)
                    row, entry = self.explanation_row(p, exp, k, paths_written[0].name, paths_written[1].name)
                    rows.append(row)
                    entries.append(entry)
                bar.update(len(chunk))
            bar.close()
            manifest = self.manifest(entries, method=method, layer=layer, target=target, score=score, tta=tta, style=style)
            manifest_path = out / "manifest.json"
            atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
        except BaseException:
            for f in written:
                f.unlink(missing_ok=True)
            if created_dir and out.exists() and not any(out.iterdir()):
                out.rmdir()
            raise
        return rows, manifest_path


def write_explanation(out: Path, stem: str, display: np.ndarray, raw: np.ndarray, style: str) -> tuple[Path, Path]:
    """Write ``<stem>.overlay.png`` (over the display-sized image) and ``<stem>.cam.npy``, each atomically."""
    from PIL import Image

    overlay_path, npy_path = out / f"{stem}.overlay.png", out / f"{stem}.cam.npy"
    _save_png(Image.fromarray(render_overlay(display, raw, style)), overlay_path)
    _save_npy(raw, npy_path)
    return overlay_path, npy_path


def _versions() -> dict[str, str]:
    import torchvision

    from . import __version__

    return {"pneumoscope": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__}


def display_image(gray: np.ndarray) -> np.ndarray:
    """The image at a display size (aspect kept, long side capped) for the overlay."""
    h, w = gray.shape
    scale = min(1.0, MAX_OVERLAY_SIDE / max(h, w))
    if scale >= 1.0:
        return gray
    t = torch.from_numpy(np.ascontiguousarray(gray, dtype=np.float32))[None, None]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True)[0, 0].numpy()


_display = display_image  # the name the server imports


def unique_stem(p: Path, used: set[str]) -> str:
    """A file-name stem for ``p``'s outputs that no earlier input of the run has taken (``x``, ``x-2``, ...)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", p.stem) or "image"
    stem, k = base, 2
    while stem in used:
        stem, k = f"{base}-{k}", k + 1
    used.add(stem)
    return stem


def _save_png(img: "object", path: Path) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")  # type: ignore[attr-defined]


def _save_npy(arr: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr.astype(np.float32))


def write_predictions(rows: Sequence[Prediction], path: str | Path) -> Path:
    """Write rows as CSV, JSON or Parquet (by suffix: ``.json``, ``.parquet``; anything else CSV), atomically."""
    import csv
    import io

    path = Path(path)
    if path.suffix.lower() in (".parquet", ".pq"):
        from .scoring.tables import rows_to_table, write_table

        return write_table(rows_to_table([asdict(r) for r in rows]), path)
    if path.suffix.lower() == ".json":
        text = json.dumps([asdict(r) for r in rows], indent=2)
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "label", "prob_pneumonia", "threshold", "error"])
        for r in rows:
            w.writerow([r.path, r.label, "" if r.prob_pneumonia is None else f"{r.prob_pneumonia:.6f}", r.threshold, r.error])
        text = buf.getvalue()
    atomic_write_text(path, text)
    return path
