"""``pneumoscope compact``: a half-size copy of a checkpoint, for shipping and sharing."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from ..cli import _say, app, user_errors


class StorageDtype(str, Enum):
    fp16 = "fp16"
    bf16 = "bf16"


@app.command()
@user_errors
def compact(
    checkpoint: Path = typer.Argument(..., help="A checkpoint file (e.g. a run's best.ckpt)."),
    out: Path = typer.Argument(..., help="The compact checkpoint to write."),
    dtype: StorageDtype = typer.Option(StorageDtype.fp16, "--dtype", help="Storage precision of the weights."),
) -> None:
    """Store a checkpoint's weights at half precision: half the size, loaded back as float32."""
    from ..checkpoint import compact_checkpoint
    from ..fileio import check_output_file

    check_output_file(out, "a checkpoint file to write")
    r = compact_checkpoint(checkpoint, out, dtype=dtype.value)
    kept = f"; kept in float32 (out of float16's range): {', '.join(r['kept_fp32'])}" if r["kept_fp32"] else ""
    _say(f"wrote {r['path']} ({r['bytes_before'] / 1e6:.1f} MB -> {r['bytes_after'] / 1e6:.1f} MB, {r['dtype']}){kept}")
