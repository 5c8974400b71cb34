"""Errors that are the user's to fix.

Everything raised as a :class:`PneumoscopeError` is reported by the CLI as one line
(``error: <message>``) with exit status 2 and no traceback. Anything else is a bug.
"""

from __future__ import annotations

from pathlib import Path


class PneumoscopeError(Exception):
    """Base class for errors caused by input, configuration or environment."""


class ImageReadError(PneumoscopeError, ValueError):
    """An input image could not be read; the message names the file and what was expected."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ImageTooLargeError(ImageReadError):
    """An input image exceeds a size limit (pixels or bytes); raised before decoding its pixels."""


class DataError(PneumoscopeError, ValueError):
    """A dataset folder or manifest is missing, empty or malformed."""


class CheckpointError(PneumoscopeError, ValueError):
    """A checkpoint is unreadable, not a pneumoscope checkpoint, or does not match its architecture."""


class ConfigError(PneumoscopeError, ValueError):
    """A configuration value or combination of values is invalid."""


class WeightsUnavailableError(PneumoscopeError, RuntimeError):
    """Pretrained weights were asked for but cannot be obtained (usually: no network)."""
