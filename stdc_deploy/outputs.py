"""Writing results: images and videos appear whole under their final names, or not at all.

The video writer lives in :mod:`stdc_deploy.video` and is re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .errors import StdcError
from .core.fileio import atomic_write_bytes
from .video import AtomicVideoWriter

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


__all__ = ["AtomicVideoWriter", "encode_image", "write_image"]
