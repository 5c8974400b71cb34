"""A streamed image store: every image decoded once into LitData chunks (``pneumoscope prepare``).

The in-memory cache (:class:`~pneumoscope.data.dataset.CachedDataset`) holds a whole dataset as
one uint8 tensor per process, which stops working somewhere between the Kaggle set (5,216 images)
and CheXpert (224,316). A store holds the same thing on disk: each image read once with the
project's reader (DICOM, JPEG, PNG…), made grey, resized and quantised exactly as the model's
preprocessing does, then written with :func:`litdata.optimize` into chunk files that
:class:`litdata.StreamingDataset` streams to every training process. The layout::

    STORE/pneumoscope_store.json   the store's own index (written last: its presence means complete)
    STORE/samples.csv              one row per input: subset, id, path, label, patient, split, status
    STORE/prepare_errors.csv       files that could not be read (never fatal)
    STORE/{train,val,test}/        one LitData dataset per subset (index.json + chunk-*.bin)

The patient-level train/validation split is made once, here, with the same code as the
in-memory path (:func:`~pneumoscope.data.dataset.load_splits`), so every rank and every later
run trains and validates on the same images.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch

from ..errors import ConfigError, DataError, PneumoscopeError
from ..fileio import atomic_write_text
from ..runtime import available_cores
from .dataset import CLASS_NAMES, Sample, load_splits
from .io import DEFAULT_MAX_PIXELS, read_image
from .transforms import Preprocessing

INDEX_NAME = "pneumoscope_store.json"
SAMPLES_NAME = "samples.csv"
ERRORS_NAME = "prepare_errors.csv"
STORE_FORMAT = "pneumoscope-store"
STORE_VERSION = 1
SUBSETS = ("train", "val", "test")
#: What a re-run must match for the existing store to count as the same one.
_REQUEST_KEYS = ("source", "image_size", "intensity", "jpeg_draft", "val_source", "val_fraction", "seed")


# ----------------------------------------------------------------------------- decoding


def decode_reduced(path: str | Path, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image like :func:`~pneumoscope.data.io.read_image`, a JPEG at reduced scale.

    libjpeg can decode at 1/2, 1/4 or 1/8 scale straight from the DCT coefficients (Pillow's
    draft mode); the smallest scale that keeps both sides at least ``size`` is used, so a
    2,000 px radiograph bound for 256 px never exists at full resolution. Everything else
    (DICOM, PNG, a file that is not what it claims) goes through ``read_image`` unchanged,
    errors included.

    Returns:
        ``(H, W)`` float32 in ``[0, 1]``, at least ``size`` on each side where the image is.
    """
    from PIL import Image

    from .io import _pil_to_gray  # the reader's own Pillow → grey conversion and error messages

    p = Path(path)
    try:
        with open(p, "rb") as fh:
            is_jpeg = fh.read(3) == b"\xff\xd8\xff"
    except OSError:
        is_jpeg = False
    if is_jpeg:
        try:
            image = Image.open(p, formats=("JPEG",))
        except Exception:  # noqa: BLE001 - let read_image produce its own message
            return read_image(p, max_pixels=max_pixels)
        with image:
            image.draft("L", (size, size))
            return _pil_to_gray(image, p, max_pixels)
    return read_image(p, max_pixels=max_pixels)


@dataclass(frozen=True)
class _Task:
    """One input for :func:`litdata.optimize` (picklable, for its worker processes)."""

    index: int
    path: str
    label: int
    patient: str
    split: str


