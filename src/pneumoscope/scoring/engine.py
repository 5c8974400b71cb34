"""Scoring on one process or many: Lightning's predict loop, a part-file writer, one merge at the end.

``score(job)`` is what ``pneumoscope predict`` and ``explain`` run. The same code runs as one
process or as a DDP job of ``devices x num_nodes`` processes (launched by Lightning itself, by
``torchrun`` or by ``srun``; :mod:`pneumoscope.distributed` builds the Trainer's arguments):

- Lightning's prediction sampler gives each rank its own share of the inputs still to score;
- each rank's :class:`PartWriter` (a ``BasePredictionWriter``) writes its finished rows, and for
  explanations the overlay and raw map of every image, as it goes; rows reach disk in part files
  (:mod:`pneumoscope.scoring.parts`), each atomic, so a killed job loses at most the rows of the
  part file it was filling, and ``--resume`` scores exactly the inputs without a row;
- when every rank is done, rank 0 merges the part files into ``--out`` (and ``manifest.json``):
  one row per input, in input order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..checkpoint import Checkpoint, load_checkpoint
from ..distributed import DistributedConfig, process_group_scope, quiet_lightning, trainer_kwargs
from ..errors import ConfigError
from ..fileio import atomic_write_text, check_empty_folder, check_output_folder
from ..inference import Predictor, unique_stem, write_explanation
from ..runtime import resolve_device
from .dataset import StoreInputs, collate, scoring_dataset
from .outputs import check_table_path
from .parts import PartStore, merge, parts_folder, previous_rows, written_paths
from .tables import write_table


class Terminated(Exception):
    """The run was stopped by SIGTERM after a batch; the rows finished so far are kept in part files.

    ``parts`` is that folder: running the same job again with ``resume`` continues it.
    """

    def __init__(self, parts: Path) -> None:
        super().__init__(f"stopped by SIGTERM; finished rows are kept in {parts}")
        self.parts = parts


@dataclass
class ExplainSettings:
    """Where and how to explain every image (``explain``, ``predict --explain``)."""

    out: Path
    method: str = "gradcam"
    layer: str | None = None
    target: str = "predicted"
    style: str = "hotspot"
    score: str = "log_prob"
    tta: bool = False


@dataclass
class ScoringJob:
    """One scoring run.

    ``out`` is the prediction table (``.csv``, ``.json`` or ``.parquet``); it may be ``None``
    when ``explain`` is set (the manifest is then the output). With ``store`` set, the inputs
    are that store's images and ``inputs`` is ignored (the store's source paths are used). ``parts`` defaults to
    ``<out>.parts`` (or ``<explain.out>.parts``). ``part_rows`` is how many rows a rank
    collects before it writes a part file: what a kill can cost, per rank.
    """

    inputs: Sequence[Path]
    checkpoint: Path | Checkpoint
    out: Path | None = None
    explain: ExplainSettings | None = None
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 16
    workers: int = 0
    part_rows: int = 1000
    resume: bool = False
    parts: Path | None = None
    progress: bool = False
    store: StoreInputs | None = None


@dataclass
class ScoringResult:
    """What rank 0 reports; other ranks get ``is_global_zero=False`` and nothing else."""

    is_global_zero: bool
    n: int = 0
    scored: int = 0  # inputs scored by this run (the rest were resumed)
    failures: list[tuple[str, str]] = field(default_factory=list)  # every input's, resumed ones included
    failed_now: int = 0  # of ``scored``, those that failed
    out: Path | None = None
    manifest: Path | None = None
    seconds: float = 0.0  # the prediction loop, from rank 0's first batch until every rank had finished

    @property
    def images_per_second(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


class ScoringModule(L.LightningModule):
    """The checkpoint's model in Lightning's predict loop: probabilities, or explanations with gradients on."""

    def __init__(self, ckpt: Checkpoint, precision: str, batch_size: int, explain: dict[str, Any] | None) -> None:
        super().__init__()
        self.model = ckpt.model
        self._ckpt = ckpt
        self._precision = precision
        self._batch_size = batch_size
        self._explain = explain
        self.predictor: Predictor | None = None

    def on_predict_start(self) -> None:
        # Built on this rank's device, which Lightning chose (cuda:LOCAL_RANK, or the CPU).
        self.predictor = Predictor(self._ckpt, device=self.device, precision=self._precision, batch_size=self._batch_size)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        assert self.predictor is not None
        if batch["x"] is None:
            return None
        if self._explain is None:
            return self.predictor.calibrated(self.predictor.logits(batch["x"])).tolist()
        exp = self.predictor.explain_batch(batch["x"], **self._explain)
        # Only what the writer needs, on the CPU: the raw maps, probabilities and targets.
        return dataclasses.replace(exp, maps=exp.maps[:0].cpu(), raw=exp.raw.cpu(), probs=exp.probs.cpu(),
                                   targets=exp.targets.cpu())


class PartWriter(BasePredictionWriter):
    """Writes each rank's rows to its own part files (and explanations per image) as batches finish."""

    def __init__(self, job: ScoringJob, store: PartStore, stems: list[str] | None, settings: dict[str, Any],
                 render_threads: int = 2) -> None:
        super().__init__(write_interval="batch")
        self.job, self.store, self.stems, self.settings = job, store, stems, settings
        self.rank = 0
        self._rows: list[dict[str, Any]] = []
        self._threads = render_threads
        self._pool: ThreadPoolExecutor | None = None  # made in setup: a spawned process cannot inherit threads
        self.started = 0.0
        self.interrupted = False
        self.terminated = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.rank = trainer.global_rank
        if self.job.explain is not None and self._pool is None:
            # Overlays are PNG-encoded off the loop's thread; a row is written only after its files are.
            self._pool = ThreadPoolExecutor(self._threads)
        if trainer.is_global_zero:
            self.store.write_settings(self.settings)
        if self.job.explain is not None:
            self.job.explain.out.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Any,
                           batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        predictor: Predictor = pl_module.predictor
        ex = self.job.explain
        for j, index in enumerate(batch["index"]):
            path = str(self.job.inputs[index])
            row: dict[str, Any] = {"index": index, "path": path, "label": "", "prob_pneumonia": None,
                                   "threshold": predictor.threshold, "error": batch["error"][j]}
            k = batch["slot"][j]
            if k < 0:
                if ex is not None:
                    row["entry"] = json.dumps({"path": path, "error": row["error"]})
            elif ex is None:
                prob = float(prediction[k])
                row.update(label=predictor.label_of(prob), prob_pneumonia=prob)
            else:
                assert self._pool is not None and self.stems is not None
                stem = self.stems[index]
                row["_files"] = self._pool.submit(
                    write_explanation, ex.out, stem, batch["display"][k], prediction.raw[k].numpy(), ex.style)
                pred, entry = predictor.explanation_row(path, prediction, k, f"{stem}.overlay.png", f"{stem}.cam.npy")
                row.update(label=pred.label, prob_pneumonia=pred.prob_pneumonia, entry=json.dumps(entry))
            self._rows.append(row)
        if len(self._rows) >= self.job.part_rows:
            self.flush()
        if trainer.received_sigterm:
            # Lightning's handler only records a SIGTERM and its predict loop never looks: stop after this
            # batch, as Ctrl-C would (on_exception keeps the finished rows for --resume).
            self.terminated = True
            raise SIGTERMException(143)

    def flush(self) -> None:
        """Write the rows collected so far as one part file: those whose overlay and map are on disk.

        A row whose files failed to write (a full disk) is left out, so ``--resume`` redoes it,
        and the first such error is raised once the others are safe.
        """
        rows, self._rows = self._rows, []
        done, error = [], None
        for row in rows:
            files = row.pop("_files", None)
            try:
                if files is not None:
                    files.result()
                done.append(row)
            except Exception as exc:  # noqa: BLE001  (re-raised below)
                error = error or exc
        if done:
            self.store.write(done, self.rank)
        if error is not None:
            raise error

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        self.started = time.perf_counter()

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        self.flush()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.interrupted = isinstance(exception, KeyboardInterrupt)
        # Finished rows are good rows: keep them for --resume even when the run stops.
        with contextlib.suppress(Exception):
            self.flush()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _quiet_lightning() -> contextlib.AbstractContextManager[None]:
    """Silence Lightning's banners and advice that do not apply to scoring files."""
    # LitData warns that a store streamed under DDP keeps every image (drop_last off): scoring must.
    # A batch of unreadable files predicts nothing (their rows carry the error): not a mistake in predict_step.
    return quiet_lightning(".*Total length of .* across ranks is zero.*", ".*predict returned None.*")


