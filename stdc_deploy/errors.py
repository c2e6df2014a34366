"""The exception types for problems a user can fix.

The CLI prints a :class:`StdcError` as a single line on stderr and exits 1; everything
else is a bug and keeps its traceback. Library messages name Python parameters
(``shapes``, ``num_images``); :class:`InvalidValue` records which one, so the CLI can
name its flag instead.
"""

from __future__ import annotations

import os


class StdcError(Exception):
    """A user-facing error: bad input, missing dependency, failed verification."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InvalidValue(StdcError):
    """A parameter outside its valid range; ``param`` is the Python parameter's name."""

    def __init__(self, param: str, message: str, path: str | os.PathLike | None = None):
        self.param = param
        super().__init__(f"{param}: {message}", path)

    def for_flag(self, flag: str) -> str:
        """The message with the parameter named as the CLI flag ``flag``."""
        text = f"{flag}: {self.message[len(self.param) + 2:]}"
        return f"{self.path}: {text}" if self.path else text


class CheckpointError(StdcError):
    """A checkpoint that cannot be read, is not STDC-Seg, or does not fit the model."""


class ExportError(StdcError):
    """An export that failed, or whose artifact did not verify."""


class MissingDependencyError(StdcError):
    """An optional runtime (TensorRT, OpenVINO, ...) is not installed."""
