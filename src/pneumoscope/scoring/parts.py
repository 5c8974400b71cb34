"""Part files: what each rank has scored so far, durable the moment it is written.

Every rank appends its finished rows to part files of its own (``part-r00001-<token>-000003.parquet``),
each written to a temporary name and renamed into place, so a part file is either whole or absent
however the job dies. The folder also holds ``run.json``, the settings of the run, so that
``--resume`` cannot continue a job with another checkpoint or other explanation settings.

Rows are keyed by the input's path: a resumed run skips the paths already written, and the final
merge takes one row per input path, in input order, whatever the world size and however many
times a row was written (Lightning's distributed sampler never repeats inputs in prediction, but
a job killed between a rename and the next batch may score an input twice on resume).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConfigError, DataError
from ..fileio import atomic_path, atomic_write_text
from .tables import COLUMNS, read_table, rows_to_table, schema

if TYPE_CHECKING:
    import pyarrow as pa

SETTINGS = "run.json"
PART_GLOB = "part-*.parquet"


def parts_folder(target: Path) -> Path:
    """Where the part files of a run writing ``target`` (a table or a folder) live: ``<target>.parts``."""
    target = Path(os.path.abspath(target))
    return target.with_name(target.name + ".parts")


class PartStore:
    """The part files of one run, in one folder shared by all ranks (a shared file system across nodes)."""

    def __init__(self, folder: Path, with_entry: bool = False) -> None:
        self.folder = Path(folder)
        self.with_entry = with_entry
        self._token = uuid.uuid4().hex[:8]  # two attempts of the same rank never pick the same name
        self._seq = 0

    # ------------------------------------------------------------------ state before a run

    def files(self) -> list[Path]:
        """Complete part files (temporary files of a killed writer are not listed)."""
        return sorted(self.folder.glob(PART_GLOB)) if self.folder.is_dir() else []

    def started(self) -> bool:
        """Whether an earlier run left part files or settings here."""
        return bool(self.files()) or (self.folder / SETTINGS).is_file()

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to resume a run that was started with other settings.

        Raises:
            ConfigError: ``run.json`` differs from ``settings`` (the differing keys are named).
        """
        path = self.folder / SETTINGS
        if not path.is_file():
            return
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable ({exc}); delete {self.folder} to start over") from None
        differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if differ:
            raise ConfigError(
                f"{path}: the interrupted run used other settings ({', '.join(differ)}); resume it with the same "
                f"checkpoint and options, or delete {self.folder} to start over"
            )

    def write_settings(self, settings: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / SETTINGS, json.dumps(settings, indent=2))

    # ------------------------------------------------------------------ writing

    def write(self, rows: Sequence[dict[str, Any]], rank: int) -> Path:
        """Write ``rows`` (dicts with ``index`` and the prediction columns) as one new part file, atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.folder.mkdir(parents=True, exist_ok=True)
        table = rows_to_table(list(rows), self.with_entry)
        table = table.append_column(pa.field("index", pa.int64(), nullable=False), pa.array([r["index"] for r in rows], pa.int64()))
        self._seq += 1
        path = self.folder / f"part-r{rank:05d}-{self._token}-{self._seq:06d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
            with open(tmp, "rb+") as fh:  # durable before the rename makes it count
                os.fsync(fh.fileno())
        return path

    # ------------------------------------------------------------------ reading

    def read(self) -> "pa.Table":
        """Every row written so far (duplicates possible), with the columns of :func:`schema`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sch = schema(self.with_entry)
        tables = []
        for f in self.files():
            try:
                t = pq.read_table(f)
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"{f}: unreadable part file ({exc}); delete {self.folder} to start over") from None
            if self.with_entry and "entry" not in t.column_names:
                raise ConfigError(f"{f}: written without explanations; delete {self.folder} to start over")
            tables.append(t.select(sch.names).cast(sch))
        return pa.concat_tables(tables) if tables else sch.empty_table()

    def remove(self) -> None:
        """Delete the folder once the merged output is in place."""
        shutil.rmtree(self.folder, ignore_errors=True)


def previous_rows(out: Path | None, manifest: Path | None) -> "pa.Table | None":
    """Rows of an earlier run's finished output, for ``--resume``: the manifest when explaining, else ``out``.

    An explanation run's rows come from its ``manifest.json`` (whose entries also carry what the
    new manifest needs); a prediction run's from its table. Missing files give ``None``.
    """
    if manifest is not None:
        if not manifest.is_file():
            return None
        try:
            data = json.loads(manifest.read_text(encoding="utf-8"))
            threshold = float(data["threshold"])
            rows = [{
                "path": e["path"], "label": e.get("label", ""), "prob_pneumonia": e.get("prob_pneumonia"),
                "threshold": threshold, "error": e.get("error", ""), "entry": json.dumps(e),
            } for e in data["images"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{manifest}: not a pneumoscope manifest.json ({exc}); move it away to start over") from None
        return rows_to_table(rows, with_entry=True)
    if out is not None and out.is_file():
        return read_table(out)
    return None


def written_paths(store: PartStore, previous: "pa.Table | None") -> set[str]:
    """Input paths that already have a row, in part files or in the earlier output."""
    import pyarrow.parquet as pq

    done: set[str] = set()
    for f in store.files():
        done.update(pq.read_table(f, columns=["path"]).column("path").to_pylist())
    if previous is not None:
        done.update(previous.column("path").to_pylist())
    return done


def merge(inputs: Sequence[Path], store: PartStore, previous: "pa.Table | None") -> "pa.Table":
    """One row per input, in input order: fresh part rows first, then the earlier output's.

    Raises:
        RuntimeError: an input has no row (a bug: every scheduled input writes one).
    """
    import pyarrow as pa

    tables = [store.read()]
    if previous is not None:
        sch = schema(store.with_entry)
        if store.with_entry and "entry" not in previous.column_names:
            previous = previous.append_column("entry", pa.nulls(previous.num_rows, pa.string()))
        tables.append(previous.select(sch.names).cast(sch))
    table = pa.concat_tables(tables)
    first: dict[str, int] = {}
    for i, p in enumerate(table.column("path").to_pylist()):
        first.setdefault(p, i)
    order = [first.get(str(p), -1) for p in inputs]
    missing = [str(p) for p, i in zip(inputs, order) if i < 0]
    if missing:
        raise RuntimeError(f"{len(missing)} input(s) have no row after scoring, e.g. {missing[0]}")
    return table.take(pa.array(order, pa.int64()))


__all__ = ["COLUMNS", "PartStore", "merge", "parts_folder", "previous_rows", "written_paths"]
