"""Writing results: images and videos appear whole under their final names, or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .errors import StdcError
from .core.fileio import atomic_write_bytes

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def encode_image(path: Path, image: np.ndarray) -> bytes:
    params = _PNG_FAST if path.suffix.lower() == ".png" else []
    try:
        ok, data = cv2.imencode(path.suffix, image, params)
    except cv2.error:
        ok = False
    if not ok:
        raise StdcError("cannot encode an image in this format", path)
    return data.tobytes()


def write_image(path: Path, image: np.ndarray) -> Path:
    """Encode by the file's suffix and write atomically (PNG with fast compression)."""
    return atomic_write_bytes(path, encode_image(path, image))


class AtomicVideoWriter:
    """A video written under a temporary name and moved into place when finished.

    ``close(keep=True)`` (normal end, or Ctrl-C: the frames done form a playable video)
    finalises the container and renames it; ``close(keep=False)`` deletes it.
    """

    def __init__(self, path: Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.size = size  # (width, height)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise StdcError(f"cannot write '{suffix}' videos (use one of {', '.join(sorted(FOURCC))})", self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._scratch = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))
        self._tmp = self._scratch / self.path.name
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*FOURCC[suffix]), fps, size)
        if not self._writer.isOpened():
            shutil.rmtree(self._scratch, ignore_errors=True)
            raise StdcError(f"OpenCV cannot encode {FOURCC[suffix]} video here", self.path)
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        # OpenCV drops frames of another size or channel count silently: convert them
        if frame.ndim == 2 or frame.shape[2] == 1:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        if frame.dtype != np.uint8:
            raise StdcError(f"video frames must be uint8, got {frame.dtype}", self.path)
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_LINEAR)
        self._writer.write(frame)
        self.frames += 1

    def close(self, keep: bool = True) -> Path | None:
        if self._writer is None:
            return self.path if keep else None
        self._writer.release()
        self._writer = None
        try:
            if keep and self.frames:
                os.replace(self._tmp, self.path)
                return self.path
            return None
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)