def _distributed(job: ScoringJob) -> tuple[DistributedConfig, torch.device | None]:
    """The job's DistributedConfig and the explicit single-process device (``--device``), checked."""
    dist = dataclasses.replace(job.distributed)
    device = None if job.device == "auto" else resolve_device(job.device)
    if device is not None and dist.world_size > 1:
        if device.type != "cpu":
            raise ConfigError(f"--device {job.device} names one device; with --devices/--num-nodes use --accelerator gpu")
        if dist.accelerator == "auto":
            dist.accelerator = "cpu"
    dist.validate()
    if job.batch_size < 1 or job.part_rows < 1 or job.workers < 0:
        raise ConfigError("--batch-size and --part-rows must be >= 1 and --workers >= 0")
    return dist, device


def _is_global_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def score(job: ScoringJob) -> ScoringResult:
    """Score (and optionally explain) every input of ``job``; rank 0 writes the merged outputs.

    Raises:
        ConfigError: bad settings, an unfinished earlier run without ``resume``, or a resumed run
            whose settings differ.
    """
    dist, device = _distributed(job)
    if job.out is None and job.explain is None:
        raise ConfigError("nothing to write: give an output table or an explanation folder")
    _check_outputs(job)  # a bad path fails now, not after the scoring, and creates nothing
    ckpt = job.checkpoint if isinstance(job.checkpoint, Checkpoint) else load_checkpoint(job.checkpoint, "cpu")
    base = Predictor(ckpt, device="cpu", precision=job.precision, batch_size=job.batch_size)
    ex = job.explain
    explain_args: dict[str, Any] | None = None
    if ex is not None:
        method, layer = base.check_explain_args(ex.method, ex.layer, ex.target, ex.score)  # fail before writing
        ex = dataclasses.replace(ex, method=method, layer=layer)
        explain_args = {"method": method, "layer": layer, "target": ex.target, "score": ex.score, "tta": ex.tta}
    if job.store is not None:
        job.store.check(ckpt.preprocessing)  # fail before writing
    inputs = job.store.paths() if job.store is not None else [Path(p) for p in job.inputs]
    job = dataclasses.replace(job, explain=ex, inputs=inputs)
    store = PartStore(job.parts or parts_folder(job.out if job.out is not None else ex.out),  # type: ignore[union-attr]
                      with_entry=ex is not None)
    settings = _settings(job, ckpt)
    manifest_path = ex.out / "manifest.json" if ex is not None else None
    previous = None
    if job.resume:
        store.check_settings(settings)
        previous = previous_rows(job.out, manifest_path)
    elif store.started():
        raise ConfigError(f"{store.folder} holds part files of an interrupted run; add --resume to continue it, "
                          f"or delete the folder to start over")
    elif ex is not None:  # another run's overlays would stay beside ours, unlisted in the manifest
        check_empty_folder(ex.out, "add --resume to continue that run, or choose another folder or empty this one")
    done = written_paths(store, previous) if job.resume else set()
    todo = [i for i, p in enumerate(job.inputs) if str(p) not in done]
    stems = _stems(job.inputs) if ex is not None else None

    module, seconds = None, 0.0
    if todo or dist.world_size > 1:  # every rank of a DDP job must enter the loop, even with nothing left
        with process_group_scope():  # the ranks leave the group together once every part file is written
            module, is_zero, seconds = _run(job, dist, device, ckpt, store, stems, settings, todo, explain_args)
    else:
        is_zero = _is_global_zero()
    if not is_zero:
        return ScoringResult(is_global_zero=False)

    table = merge(job.inputs, store, previous)
    predictor = module.predictor if module is not None and module.predictor is not None else base
    if job.out is not None:
        write_table(table, job.out)
    if ex is not None and manifest_path is not None:
        entries = [json.loads(e) for e in table.column("entry").to_pylist()]
        manifest = predictor.manifest(entries, method=ex.method, layer=ex.layer or "", target=ex.target,
                                      score=ex.score, tta=ex.tta, style=ex.style)
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    store.remove()  # only now: until the outputs are in place, the part files are the record
    _remove_stale_temps(job.out, ex.out if ex is not None else None)
    failures = _failures(table)
    now = {str(job.inputs[i]) for i in todo}
    return ScoringResult(True, n=len(job.inputs), scored=len(todo), failures=failures,
                         failed_now=sum(p in now for p, _ in failures), out=job.out, manifest=manifest_path,
                         seconds=seconds)


