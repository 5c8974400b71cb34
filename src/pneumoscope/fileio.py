"""Writing files so that a crash or Ctrl-C never leaves half of one behind, and output paths
checked before any work, so a bad ``--out`` costs nothing and leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ConfigError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it into place on success.

    On any exception the temporary file is removed and ``path`` is untouched. ``mode`` is
    applied because ``mkstemp`` creates files 0600, and results are meant to be shared.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


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


def check_empty_folder(path: str | Path, how_to_continue: str) -> None:
    """Refuse to write into a folder that already holds files (an earlier run's outputs would mix with ours).

    Raises:
        ConfigError: ``path`` is a non-empty folder; the message says how to continue or start over.
    """
    p = Path(path)
    if p.is_dir() and any(p.iterdir()):
        raise ConfigError(f"{p}: folder is not empty (an earlier run's outputs?); {how_to_continue}")
