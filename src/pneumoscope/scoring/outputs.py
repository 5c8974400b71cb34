"""Output paths checked before any work: what ``predict``, ``explain`` and ``evaluate`` will write.

A path that cannot take its output (a folder where a table goes, a file where a folder goes, an
ancestor that is a file, a parent that cannot be created or written, an unknown table suffix) is
refused here, with one line naming the path and what was expected, before a model is loaded and
before anything is created, so a bad ``--out`` costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ConfigError
from .tables import FORMATS

TABLE_SUFFIXES = ".csv, .json or .parquet"


def _writable_ancestor(path: Path, shown: Path, expected: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we can create files in."""
    anc = Path(os.path.abspath(path))
    while not (anc.exists() or anc.is_symlink()):
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{shown}: {anc} is a file, not a folder; expected {expected}")
    try:  # os.access says yes to root, and to /proc: only creating a file tells
        fd, probe = tempfile.mkstemp(dir=anc, prefix=".pneumoscope-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{shown}: cannot create files in {anc} ({exc.strerror}); expected {expected}") from None


def check_output_file(path: str | Path, expected: str) -> None:
    """Refuse ``path`` as an output file unless it can be written (see the module docstring).

    Raises:
        ConfigError: ``path`` is a folder, an ancestor is a file, or its parent cannot be written.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder; expected {expected}")
    _writable_ancestor(p.parent, p, expected)


def check_output_folder(path: str | Path, expected: str) -> None:
    """Refuse ``path`` as an output folder unless it is (or can be made) a folder we can write in.

    Raises:
        ConfigError: ``path`` is a file, an ancestor is a file, or it cannot be created or written.
    """
    p = Path(path)
    if (p.exists() or p.is_symlink()) and not p.is_dir():
        raise ConfigError(f"{p}: is a file; expected {expected}")
    _writable_ancestor(p, p, expected)


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


def check_empty_folder(path: str | Path, how_to_continue: str) -> None:
    """Refuse to write into a folder that already holds files (an earlier run's outputs would mix with ours).

    Raises:
        ConfigError: ``path`` is a non-empty folder; the message says how to continue or start over.
    """
    p = Path(path)
    if p.is_dir() and any(p.iterdir()):
        raise ConfigError(f"{p}: folder is not empty (an earlier run's outputs?); {how_to_continue}")


__all__ = ["TABLE_SUFFIXES", "check_empty_folder", "check_output_file", "check_output_folder", "check_table_path"]
