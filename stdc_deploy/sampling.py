"""Where bilinear ``align_corners=True`` resizing samples: the official STDC-Seg resize,
shared by pre-processing (image -> network input) and post-processing (logits -> labels)."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=32)
def align_corners_grid(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source index pairs and weights of align_corners=True linear interpolation along one
    axis, computed as PyTorch does (float32 scale ``(n_in - 1) / (n_out - 1)``)."""
    if n_out > 1:
        src = np.arange(n_out, dtype=np.float32) * np.float32((n_in - 1) / (n_out - 1))
    else:
        src = np.zeros(1, np.float32)
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = (src - lo).astype(np.float32)
    for array in (lo, hi, w):
        array.flags.writeable = False
    return lo, hi, w
