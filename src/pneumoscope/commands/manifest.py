"""``pneumoscope manifest``: the project's CSV manifest from a public dataset's own files."""

from __future__ import annotations

import warnings
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..cli import _say, app, user_errors


class Format(str, Enum):
    kaggle = "kaggle"
    rsna = "rsna"
    nih = "nih"
    chexpert = "chexpert"
    mimic = "mimic"


class Uncertain(str, Enum):
    drop = "drop"
    positive = "positive"
    negative = "negative"


class Views(str, Enum):
    frontal = "frontal"
    all = "all"


@app.command()
@user_errors
def manifest(
    source: Path = typer.Argument(..., help="The dataset's folder, as downloaded."),
    fmt: Format = typer.Option(..., "--format", help="kaggle | rsna | nih | chexpert | mimic"),
    out: Path = typer.Option(..., "--out", help="Manifest CSV to write (path,label,patient_id,split)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="RSNA/NIH: another labels table (e.g. RSNA stage 1's)."),
    images: Optional[Path] = typer.Option(None, "--images", help="The image folder, where it is not the dataset's default."),
    uncertain: Uncertain = typer.Option(Uncertain.drop, "--uncertain", help="CheXpert/MIMIC uncertain (-1) labels: drop | positive | negative."),
    views: Views = typer.Option(Views.frontal, "--views", help="frontal (PA/AP, where the dataset records it) | all."),
) -> None:
    """Write a manifest of a public dataset (Kaggle, RSNA, NIH, CheXpert, MIMIC-CXR-JPG) from its own files."""
    from ..data.manifests import build_manifest, write_manifest
    from ..fileio import check_output_file

    check_output_file(out, "a manifest CSV file to write")
    result = build_manifest(fmt.value, source, labels=labels, images=images, uncertain=uncertain.value, views=views.value)
    missing = result.skipped.get("missing images", 0)
    if missing:
        listed = len(result.rows) + missing
        warnings.warn(
            f"{missing} of {listed} listed images are not on disk and were skipped (a partial download?), "
            f"e.g. {result.missing_examples[0]}",
            stacklevel=1,
        )
    if not result.rows:
        from ..errors import DataError

        raise DataError(f"{source}: no images found for --format {fmt.value}; nothing written")
    write_manifest(result.rows, out)
    _say(f"wrote {out}: {result.summary()}")
