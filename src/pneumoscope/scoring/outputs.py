"""The prediction table's path, checked before any work: a folder where the table goes, an
unknown table suffix, or a place it cannot be written (``fileio.check_output_file``, which
``predict``, ``explain``, ``evaluate`` and ``train`` share for their other outputs) is refused
with one line naming the path and what was expected, before a model is loaded and before
anything is created.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..fileio import check_output_file
from .tables import FORMATS

TABLE_SUFFIXES = ".csv, .json or .parquet"


def check_table_path(path: str | Path) -> None:
    """Refuse ``path`` as a prediction table unless its suffix names a format and it can be written.

    Raises:
        ConfigError: an unknown suffix (the accepted ones are listed), or see :func:`check_output_file`.
    """
    p = Path(path)
    expected = f"a prediction table file ({TABLE_SUFFIXES})"
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder; expected {expected}")
    if p.suffix.lower() not in FORMATS:
        raise ConfigError(f"{p}: unknown table format {p.suffix or '(no suffix)'!s}; expected {TABLE_SUFFIXES}")
    check_output_file(p, expected)


__all__ = ["TABLE_SUFFIXES", "check_table_path"]
