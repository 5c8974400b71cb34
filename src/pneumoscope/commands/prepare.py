"""``pneumoscope prepare``: decode a dataset once into a streamed store (LitData chunks)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cli import ValSource, _progress, _say, app, user_errors


@app.command()
@user_errors
def prepare(
    data: Path = typer.Argument(..., help="Dataset root (Kaggle layout train/val/test) or CSV manifest path,label[,patient_id][,split]."),
    out: Path = typer.Option(..., "--out", help="Store folder to create (reused as it is when already made from the same data and settings)."),
    image_size: int = typer.Option(256, "--image-size", help="Side of the stored images (at least the smallest model input, 8); train with the same --image-size."),
    intensity: str = typer.Option("none", "--intensity", help="none | equalize (as data.intensity)."),
    val_source: ValSource = typer.Option(ValSource.split, "--val-source", help="split (patient-level split of train, made here once) | val | test (the seed's leak)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Fraction of train patients held out for validation (split), between 0 and 1."),
    seed: int = typer.Option(42, "--seed", help="Seed of the patient-level split (0 to 2**32 - 1)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding processes (default: the CPUs available)."),
    jpeg_draft: bool = typer.Option(True, "--jpeg-draft/--no-jpeg-draft", help="Decode JPEGs at the smallest DCT scale that covers --image-size."),
    chunk_bytes: str = typer.Option("64MB", "--chunk-bytes", help="Target size of one chunk file, e.g. 64MB (B, KB, MB, GB, TB)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars (logs, CI)."),
) -> None:
    """Decode every image once (grey, resized, uint8) into STORE for `train --data STORE`.

    Ctrl-C (exit 130) or SIGTERM (exit 143) stops the decoding processes and removes the partial store.
    """
    from ..data.store import ERRORS_NAME, PrepareTerminated, prepare_store

    try:
        result = prepare_store(
            data, out, image_size=image_size, intensity=intensity, val_source=val_source.value,
            val_fraction=val_fraction, seed=seed, jpeg_draft=jpeg_draft, workers=workers, chunk_bytes=chunk_bytes,
            progress=_progress() and not no_progress,
        )
    except PrepareTerminated:
        _say("interrupted by SIGTERM; no store written")
        raise typer.Exit(143) from None  # 128 + SIGTERM, as a shell reports a process the signal ended
    if result.reused:
        _say(f"{out}: already prepared from {data} with these settings; nothing to do")
        return
    subsets = ", ".join(f"{name} {s['n']}" for name, s in result.index["subsets"].items())
    rate = result.index.get("images_per_second")
    _say(f"stored {result.n_images} images ({subsets}) at {image_size} px in {result.seconds:.1f} s"
         + (f" ({rate:.0f} images/s)" if rate else "") + f": {out}")
    if result.n_errors:
        _say(f"warning: {result.n_errors} file(s) could not be read and were left out; see {out / ERRORS_NAME}")
