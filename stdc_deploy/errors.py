"""The one exception type for problems a user can fix.

The CLI prints a :class:`StdcError` as a single line on stderr and exits 1;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class StdcError(Exception):
    """A user-facing error: bad input, missing dependency, failed verification."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class CheckpointError(StdcError):
    """A checkpoint that cannot be read, is not STDC-Seg, or does not fit the model."""


class ExportError(StdcError):
    """An export that failed, or whose artifact did not verify."""


class MissingDependencyError(StdcError):
    """An optional runtime (TensorRT, OpenVINO, ...) is not installed."""
