"""The ``pneumoscope`` command line: a thin layer over the Python API.

User mistakes (bad paths, unreadable images, wrong config) are :class:`PneumoscopeError`
and print as one ``error: …`` line with exit status 2; warnings print as ``warning: …``.
"""

from __future__ import annotations

import functools
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from .errors import PneumoscopeError

app = typer.Typer(
    name="pneumoscope",
    help="Explainable pneumonia detection on chest X-rays: train, evaluate, predict, explain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class ValSource(str, Enum):
    split = "split"
    val = "val"
    test = "test"


class Style(str, Enum):
    hotspot = "hotspot"
    heatmap = "heatmap"


#: The --checkpoint help of every command that loads a model.
CHECKPOINT_HELP = "A best.ckpt from `pneumoscope train`, or a shipped model by name (`pneumoscope models`)."


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    _say(f"warning: {message}")


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line + exit 2, Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        old = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return fn(*args, **kwargs)
        except PneumoscopeError as exc:
            _say(f"error: {exc}")
            raise typer.Exit(2) from None
        except OSError as exc:
            if exc.filename is None:
                raise  # not about a path the user gave: a bug to see whole
            # A path the system refused (a file where a folder must be, no permission, a full
            # disk): the user's to fix, so one line naming it. A rename names its target, not
            # the temporary file it came from.
            target = Path(exc.filename2 or exc.filename)
            why = exc.strerror or str(exc)
            if isinstance(exc, (FileExistsError, NotADirectoryError)) and target.is_file():
                why = "is a file, where a folder was expected"
            _say(f"error: {target}: {why}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _say("interrupted")
            raise typer.Exit(130) from None
        finally:
            warnings.showwarning = old

    return wrapper


def _progress(no_progress: bool = False) -> bool:
    return sys.stderr.isatty() and not no_progress


METHOD_HELP = "gradcam | gradcampp | hirescam | xgradcam | layercam | scorecam | occlusion"


class Score(str, Enum):
    log_prob = "log_prob"
    logit = "logit"


@app.command()
@user_errors
def train(
    data: Path = typer.Option(..., "--data", help="Dataset root (Kaggle layout train/val/test), CSV manifest, or a store from `pneumoscope prepare` (streamed)."),
    config: Optional[str] = typer.Option(None, "--config", help="YAML config file, or a bundled name: seed, offline, demo."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Model name (see `pneumoscope models`)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="imagenet | none | PATH to a local weights file."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Input size in pixels."),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="Run folder to write."),
    val_source: Optional[ValSource] = typer.Option(None, "--val-source", help="split (patient-level, default) | val | test (the seed's leak)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    epochs: Optional[str] = typer.Option(None, "--epochs", help="Override epochs per stage, e.g. 2 or 2,3."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    precision: Optional[Precision] = typer.Option(None, "--precision"),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N"),
    limit_train_batches: Optional[float] = typer.Option(None, "--limit-train-batches", help="Fraction (<=1) or count of batches per epoch."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override any config key: --set train.batch_size=16, --set train.stages.0.lr=1e-4"),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars (logs, CI)."),
    devices: Optional[int] = typer.Option(None, "--devices", help="Processes per node (GPUs, or CPU processes); distributed.devices."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", help="Nodes; distributed.num_nodes. World size = devices x nodes."),
    accelerator: Optional[str] = typer.Option(None, "--accelerator", help="auto | cpu | gpu; distributed.accelerator."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="auto (ddp when devices x nodes > 1) | ddp | ddp_spawn; distributed.strategy."),
) -> None:
    """Train a classifier; writes RUN/best.ckpt, config.yaml, metrics.csv (on many processes with --devices/--num-nodes)."""
    from .config import load_config, parse_set_overrides
    from .training import train as run_train

    # Defaults, the YAML, the flags, then --set: applied in that order, so --set wins. A flag
    # left out is not an override at all.
    overrides: dict[str, Any] = {k: v for k, v in {
        "model.backbone": backbone, "model.weights": weights, "data.image_size": image_size,
        "data.val_source": val_source.value if val_source else None, "train.seed": seed,
        "train.batch_size": batch_size, "train.precision": precision.value if precision else None,
        "train.device": device, "distributed.devices": devices, "distributed.num_nodes": num_nodes,
        "distributed.accelerator": accelerator, "distributed.strategy": strategy,
    }.items() if v is not None}
    if limit_train_batches is not None:
        overrides["train.limit_train_batches"] = int(limit_train_batches) if limit_train_batches > 1 else limit_train_batches
    sets = parse_set_overrides(set_)
    overrides.update(sets)
    if resume and config is None and (out / "config.yaml").is_file():
        config = str(out / "config.yaml")  # continue the run as it was configured
    cfg = load_config(config, overrides)
    if epochs is not None:
        cfg = _set_epochs(cfg, epochs, sets)
    result = run_train(cfg, data, out, resume=resume, progress=_progress() and not no_progress)
    if not result.is_global_zero:
        return  # one report per run, from rank 0
    if result.summary.get("calibration_summary"):
        _say(result.summary["calibration_summary"])
    _say(f"best val_loss {result.best_val_loss:.4f} at epoch {result.best_epoch}; checkpoint: {result.checkpoint}")


def _set_epochs(cfg: Any, spec: str, sets: dict[str, Any]) -> Any:
    """--epochs on every stage, except where --set (which comes after the flags) gave them."""
    from .errors import ConfigError

    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        raise ConfigError(f"--epochs {spec!r}: expected a number or one per stage, e.g. 2,3") from None
    if len(values) == 1:
        values = values * len(cfg.train.stages)
    if len(values) != len(cfg.train.stages):
        raise ConfigError(f"--epochs gives {len(values)} values for {len(cfg.train.stages)} stages")
    for i, (st, v) in enumerate(zip(cfg.train.stages, values)):
        if "train.stages" not in sets and f"train.stages.{i}" not in sets and f"train.stages.{i}.epochs" not in sets:
            st.epochs = v
    return cfg.validate()


@app.command()
@user_errors
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    data: Path = typer.Option(..., "--data", help="A split folder (…/test), a dataset root (its test/), a CSV, or a store (its test images)."),
    out: Path = typer.Option(Path("eval"), "--out", help="Folder for metrics.json, plots, predictions.csv."),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="Override the checkpoint's threshold with a number in (0, 1)."),
    bootstrap: int = typer.Option(2000, "--bootstrap", help="Bootstrap resamples for the 95% intervals; 0: none."),
    ci_seed: int = typer.Option(0, "--ci-seed", help="Seed of the bootstrap."),
    bins: int = typer.Option(15, "--bins", help="Bins of the calibration error and reliability diagram."),
    batch_size: int = typer.Option(64, "--batch-size"),
    precision: Precision = typer.Option(Precision.auto, "--precision"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Evaluate a checkpoint at its stored operating point, with 95% intervals and calibration."""
    from .evaluation.evaluate import evaluate as run_eval
    from .evaluation.evaluate import parse_threshold

    r = run_eval(checkpoint, data, out, threshold=parse_threshold(threshold), bootstrap=bootstrap, ci_seed=ci_seed,
                 n_bins=bins, batch_size=batch_size, device=device, precision=precision.value, progress=True)
    m = r.metrics
    ci = m.get("ci95") or {}

    def show(key: str) -> str:
        if m[key] is None:
            return "n/a"
        return f"{m[key]:.4f}" + (f" [{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if ci.get(key) else "")

    _say(
        f"n={m['n']} accuracy {show('accuracy')}  sensitivity {show('sensitivity')}  "
        f"specificity {show('specificity')}  ROC AUC {show('roc_auc')}"
    )
    _say(
        f"threshold {m['threshold']:.4f} ({m['threshold_source']}), temperature {m['temperature']:.4g}, "
        f"ECE {m['calibration']['ece']:.3f}" + ("  [95% bootstrap intervals]" if ci else "")
    )
    _say(f"wrote {out / 'metrics.json'}")


class CalibValSource(str, Enum):
    split = "split"
    val = "val"


class OpMethod(str, Enum):
    youden = "youden"
    sensitivity = "sensitivity"
    fixed = "fixed"


@app.command()
@user_errors
def calibrate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    data: Path = typer.Option(..., "--data", help="The dataset the checkpoint was trained on (root or CSV), or its store (its val images)."),
    val_source: Optional[CalibValSource] = typer.Option(None, "--val-source", help="split (the patient-level split it trained with) | val; default: as trained."),
    method: Optional[OpMethod] = typer.Option(None, "--method", help="youden | sensitivity | fixed; default: the stored config's."),
    target_sensitivity: Optional[float] = typer.Option(None, "--target-sensitivity", help="For --method sensitivity, e.g. 0.95."),
    margin: Optional[float] = typer.Option(None, "--margin", help="For --method sensitivity: aim this much higher on validation."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="For --method fixed."),
    augment_draws: Optional[int] = typer.Option(None, "--augment-draws", help="Choose the threshold on N passes of validation through the training augmentation (0: as they are)."),
    temperature: Optional[bool] = typer.Option(None, "--temperature/--no-temperature", help="Fit a temperature (default: the stored config's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write a new checkpoint here; default: update CKPT in place."),
    batch_size: int = typer.Option(64, "--batch-size"),
    precision: Precision = typer.Option(Precision.auto, "--precision"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """Refit temperature and operating point of a checkpoint on its validation images (no retraining)."""
    from .errors import ConfigError
    from .training.calibrate import recalibrate

    from .fileio import check_output_file

    if threshold is not None and (method or OpMethod.fixed) is not OpMethod.fixed:
        raise ConfigError("--threshold sets the fixed threshold; use it with --method fixed")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold must be a probability in (0, 1), not {threshold}")
    if out is not None:
        check_output_file(out, "a checkpoint file to write")  # before the validation images are scored
    overrides = {k: v for k, v in {
        "operating_point.method": method.value if method else ("fixed" if threshold is not None else None),
        "operating_point.target_sensitivity": target_sensitivity,
        "operating_point.sensitivity_margin": margin,
        "operating_point.augment_draws": augment_draws,
        "train.threshold": threshold,
        "calibration.temperature": temperature,
    }.items() if v is not None}
    r = recalibrate(
        checkpoint, data, out=out, val_source=val_source.value if val_source else None, overrides=overrides,
        precision=precision.value, device=device, batch_size=batch_size, progress=_progress(),
    )
    _say(r.summary_line())
    _say(f"wrote {r.checkpoint}")


def _report_failures(failures: list[tuple[str, str]]) -> int:
    """One ``error:`` line per file that failed; returns how many did."""
    for path, problem in failures:
        _say(f"error: {path}: {problem}")
    return len(failures)


def _score(inputs: list[Path], checkpoint: Path, out: Optional[Path], explain: Any, *, devices: int, num_nodes: int,
           accelerator: str, strategy: str, device: str, precision: Precision, batch_size: int, workers: int,
           part_rows: int, resume: bool, no_progress: bool, subset: Optional[str] = None,
           resumable: bool = True) -> Any:
    """Expand the inputs (a typo fails fast) and run the scoring engine, on one process or many.

    One input that is a store from ``prepare`` is scored as that store's images (``subset``: one of its
    subsets, default all); stores and files are not mixed. Ctrl-C or SIGTERM stop after a batch and say
    how to resume (``resumable``: False when the part files are in a temporary folder that goes).
    """
    from .data.io import list_images
    from .data.store import is_store
    from .distributed import DistributedConfig
    from .errors import ConfigError
    from .scoring import ScoringJob, StoreInputs, score
    from .scoring.engine import Terminated

    stores = [p for p in inputs if is_store(p)]
    if stores and len(inputs) > 1:
        raise ConfigError(f"{stores[0]}: a store is scored on its own; give it as the only input")
    if subset is not None and not stores:
        raise ConfigError("--subset chooses images of a store from `pneumoscope prepare`; the inputs are not one")
    store = StoreInputs.open(stores[0], subset) if stores else None
    job = ScoringJob(
        inputs=[] if store is not None else list_images(inputs), store=store, checkpoint=checkpoint, out=out, explain=explain,
        distributed=DistributedConfig(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy),
        device=device, precision=precision.value, batch_size=batch_size, workers=workers, part_rows=part_rows,
        resume=resume, progress=_progress(no_progress),
    )
    how = ("run the same command with --resume to continue" if resumable
           else "nothing was kept: give --out to be able to --resume")
    try:
        return score(job)
    except KeyboardInterrupt:
        _say(("finished rows are kept in part files; " if resumable else "") + how)
        raise
    except Terminated as exc:
        _say("stopped by SIGTERM; " + (f"finished rows are kept in {exc.parts}; " if resumable else "") + how)
        raise typer.Exit(143) from None  # 128 + SIGTERM, as a shell reports a process the signal ended


def _scored_line(result: Any) -> str:
    """What this run did: inputs scored and failed (failed ones are not counted as scored), and any resumed."""
    resumed = result.n - result.scored
    rate = f" in {result.seconds:.1f} s ({result.images_per_second:.1f} img/s)" if result.seconds else ""
    line = f"scored {result.scored - result.failed_now} of {result.n} inputs"
    if result.failed_now:
        line += f", {result.failed_now} failed"
    line += rate
    if resumed:
        earlier = len(result.failures) - result.failed_now
        line += f"; {resumed} already written" + (f" ({earlier} of them failed)" if earlier else "")
    return line


_DEVICES_HELP = "Processes per node (GPUs, or CPU processes with --accelerator cpu)."
_RESUME_HELP = "Continue an interrupted run: skip the inputs already in its part files or in --out."
_PART_ROWS_HELP = "Rows each process collects before writing a part file (what a kill can cost)."
_SUBSET_HELP = "With a store as input: score only its train, val or test images (default: all)."


class StoreSubset(str, Enum):
    train = "train"
    val = "val"
    test = "test"


@app.command()
@user_errors
def predict(
    inputs: list[Path] = typer.Argument(..., help="Image files or folders (recursed), or one store from `pneumoscope prepare`."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    out: Optional[Path] = typer.Option(None, "--out", help="preds.csv, preds.json or preds.parquet; default: CSV on stdout."),
    explain_dir: Optional[Path] = typer.Option(None, "--explain", help="Also write explanation overlays here."),
    method: Optional[str] = typer.Option(
        None, "--method", help=f"Explanation method for --explain: {METHOD_HELP} (default: gradcam)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    precision: Precision = typer.Option(Precision.auto, "--precision"),
    device: str = typer.Option("auto", "--device"),
    devices: int = typer.Option(1, "--devices", help=_DEVICES_HELP),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Nodes of a multi-node job (torchrun, srun)."),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto | cpu | gpu"),
    strategy: str = typer.Option("auto", "--strategy", help="auto (DDP when more than one process) | ddp | ddp_spawn"),
    workers: int = typer.Option(0, "--workers", help="DataLoader processes decoding images, per process (0: in the loop)."),
    part_rows: int = typer.Option(1000, "--part-rows", help=_PART_ROWS_HELP),
    resume: bool = typer.Option(False, "--resume", help=_RESUME_HELP),
    subset: Optional[StoreSubset] = typer.Option(None, "--subset", help=_SUBSET_HELP),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars (logs, CI)."),
) -> None:
    """Predict NORMAL/PNEUMONIA per image; exit 0 only when every input succeeded."""
    import shutil
    import tempfile

    from .errors import ConfigError
    from .explanation.cam import canonical_method
    from .scoring import ExplainSettings

    if method is not None and explain_dir is None:
        raise ConfigError("--method chooses the explanation method of --explain; add --explain FOLDER, or drop --method")
    method = canonical_method(method or "gradcam")
    tmp = None
    if out is None:
        if resume or devices * num_nodes > 1:
            raise ConfigError("--out is needed with --resume or more than one process (part files are kept beside it)")
        tmp = Path(tempfile.mkdtemp(prefix="pneumoscope-predict-"))
    try:
        explain = ExplainSettings(explain_dir, method=method) if explain_dir is not None else None
        result = _score(inputs, checkpoint, out or tmp / "preds.csv", explain, devices=devices,  # type: ignore[operator]
                        num_nodes=num_nodes, accelerator=accelerator, strategy=strategy, device=device,
                        precision=precision, batch_size=batch_size, workers=workers, part_rows=part_rows,
                        resume=resume, no_progress=no_progress, subset=subset.value if subset else None,
                        resumable=tmp is None)
        if not result.is_global_zero:
            return  # rank 0 reports for the job
        if tmp is not None:
            sys.stdout.write((tmp / "preds.csv").read_text(encoding="utf-8"))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    failed = _report_failures(result.failures)
    _say(_scored_line(result))
    if failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def explain(
    inputs: list[Path] = typer.Argument(..., help="Image files or folders (recursed), or one store from `pneumoscope prepare`."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for overlays, raw maps and manifest.json."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Layer name, e.g. block5_conv3 (default: the checkpoint's)."),
    target: str = typer.Option("predicted", "--target", help="predicted | NORMAL | PNEUMONIA"),
    style: Style = typer.Option(Style.hotspot, "--style", help="hotspot (the seed's red top 5%) | heatmap (jet)."),
    method: str = typer.Option("gradcam", "--method", help=f"{METHOD_HELP}."),
    score: Score = typer.Option(Score.log_prob, "--score", help="log_prob (the seed's) | logit (pytorch-grad-cam's)."),
    tta: bool = typer.Option(False, "--tta", help="Smooth by averaging over flips and intensity scalings."),
    batch_size: int = typer.Option(16, "--batch-size"),
    precision: Precision = typer.Option(Precision.auto, "--precision"),
    device: str = typer.Option("auto", "--device"),
    devices: int = typer.Option(1, "--devices", help=_DEVICES_HELP),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Nodes of a multi-node job (torchrun, srun)."),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto | cpu | gpu"),
    strategy: str = typer.Option("auto", "--strategy", help="auto (DDP when more than one process) | ddp | ddp_spawn"),
    workers: int = typer.Option(0, "--workers", help="DataLoader processes decoding images, per process (0: in the loop)."),
    part_rows: int = typer.Option(1000, "--part-rows", help=_PART_ROWS_HELP),
    resume: bool = typer.Option(False, "--resume", help=_RESUME_HELP),
    subset: Optional[StoreSubset] = typer.Option(None, "--subset", help=_SUBSET_HELP),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars (logs, CI)."),
) -> None:
    """Explain each image (any method): overlay PNG, raw map (.npy) and a manifest.json for the run."""
    from .explanation.cam import canonical_method
    from .scoring import ExplainSettings

    settings = ExplainSettings(out, method=canonical_method(method), layer=layer, target=target, style=style.value,
                               score=score.value, tta=tta)
    result = _score(inputs, checkpoint, None, settings, devices=devices, num_nodes=num_nodes, accelerator=accelerator,
                    strategy=strategy, device=device, precision=precision, batch_size=batch_size, workers=workers,
                    part_rows=part_rows, resume=resume, no_progress=no_progress,
                    subset=subset.value if subset else None)
    if not result.is_global_zero:
        return
    failed = _report_failures(result.failures)
    _say(_scored_line(result))
    _say(f"explained {result.n - failed} of {result.n} images; manifest: {result.manifest}")
    if failed:
        raise typer.Exit(1)


@app.command("explain-eval")
@user_errors
def explain_eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    data: Path = typer.Option(..., "--data", help="A split folder (…/test), a dataset root (its test/), or a CSV."),
    out: Path = typer.Option(Path("explain-eval"), "--out", help="Folder for explain_eval.csv and .json."),
    masks: Optional[Path] = typer.Option(None, "--masks", help="Folder of lesion-mask PNGs named like the images (default: DATA's masks/)."),
    boxes: Optional[Path] = typer.Option(None, "--boxes", help="RSNA-format CSV: patientId,x,y,width,height,Target."),
    lungs: Optional[Path] = typer.Option(None, "--lungs", help="Folder of lung-field masks (default: DATA's lungs/)."),
    method: Optional[list[str]] = typer.Option(None, "--method", help=f"Repeat or comma-separate; default: the gradient methods. {METHOD_HELP}."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Evaluate a seeded random subset of this many images."),
    steps: int = typer.Option(16, "--steps", help="Deletion/insertion steps."),
    batch_size: int = typer.Option(32, "--batch-size"),
    precision: Precision = typer.Option(Precision.auto, "--precision"),
    device: str = typer.Option("auto", "--device"),
    seed: int = typer.Option(0, "--seed"),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars (logs, CI)."),
) -> None:
    """Score explanation methods: deletion/insertion AUC, pointing game, IoU, lung mass, randomisation."""
    from .explanation.explain_eval import DEFAULT_METHODS, explain_eval

    methods = [m.strip() for spec in (method or []) for m in spec.split(",") if m.strip()] or list(DEFAULT_METHODS)
    r = explain_eval(
        checkpoint, data, out, methods=methods, masks=masks, boxes=boxes, lungs=lungs, max_images=max_images,
        steps=steps, batch_size=batch_size, device=device, precision=precision.value, seed=seed,
        progress=_progress(no_progress), log=_say,
    )
    typer.echo(r.table)
    _say(f"wrote {r.csv_path} and {r.json_path} ({r.seconds:.0f} s)")


@app.command()
@user_errors
def audit(
    data: Path = typer.Argument(..., help="A split folder (NORMAL/, PNEUMONIA/) or a dataset root (its train/)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="A second collection: a split folder or a dataset root (its test/)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the report as JSON here."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars (logs, CI)."),
) -> None:
    """Find acquisition cues (aspect, borders, exposure) that alone separate the classes or the sites."""
    from .data.audit import audit as run_audit
    from .fileio import check_output_file

    if out is not None:
        check_output_file(out, "a JSON report file to write")  # before the images are read
    report = run_audit(data, compare, progress=_progress(no_progress))
    for line in report.lines():
        typer.echo(line)
    if out is not None:
        _say(f"wrote {report.save(out)}")


@app.command()
@user_errors
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (Kaggle layout + masks/)."),
    n: int = typer.Option(600, "--n", help="Total images across train/val/test."),
    size: int = typer.Option(128, "--size", help="Image size in pixels."),
    seed: int = typer.Option(0, "--seed"),
    difficulty: float = typer.Option(0.5, "--difficulty", help="0 (obvious lesions) to 1 (faint, noisy)."),
    shortcut: bool = typer.Option(False, "--shortcut", help="Add a corner marker correlated with PNEUMONIA."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Processes drawing images (default: one per core); the files do not depend on it."),
) -> None:
    """Draw a synthetic chest-phantom dataset with a lesion mask per PNEUMONIA image."""
    import signal

    from .data.synth import synth_dataset

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # a SIGTERM removes the half-drawn folder as Ctrl-C does

    signal.signal(signal.SIGTERM, stop)
    s = synth_dataset(out, n=n, size=size, seed=seed, difficulty=difficulty, shortcut=shortcut, progress=_progress(),
                      workers=workers)
    _say(f"wrote {sum(sum(c.values()) for c in s.counts.values())} images to {s.root} in {s.seconds:.1f} s")


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for data, run, evaluation and report.html."),
    data: Optional[Path] = typer.Option(None, "--data", help="Use a real dataset root instead of synthetic phantoms."),
    n: int = typer.Option(800, "--n", help="Synthetic images to draw."),
    seed: int = typer.Option(0, "--seed"),
    precision: Precision = typer.Option(Precision.auto, "--precision"),
    replace: bool = typer.Option(False, "--replace", help="Replace an earlier demo in --out."),
    method: str = typer.Option("gradcam", "--method", help=f"Explanation method of the report: {METHOD_HELP}."),
    no_shortcut: bool = typer.Option(False, "--no-shortcut", help="Skip the shortcut check (a second small model)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars (logs, CI)."),
) -> None:
    """synth → train → evaluate → explain → report.html, in a few minutes on a laptop CPU."""
    from .demo import run_demo

    r = run_demo(
        out, data, n=n, seed=seed, overrides={"train.precision": precision.value},
        progress=_progress(no_progress), log=_say, replace=replace, method=method, shortcut=not no_shortcut,
    )
    m = r.metrics
    _say(f"accuracy {m['accuracy']:.3f}  ROC AUC {m['roc_auc']:.3f}")
    if r.localisation:
        lo, hi = r.localisation["pointing_ci95"]
        _say(f"{method} pointing game on lesions: {r.localisation['pointing']:.0%} of {r.localisation['n']} images "
             f"(95 % interval {lo:.0%}-{hi:.0%})")
    if r.shortcut is not None:
        c = r.shortcut
        _say(f"shortcut model: accuracy {c.accuracy_marked:.0%} with the marker, {c.accuracy_clean:.0%} without; "
             f"{c.marker_mass:.0%} of its maps' mass lies near the marker ({c.marker_area:.0%} of the image), "
             f"on the lesion it points for {c.lesion_pointing:.0%}")
    _say(f"report: {r.report}  ({r.seconds:.0f} s)")


@app.command()
@user_errors
def serve(
    checkpoint: Path = typer.Option(..., "--checkpoint", help=CHECKPOINT_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; anything but loopback needs --api-key."),
    port: int = typer.Option(8000, "--port"),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="PNEUMOSCOPE_API_KEY", show_envvar=True,
        help="Require this key on every /api/ call (X-API-Key or Authorization: Bearer).",
    ),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", help="Largest request body (all files), MB."),
    max_inflight_upload_mb: float = typer.Option(
        400.0, "--max-inflight-upload-mb", help="Most upload bytes held by all requests at once, MB; more: 503."),
    max_megapixels: float = typer.Option(100.0, "--max-megapixels", help="Largest image, width x height in millions."),
    max_request_megapixels: float = typer.Option(
        256.0, "--max-request-megapixels", help="Most pixels in one request, all images together, in millions (413)."),
    max_inflight_megapixels: float = typer.Option(
        512.0, "--max-inflight-megapixels",
        help="Most pixels of admitted images in the whole server at once, in millions; more: 503 before decoding."),
    max_files: int = typer.Option(16, "--max-files", help="Most files in one request."),
    batch_size: int = typer.Option(16, "--batch-size", help="Most images per model call (waiting requests are batched)."),
    workers: int = typer.Option(2, "--workers", help="Threads decoding uploads and rendering overlays."),
    max_pending: int = typer.Option(256, "--max-pending", help="Most images queued at once before 503."),
    max_connections: int = typer.Option(
        64, "--max-connections", help="uvicorn's limit_concurrency: more connections/requests at once get 503."),
    body_timeout: float = typer.Option(60.0, "--body-timeout", help="Seconds a request may take to send its body (408)."),
    public_docs: bool = typer.Option(
        False, "--public-docs", help="Serve /docs and /openapi.json without the API key (by default they need it)."),
    precision: Precision = typer.Option(Precision.auto, "--precision"),
    device: str = typer.Option("auto", "--device"),
    show_patient: bool = typer.Option(
        False, "--show-patient",
        help="Return a DICOM upload's patient name and ID (shown in the viewer's DICOM panel); off by default.",
    ),
) -> None:
    """Web viewer and HTTP API (FastAPI + uvicorn); the model is loaded once."""
    from .serving import ServeSettings
    from .serving import serve as run_server

    settings = ServeSettings(
        host=host, port=port, api_key=api_key, device=device, precision=precision.value,
        max_upload_mb=max_upload_mb, max_megapixels=max_megapixels, max_files=max_files,
        batch_size=batch_size, workers=workers, max_pending=max_pending, show_patient=show_patient,
        max_request_megapixels=max_request_megapixels, max_inflight_megapixels=max_inflight_megapixels,
        max_connections=max_connections, body_timeout=body_timeout, public_docs=public_docs,
        max_inflight_upload_mb=max_inflight_upload_mb,
    ).validate()  # refuse a bad flag (or a public host without a key) before loading the model
    # Said once the server is listening: not before the checkpoint loaded and the port bound.
    run_server(checkpoint, settings, on_listening=lambda url: _say(
        f"serving {checkpoint} at {url}  (API docs: /docs; Ctrl-C to stop)"))


@app.command("models")
@user_errors
def models_cmd(
    name: Optional[str] = typer.Argument(None, help="A shipped model: print its model card."),
) -> None:
    """List the trained models shipped with pneumoscope and the architectures to train."""
    from .errors import CheckpointError
    from .models import get_model_info, list_models
    from .zoo import find_shipped, shipped_models, shipped_names

    if name is not None:
        found = find_shipped(name)
        if found is None:
            raise CheckpointError(f"{name}: not a shipped model; shipped: {shipped_names()}")
        typer.echo(found.card_text() or f"{found.name}: no model card shipped")
        return
    shipped = shipped_models()
    typer.echo("Trained models shipped with pneumoscope (pass the name as --checkpoint; "
               "`pneumoscope models NAME` prints the card):")
    for m in shipped:
        meta = m.metadata()
        prep = meta.get("preprocessing", {})
        typer.echo(f"  {m.name:20s} {meta.get('architecture', '?'):10s} {prep.get('image_size', '?')} px  "
                   f"threshold {meta.get('threshold', float('nan')):.3f}  {m.size_bytes / 1e6:.1f} MB  "
                   f"{meta.get('info', {}).get('summary', '')}")
    if not shipped:
        typer.echo("  (none in this installation)")
    typer.echo("Architectures (model.backbone in a training config), with their Grad-CAM layer and the layer "
               "`trainable_from: finetune` trains from:")
    for arch in list_models():
        info = get_model_info(arch)
        typer.echo(f"  {arch:20s} layer {info.default_layer:14s} finetune {info.finetune_from:14s} {info.description}")


@app.command()
@user_errors
def info(checkpoint: Path = typer.Argument(..., help="A pneumoscope checkpoint file, or a shipped model by name.")) -> None:
    """Print a checkpoint's metadata (architecture, preprocessing, threshold, validation)."""
    import json

    from .checkpoint import read_metadata

    meta = read_metadata(checkpoint)
    meta.pop("config", None)
    typer.echo(json.dumps(meta, indent=2))


from . import commands  # noqa: E402,F401  (registers the commands kept in commands/)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
