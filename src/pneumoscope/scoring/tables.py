"""Prediction tables on disk: CSV (the default), JSON, and Parquet for archives of millions of rows.

The format follows the suffix of ``--out``. All three hold the same columns as
:class:`pneumoscope.inference.Prediction`. CSV and JSON are written exactly as ``predict`` always
wrote them (probabilities to 6 decimals in CSV); Parquet keeps the float64 values, typed, in
zstd-compressed row groups that pandas, DuckDB, Polars and Spark read without parsing text.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ..errors import DataError
from ..fileio import atomic_path

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ("path", "label", "prob_pneumonia", "threshold", "error")
FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}
ROW_GROUP = 128 * 1024  # rows per Parquet row group: large enough to compress well, small enough to stream
_CHUNK = 64 * 1024  # rows converted to Python objects at a time when writing text


def table_format(path: str | Path) -> str:
    """``csv``, ``json`` or ``parquet`` from the suffix (anything unknown is CSV, as it always was)."""
    return FORMATS.get(Path(path).suffix.lower(), "csv")


def schema(with_entry: bool = False) -> "pa.Schema":
    """The Arrow schema of a prediction table; ``entry`` holds a manifest entry as JSON (explanations)."""
    import pyarrow as pa

    fields = [
        pa.field("path", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("prob_pneumonia", pa.float64()),
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
    ]
    if with_entry:
        fields.append(pa.field("entry", pa.string()))
    return pa.schema(fields)


def rows_to_table(rows: list[dict[str, Any]], with_entry: bool = False) -> "pa.Table":
    """Dicts with the prediction columns (and ``entry``) → an Arrow table of :func:`schema`."""
    import pyarrow as pa

    sch = schema(with_entry)
    return pa.table({f.name: [r.get(f.name) for r in rows] for f in sch}, schema=sch)


def _batches(table: "pa.Table") -> Iterator[list[dict[str, Any]]]:
    for start in range(0, table.num_rows, _CHUNK):
        yield table.slice(start, _CHUNK).select(list(COLUMNS)).to_pylist()


def write_csv_stream(table: "pa.Table", fh: Any) -> None:
    """The prediction CSV of ``table`` to an open text file, chunk by chunk."""
    w = csv.writer(fh)
    w.writerow(COLUMNS)
    for chunk in _batches(table):
        for r in chunk:
            p = r["prob_pneumonia"]
            w.writerow([r["path"], r["label"], "" if p is None else f"{p:.6f}", r["threshold"], r["error"]])


def write_table(table: "pa.Table", path: str | Path) -> Path:
    """Write the prediction columns of ``table`` as CSV, JSON or Parquet (by suffix), atomically."""
    path = Path(path)
    fmt = table_format(path)
    with atomic_path(path) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table.select(list(COLUMNS)), tmp, row_group_size=ROW_GROUP, compression="zstd")
        elif fmt == "json":
            # One JSON array, as predict always wrote it; practical up to some 10^5 rows.
            rows = [r for chunk in _batches(table) for r in chunk]
            tmp.write_text(json.dumps(rows, indent=2), encoding="utf-8")
        else:
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                write_csv_stream(table, fh)
    return path


def read_table(path: str | Path) -> "pa.Table":
    """A prediction table written by :func:`write_table` (any of its formats), as Arrow.

    Raises:
        DataError: the file is not a prediction table.
    """
    import pyarrow as pa

    path = Path(path)
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif fmt == "json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            table = pa.Table.from_pylist(rows)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={"path": pa.string(), "label": pa.string(), "prob_pneumonia": pa.float64(),
                              "threshold": pa.float64(), "error": pa.string()},
                strings_can_be_null=False,
            ))
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(f"{path}: not a prediction table ({exc}); expected columns {', '.join(COLUMNS)}") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    return table.select(list(COLUMNS)).cast(schema())