def _store_item(task: _Task, *, size: int, intensity: str, jpeg_draft: bool, errors_dir: str) -> Iterator[dict[str, Any]]:
    """Decode one file into a store record; a bad file yields nothing and is noted in ``errors_dir``."""
    # One thread per decoding process: the processes are the parallelism, and a forked worker
    # must not enter the parent's OpenMP pool.
    torch.set_num_threads(1)
    prep = Preprocessing(size, intensity=intensity)
    try:
        gray = decode_reduced(task.path, size) if jpeg_draft else read_image(task.path)
        image = prep.to_uint8(gray).numpy()
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - one bad file must never stop a prepare
        reason = str(exc) if isinstance(exc, PneumoscopeError) else f"{type(exc).__name__}: {exc}"
        # Each worker process appends to its own file; the parent merges them.
        with open(Path(errors_dir) / f"{os.getpid()}.csv", "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow([task.index, task.path, " ".join(reason.split())])
        return
    yield {
        "image": image,
        "label": task.label,
        "index": task.index,
        "patient": task.patient,
        "split": task.split,
        # As bytes: LitData would store a str naming an existing image file as that file.
        "path": task.path.encode("utf-8"),
    }


# ----------------------------------------------------------------------------- prepare


@dataclass
class PrepareResult:
    """What :func:`prepare_store` did."""

    store: Path
    index: dict[str, Any]
    reused: bool  # True: an identical store was already there; nothing was written
    seconds: float

    @property
    def n_images(self) -> int:
        return sum(s["n"] for s in self.index["subsets"].values())

    @property
    def n_errors(self) -> int:
        return int(self.index["errors"])


def is_store(path: str | Path) -> bool:
    """Whether ``path`` is a complete store (a folder holding the store's index)."""
    return (Path(path) / INDEX_NAME).is_file()


def read_store_index(store: str | Path) -> dict[str, Any]:
    """The store's own index; :class:`DataError` naming the file when it is not one."""
    path = Path(store) / INDEX_NAME
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{store}: not a pneumoscope store (no {INDEX_NAME}; make one with `pneumoscope prepare`)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable store index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
        raise DataError(f"{path}: not a pneumoscope store index (expected format {STORE_FORMAT!r})")
    if index.get("version") != STORE_VERSION:
        raise DataError(f"{path}: store version {index.get('version')!r}; this pneumoscope reads version {STORE_VERSION}")
    return index


# ----------------------------------------------------------------------------- options

_CHUNK_BYTES = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(tb|gb|mb|kb|t|g|m|k|b)", re.IGNORECASE)
_UNIT_BYTES = {"b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_chunk_bytes(value: str | int) -> int:
    """``--chunk-bytes`` (``64MB``, ``512KB``, ``1.5GB``, as LitData reads it, or an int) → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _CHUNK_BYTES.fullmatch(str(value).strip())
        if m is None:
            raise ConfigError(f"--chunk-bytes must be a size such as 64MB (a number then B, KB, MB, GB or TB), not {value!r}")
        n = int(float(m.group(1)) * _UNIT_BYTES[m.group(2).lower()[0]])
    if n < 1:
        raise ConfigError(f"--chunk-bytes must be at least 1B, not {value!r}")
    return n


def _smallest_model_input() -> tuple[int, str]:
    """(size, model): the smallest input any registered model takes; a store below it trains none."""
    from ..models import get_model_info, list_models

    return min((get_model_info(name).min_input_size, name) for name in list_models())


def _check_options(image_size: int, val_fraction: float, seed: int) -> None:
    """Refuse, before any work, the option values that would fail later or write a useless store."""
    from ..config import check_seed

    smallest, model = _smallest_model_input()
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < smallest:
        raise ConfigError(f"--image-size must be at least {smallest} px, the smallest input any model takes "
                          f"({model}), not {image_size!r}")
    if not 0.0 < val_fraction < 1.0:  # NaN fails this too
        raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive): the fraction of train patients "
                          f"held out for validation, not {val_fraction!r}")
    check_seed(seed, "--seed")


# ----------------------------------------------------------------------------- interruption


class PrepareTerminated(BaseException):
    """SIGTERM arrived while a store was being prepared (like KeyboardInterrupt, nothing is left behind)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise PrepareTerminated()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _ignore_stop_signals() -> None:
    """While cleaning up after an interrupt: a second Ctrl-C must not cut the clean-up short."""
    if _in_main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


_F = TypeVar("_F", bound=Callable[..., Any])


def _stoppable(fn: _F) -> _F:
    """Run ``fn`` with SIGINT raising KeyboardInterrupt and SIGTERM :class:`PrepareTerminated`.

    Whatever handlers were there before (LitData's, which exits 0 on SIGINT, used to stay) are put
    back afterwards. Signals left ignored (a background job) stay ignored. Main thread only.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _in_main_thread():
            return fn(*args, **kwargs)
        old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if old[signal.SIGINT] is not signal.SIG_IGN:
                signal.signal(signal.SIGINT, signal.default_int_handler)
            if old[signal.SIGTERM] is not signal.SIG_IGN:
                signal.signal(signal.SIGTERM, _raise_terminated)
            return fn(*args, **kwargs)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    return wrapper  # type: ignore[return-value]


def _write_subsets(fn: Callable[..., Any], jobs: list[tuple[str, list[_Task]]], tmp: Path, *, chunk_bytes: int,
                   workers: int, progress: bool) -> None:
    """Write each subset's LitData dataset under ``tmp`` (decoding in ``workers`` processes)."""
    import litdata

    for name, tasks in jobs:
        litdata.optimize(
            fn=fn, inputs=tasks, output_dir=str(tmp / name), chunk_bytes=chunk_bytes,
            num_workers=max(1, min(workers, len(tasks))), verbose=progress, reorder_files=False,
            # fork starts workers at once (spawn re-imports torch in each, seconds apiece).
            start_method="fork" if sys.platform.startswith("linux") else "spawn",
        )


_WRITER_ERROR = ".writer-error.pickle"


def _writer_main(*args: Any, **kwargs: Any) -> None:
    """The forked writer process: :func:`_write_subsets`, its failure pickled into the partial folder.

    SIGINT arrives here blocked (see :func:`_write_subsets_isolated`) and stays blocked, in this
    process and in LitData's workers, which fork from it: a Ctrl-C at the terminal reaches the
    whole process group, and LitData's own SIGINT handler would ``os._exit(0)`` this process
    while its workers run on. Only the parent acts on a Ctrl-C, by killing this process tree.
    SIGTERM keeps its default action, which LitData uses to stop its workers on an error.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    code = 0
    try:
        _write_subsets(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        code = 1
        tb = traceback.format_exc()
        try:
            payload = pickle.dumps((exc, tb))
        except Exception:  # noqa: BLE001 - an exception that does not pickle: its traceback then
            payload = pickle.dumps((None, tb))
        with open(Path(args[2]) / _WRITER_ERROR, "wb") as fh:
            fh.write(payload)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        # No interpreter clean-up: LitData's queues and threads belong to a finished job.
        os._exit(code)


def _set_child_subreaper(on: bool) -> None:
    """Linux: orphaned descendants (LitData's workers, once the writer is killed) are ours to reap."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, int(on), 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except Exception:  # noqa: BLE001 - without it, init reaps them
        pass


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and all its descendants (stopped first, so none can fork meanwhile)."""
    found = [pid]
    for _ in range(20):
        for p in found:
            try:
                os.kill(p, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        new = [p for p in _descendants(pid) if p not in found]
        if not new:
            break
        found += new
    for p in found:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return found[1:]


def _write_subsets_isolated(fn: Callable[..., Any], jobs: list[tuple[str, list[_Task]]], tmp: Path, **kwargs: Any) -> None:
    """:func:`_write_subsets` in a forked writer process that an interrupt kills with its workers.

    LitData's ``optimize`` cannot be stopped cleanly from inside: it replaces the SIGINT handler
    with one that exits 0 and leaves its workers running, and a KeyboardInterrupt that gets past
    it leaves workers and queue threads that can hang the exit. So it runs in a child process
    whose whole tree this process SIGKILLs on Ctrl-C or SIGTERM, reaps, and only then lets the
    caller remove the partial folder, which nothing writes into any more.
    """
    if not sys.platform.startswith("linux"):
        _write_subsets(fn, jobs, tmp, **kwargs)
        return
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(
        target=_writer_main, args=(fn, jobs, tmp), kwargs=kwargs, name="pneumoscope-store-writer"
    )
    stop = {signal.SIGINT, signal.SIGTERM}
    _set_child_subreaper(True)
    try:
        # Blocked across the fork: the writer starts with both blocked, and a signal that comes
        # meanwhile is raised here once start() has returned, inside the try below.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        try:
            try:
                proc.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            proc.join()
        except BaseException:
            _ignore_stop_signals()
            if proc.pid is not None:
                others = _kill_tree(proc.pid)
                proc.join()
                for p in others:  # reparented to this process (the subreaper) once the writer died
                    try:
                        os.waitpid(p, 0)
                    except ChildProcessError:
                        pass
            raise
    finally:
        _set_child_subreaper(False)
    if proc.exitcode != 0:
        try:
            exc, tb = pickle.loads((tmp / _WRITER_ERROR).read_bytes())
        except Exception:  # noqa: BLE001 - killed without a word (the OOM killer, kill -9)
            raise RuntimeError(f"the store writer process ended with exit code {proc.exitcode}") from None
        if isinstance(exc, PneumoscopeError):
            raise exc
        if exc is None:
            raise RuntimeError(f"writing the store failed in the writer process:\n{tb}")
        if hasattr(exc, "add_note"):
            exc.add_note(f"in the store writer process:\n{tb}")
        raise exc


@_stoppable
def prepare_store(
    data: str | Path,
    out: str | Path,
    *,
    image_size: int = 256,
    intensity: str = "none",
    val_source: str = "split",
    val_fraction: float = 0.1,
    seed: int = 42,
    jpeg_draft: bool = True,
    workers: int | None = None,
    chunk_bytes: str = "64MB",
    progress: bool = True,
) -> PrepareResult:
    """Decode ``data`` (a Kaggle-layout root or a CSV manifest) once into the store ``out``.

    Args:
        data: The dataset, as ``train --data`` takes it.
        out: The store folder to create. An existing complete store made from the same data
            with the same settings is reused as it is; anything else there is refused.
        image_size: Side of the stored square images (the model's input size).
        intensity: ``none`` or ``equalize``, as ``data.intensity``.
        val_source: ``split`` (a patient-level split of train, made here once), ``val`` (the
            dataset's own val/) or ``test`` (the seed's leak; warns).
        val_fraction: Fraction of train patients held out for validation (``split``).
        seed: Seed of the patient-level split.
        jpeg_draft: Decode JPEGs at the smallest DCT scale that still covers ``image_size``.
        workers: Decoding processes (default: the CPUs this process may use).
        chunk_bytes: Target size of one LitData chunk file.
        progress: Progress bars.

    Returns:
        A :class:`PrepareResult`.

    Raises:
        ConfigError: An option out of its range (image size, validation fraction, seed, chunk size).
        DataError: ``data`` is not a dataset, or ``out`` holds something else.
        KeyboardInterrupt, PrepareTerminated: Ctrl-C or SIGTERM; the decoding processes are
            killed and the partial folder removed first.
    """
    t0 = time.perf_counter()
    _check_options(image_size, val_fraction, seed)
    chunk = parse_chunk_bytes(chunk_bytes)
    out = Path(out)
    data = Path(data)
    request = {
        "source": str(data.resolve()), "image_size": int(image_size), "intensity": intensity,
        "jpeg_draft": bool(jpeg_draft), "val_source": val_source, "val_fraction": float(val_fraction), "seed": int(seed),
    }
    if out.exists():
        reused = _existing_store(out, request)
        if reused is not None:
            return PrepareResult(out, reused, True, time.perf_counter() - t0)
    Preprocessing(image_size, intensity=intensity)  # a bad intensity fails before any work
    try:
        splits = load_splits(data, val_source, val_fraction, seed)
    except DataError as exc:
        if not str(exc).startswith(str(data)):
            raise DataError(f"{data}: {exc}") from None  # say which dataset (the split's own messages do not)
        raise
    source_split = {"split": "train", "val": "val", "test": "test"}[val_source]
    subsets: dict[str, tuple[list[Sample], str]] = {"train": (splits.train, "train"), "val": (splits.val, source_split)}
    if splits.test and val_source != "test":
        subsets["test"] = (splits.test, "test")
    if workers is None:
        workers = available_cores()

    out.parent.mkdir(parents=True, exist_ok=True)
    stale = sorted(out.parent.glob(f".{out.name}.partial-*"))
    if stale:
        import warnings

        warnings.warn(f"left-over partial store(s) from an interrupted prepare, safe to remove: "
                      f"{', '.join(str(s) for s in stale)}", stacklevel=2)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        errors_dir = tmp / ".errors"
        errors_dir.mkdir()
        fn = functools.partial(
            _store_item, size=int(image_size), intensity=intensity, jpeg_draft=bool(jpeg_draft), errors_dir=str(errors_dir)
        )
        jobs = [(name, [_Task(i, str(s.path), s.label, s.patient_id, split) for i, s in enumerate(samples)])
                for name, (samples, split) in subsets.items()]
        _write_subsets_isolated(fn, jobs, tmp, chunk_bytes=chunk, workers=int(workers), progress=progress)
        errors = _collect_errors(errors_dir, subsets)
        shutil.rmtree(errors_dir)
        _write_errors(tmp / ERRORS_NAME, errors)
        bad = {(name, idx) for name, idx, _, _ in errors}
        samples_sha = _write_samples(tmp / SAMPLES_NAME, subsets, bad)
        seconds = time.perf_counter() - t0
        n_in = sum(len(s) for s, _ in subsets.values())
        index = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "pneumoscope_version": _version(),
            "request": request,
            "preprocessing": {
                **Preprocessing(image_size, intensity=intensity).to_dict(),
                "stored": f"uint8 grey {image_size}x{image_size}, bilinear antialiased resize, as the model input",
                "jpeg_draft": bool(jpeg_draft),
            },
            "image_size": int(image_size),
            "class_names": list(CLASS_NAMES),
            "split": {
                "val_source": splits.val_source, "val_fraction": float(val_fraction), "seed": int(seed),
                "method": "patient-level (StratifiedGroupKFold, byte-identical duplicates on one side)"
                if val_source == "split" else f"the dataset's own {source_split}/",
                "samples_csv": SAMPLES_NAME, "samples_sha256": samples_sha,
            },
            "subsets": {
                name: {
                    "dir": name, "source_split": split, "n": len(samples) - sum(1 for n, _ in bad if n == name),
                    "counts": _class_counts(samples, {i for n, i in bad if n == name}),
                }
                for name, (samples, split) in subsets.items()
            },
            "inputs": n_in,
            "errors": len(errors),
            "seconds": round(seconds, 1),
            "images_per_second": round(n_in / seconds, 1) if seconds > 0 else None,
        }
        for name, sub in index["subsets"].items():
            if sub["n"] == 0 and name in ("train", "val"):
                raise DataError(f"{data}: no readable {name} images (see the errors above); no store written")
        # The index goes last: a store without it is never taken for a complete one.
        atomic_write_text(tmp / INDEX_NAME, json.dumps(index, indent=2))
        if out.exists():
            out.rmdir()  # only an empty folder gets here (see _existing_store)
        os.rename(tmp, out)
    except BaseException:
        # BaseException: Ctrl-C and SIGTERM leave nothing behind either (the writer processes are
        # dead by now). A kill -9 leaves the hidden partial folder, which never looks like a store
        # and is named in the next run's warning.
        _ignore_stop_signals()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PrepareResult(out, index, False, time.perf_counter() - t0)


def _existing_store(out: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """The index of an identical store at ``out`` (reuse it), None for an empty folder; else refuse."""
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if is_store(out):
        index = read_store_index(out)
        old = index.get("request", {})
        diff = [k for k in _REQUEST_KEYS if old.get(k) != request[k]]
        if diff:
            k = diff[0]
            raise DataError(
                f"{out}: already a store made with {k}={old.get(k)!r}, not {request[k]!r}; "
                "choose another --out or remove the old store first"
            )
        return index
    if any(out.iterdir()):
        raise DataError(f"{out}: folder is not empty and not a pneumoscope store; choose another --out")
    return None


def _collect_errors(errors_dir: Path, subsets: dict[str, tuple[list[Sample], str]]) -> list[tuple[str, int, str, str]]:
    """(subset, index, path, reason) of every unreadable input, in input order."""
    by_path = {}
    for f in errors_dir.glob("*.csv"):
        with open(f, newline="", encoding="utf-8") as fh:
            for idx, path, reason in csv.reader(fh):
                by_path[(path, int(idx))] = reason
    out = []
    for name, (samples, _) in subsets.items():
        for i, s in enumerate(samples):
            reason = by_path.get((str(s.path), i))
            if reason is not None:
                out.append((name, i, str(s.path), reason))
    return out


def _write_errors(path: Path, errors: list[tuple[str, int, str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "subset", "error"])
        for name, _, p, reason in errors:
            w.writerow([p, name, reason])


def _write_samples(path: Path, subsets: dict[str, tuple[list[Sample], str]], bad: set[tuple[str, int]]) -> str:
    """samples.csv (every input, whether it made it into the store); returns its SHA-256."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["subset", "id", "path", "label", "patient_id", "split", "status"])
        for name, (samples, split) in subsets.items():
            for i, s in enumerate(samples):
                w.writerow([name, i, str(s.path), CLASS_NAMES[s.label], s.patient_id, split,
                            "error" if (name, i) in bad else "ok"])
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _class_counts(samples: list[Sample], bad: set[int]) -> dict[str, int]:
    counts = [0] * len(CLASS_NAMES)
    for i, s in enumerate(samples):
        if i not in bad:
            counts[s.label] += 1
    return dict(zip(CLASS_NAMES, counts))


def _version() -> str:
    from .. import __version__

    return __version__


# ----------------------------------------------------------------------------- reading


def _as_sample(item: dict[str, Any]) -> tuple[torch.Tensor, int, int]:
    """A store record → (uint8 (1, S, S), label, id): the item every image source yields."""
    return torch.from_numpy(np.ascontiguousarray(item["image"]))[None], int(item["label"]), int(item["index"])


class Store:
    """A prepared store: its index, and a LitData stream per subset."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.index = read_store_index(self.path)

    @property
    def image_size(self) -> int:
        return int(self.index["image_size"])

    @property
    def val_source(self) -> str:
        return str(self.index["split"]["val_source"])

    def subsets(self) -> list[str]:
        return list(self.index["subsets"])

    def check_preprocessing(self, prep: Preprocessing, owner: str) -> None:
        """Refuse a store whose images are not what ``prep`` (``owner``'s, e.g. a checkpoint) feeds the model.

        The stored images are already resized and quantised (and equalised), so the image size
        and the intensity mode must agree; mean and std are applied after reading, as always.

        Raises:
            ConfigError: One line naming the store, the mismatch and the way out.
        """
        pre = self.index["preprocessing"]
        if self.image_size != prep.image_size:
            raise ConfigError(
                f"{self.path}: the store holds {self.image_size} px images but {owner} expects {prep.image_size} px; "
                f"prepare a store with --image-size {prep.image_size}"
            )
        if pre.get("intensity", "none") != prep.intensity:
            raise ConfigError(
                f"{self.path}: the store was prepared with intensity {pre.get('intensity', 'none')!r} but {owner} "
                f"expects {prep.intensity!r}; prepare a store with --intensity {prep.intensity}"
            )

    def samples(self, subset: str) -> list[Sample]:
        """The images of ``subset`` that made it into the store, in id order, as labelled samples."""
        self._subset(subset)  # an unknown subset fails with the store's own message
        return [Sample(Path(r["path"]), CLASS_NAMES.index(r["label"]), r["patient_id"]) for r in self.rows((subset,))]

    def decoded(self, subset: str, progress: bool = True) -> torch.Tensor:
        """Every image of ``subset`` as (N, S, S) uint8, in id order (the order of :meth:`samples`)."""
        from tqdm.auto import tqdm

        position = {int(r["id"]): k for k, r in enumerate(self.rows((subset,)))}
        s = self.image_size
        out = torch.empty((len(position), s, s), dtype=torch.uint8)
        seen = 0
        for image, _, i in tqdm(self.dataset(subset, drop_last=False), total=len(position), desc=f"reading {subset}",
                                unit="img", disable=not progress, leave=False):
            out[position[i]] = image[0]
            seen += 1
        if seen != len(position):
            raise DataError(f"{self.path}: {subset} holds {seen} images, samples.csv lists {len(position)}; "
                            "the store is damaged, prepare it again")
        return out

    def count(self, subset: str) -> int:
        return int(self._subset(subset)["n"])

    def class_counts(self, subset: str) -> list[int]:
        counts = self._subset(subset)["counts"]
        return [int(counts[c]) for c in CLASS_NAMES]

    def _subset(self, subset: str) -> dict[str, Any]:
        try:
            return self.index["subsets"][subset]
        except KeyError:
            raise DataError(f"{self.path}: store has no {subset} images (it has {', '.join(self.subsets())})") from None

    def dataset(self, subset: str, *, shuffle: bool = False, seed: int = 42, drop_last: bool | None = None) -> Any:
        """A :class:`litdata.StreamingDataset` over ``subset`` yielding (uint8 (1,S,S), label, id).

        Under DDP each rank streams its own part (LitData reads the process group);
        ``drop_last`` (default: on with several processes) gives every rank the same count.
        """
        import litdata

        folder = self.path / self._subset(subset)["dir"]
        if not (folder / "index.json").is_file():
            raise DataError(f"{folder}: missing LitData index.json; the store is damaged, prepare it again")
        return litdata.StreamingDataset(str(folder), shuffle=shuffle, seed=seed, drop_last=drop_last, transform=_as_sample)

    def rows(self, subsets: tuple[str, ...] = SUBSETS) -> Iterator[dict[str, str]]:
        """samples.csv rows of ``subsets`` that made it into the store, streamed."""
        with open(self.path / SAMPLES_NAME, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row["subset"] in subsets and row["status"] == "ok":
                    yield row