def _run(job: ScoringJob, dist: DistributedConfig, device: torch.device | None, ckpt: Checkpoint, store: PartStore,
         stems: list[str] | None, settings: dict[str, Any], todo: list[int],
         explain_args: dict[str, Any] | None) -> tuple[Any, bool, float]:
    """Lightning's predict loop over ``todo``; returns the module, whether this is rank 0, and the loop's seconds."""

    module = ScoringModule(ckpt, job.precision, job.batch_size, explain_args)
    # Overlay rendering and PNG encoding release the GIL: a few threads per process keep up with a GPU.
    writer = PartWriter(job, store, stems, settings, render_threads=max(2, min(8, (os.cpu_count() or 2) // dist.devices)))
    if 0 < len(todo) < dist.world_size and job.store is None:
        # Lightning's prediction sampler needs an input for every rank; the merge keeps one row per input.
        todo = [todo[i % len(todo)] for i in range(dist.world_size)]
    kw = trainer_kwargs(dist, device)
    inputs = _Inputs(job, todo, ckpt.preprocessing, pin_memory=kw["accelerator"] == "gpu")
    try:
        with _quiet_lightning():
            trainer = L.Trainer(
                **kw,
                precision="32-true",  # the Predictor applies the checkpoint's precision itself, as it always did
                inference_mode=job.explain is None,  # Grad-CAM needs gradients; plain scoring does not
                logger=False, enable_checkpointing=False, enable_model_summary=False,
                enable_progress_bar=job.progress, callbacks=[writer],
                default_root_dir=str(store.folder),
            )
            trainer.predict(module, datamodule=inputs, return_predictions=False)
            writer.flush()
            trainer.strategy.barrier("pneumoscope-merge")  # every rank's part files are on disk
            seconds = time.perf_counter() - writer.started if writer.started else 0.0
    except SystemExit:
        if writer.interrupted:  # Lightning turns Ctrl-C into exit(1); report it as the interrupt it was
            raise KeyboardInterrupt from None
        if writer.terminated:
            raise Terminated(store.folder) from None
        raise
    finally:
        writer.close()
    return module, trainer.is_global_zero, seconds


class _Inputs(L.LightningDataModule):
    """The ``todo`` inputs' loader, made when Lightning asks: once this process has joined its process group."""

    def __init__(self, job: ScoringJob, todo: list[int], preprocessing: Any, pin_memory: bool) -> None:
        super().__init__()
        self.job, self.todo, self.preprocessing, self.pin_memory = job, todo, preprocessing, pin_memory

    def predict_dataloader(self) -> Any:
        from torch.utils.data import DataLoader

        job = self.job
        dataset = scoring_dataset(job.inputs, job.store, self.todo, self.preprocessing, display=job.explain is not None)
        return DataLoader(dataset, batch_size=job.batch_size, shuffle=False, num_workers=job.workers,
                          collate_fn=collate, persistent_workers=False, pin_memory=self.pin_memory)


def _stems(inputs: Sequence[Path]) -> list[str]:
    """Output names of every input, decided from the input list alone (same on every rank and every resume)."""
    used: set[str] = set()
    return [unique_stem(p, used) for p in inputs]


def _settings(job: ScoringJob, ckpt: Checkpoint) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (``run.json``)."""
    ex = job.explain
    return {
        "checkpoint": str(Path(os.path.abspath(ckpt.path))) if ckpt.path else None,
        "architecture": ckpt.architecture,
        "threshold": ckpt.threshold,
        "temperature": ckpt.temperature,
        "precision": job.precision,
        "store": None if job.store is None else {"path": os.path.abspath(job.store.path), "subsets": list(job.store.subsets)},
        "explain": None if ex is None else {
            "out": str(Path(os.path.abspath(ex.out))), "method": ex.method, "layer": ex.layer, "target": ex.target,
            "style": ex.style, "score": ex.score, "tta": ex.tta,
        },
    }


def _check_outputs(job: ScoringJob) -> None:
    """Refuse an output table, explanation folder or part-file folder that cannot be written."""
    if job.out is not None:
        check_table_path(job.out)
    if job.explain is not None:
        check_output_folder(job.explain.out, "a folder for overlays, raw maps and manifest.json")
    parts = job.parts or parts_folder(job.out if job.out is not None else job.explain.out)  # type: ignore[union-attr]
    check_output_folder(parts, "a folder for the run's part files")


def _remove_stale_temps(out: Path | None, explain_dir: Path | None) -> None:
    """Temporary files a killed process left behind (atomic writes that never got their rename)."""
    patterns: list[tuple[Path, str]] = []
    if out is not None:
        patterns.append((out.parent, f".{out.name}.*.tmp"))
    if explain_dir is not None:
        patterns += [(explain_dir, ".*.overlay.png.*.tmp"), (explain_dir, ".*.cam.npy.*.tmp"),
                     (explain_dir, ".manifest.json.*.tmp")]
    for folder, pattern in patterns:
        for f in folder.glob(pattern):
            f.unlink(missing_ok=True)


def _failures(table: Any) -> list[tuple[str, str]]:
    import pyarrow.compute as pc

    bad = table.filter(pc.not_equal(table.column("error"), ""))
    return list(zip(bad.column("path").to_pylist(), bad.column("error").to_pylist()))


__all__ = ["ExplainSettings", "ScoringJob", "ScoringResult", "Terminated", "score"]
