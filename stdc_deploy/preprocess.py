"""Image -> network input: BGR uint8 (OpenCV) to a normalised float32 NCHW RGB batch.

Two protocols, matching :mod:`stdc_deploy.postprocess`:

``official``
    What the STDC-Seg evaluation does: normalise the full-size image in float
    (``(x / 255 - mean) / std``), then resize it bilinearly with ``align_corners=True`` to
    the network input. Computed exactly in float32 with PyTorch's sampling positions and
    weights, only at the output pixels (each output value interpolates the four normalised
    source pixels around it).
``fast``
    Resize the 8-bit image with OpenCV's bilinear filter (half-pixel centres), then
    normalise: the usual real-time path. Its samples sit up to half a source pixel away
    from the official ones, so labels differ along boundaries.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np

from .sampling import align_corners_grid

PROTOCOLS = ("official", "fast")


@functools.lru_cache(maxsize=8)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: the normalised value of every 8-bit level, per RGB channel."""
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean_arr = np.asarray(mean, dtype=np.float32)[:, None]
    std_arr = np.asarray(std, dtype=np.float32)[:, None]
    return ((levels[None, :] - mean_arr) / std_arr).astype(np.float32)


def _check(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        what = f"{image.dtype} of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {what}")


def _official_planes(image: np.ndarray, size: tuple[int, int], table: np.ndarray, out: np.ndarray) -> None:
    """Normalise, then align_corners=True bilinear resize, into ``out`` (3, h, w)."""
    height, width = image.shape[:2]
    y0, y1, wy = align_corners_grid(height, size[0])
    x0, x1, wx = align_corners_grid(width, size[1])
    wy0, wy1 = (1 - wy)[:, None], wy[:, None]
    wx0, wx1 = 1 - wx, wx
    top, bottom = image[y0], image[y1]  # (h, W, 3) rows the output samples
    for c in range(3):  # RGB plane c comes from BGR channel 2 - c
        lut = table[c]
        t, b = top[:, :, 2 - c], bottom[:, :, 2 - c]
        v00, v01 = lut[t[:, x0]], lut[t[:, x1]]
        v10, v11 = lut[b[:, x0]], lut[b[:, x1]]
        out[c] = wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)


def normalize(images_bgr: Sequence[np.ndarray] | np.ndarray,
              mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              size: tuple[int, int] | None = None, protocol: str = "fast") -> np.ndarray:
    """Stack BGR uint8 HxWx3 images into a (N, 3, H, W) float32 RGB batch.

    ``size`` (height, width) resizes each image under ``protocol`` (see the module
    docstring); without it all images must share one size and are only normalised.
    ``mean``/``std`` are on the 0-1 scale (default: ImageNet's, ``IMAGENET_MEAN`` /
    ``IMAGENET_STD`` of :mod:`stdc_deploy.core.metadata`). Normalisation is a table lookup
    per channel written straight into the NCHW planes.
    """
    if mean is None or std is None:
        # imported here, not at the top: this module also runs copied without its package,
        # inside Triton's Python backend, where callers pass mean and std
        from .core.metadata import IMAGENET_MEAN, IMAGENET_STD

        mean = IMAGENET_MEAN if mean is None else mean
        std = IMAGENET_STD if std is None else std
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if isinstance(images_bgr, np.ndarray) and images_bgr.ndim == 3:
        images_bgr = [images_bgr]
    if len(images_bgr) == 0:
        raise ValueError("no images to normalise")
    for image in images_bgr:
        _check(image)
    table = _lookup_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    height, width = tuple(size) if size is not None else images_bgr[0].shape[:2]
    batch = np.empty((len(images_bgr), 3, height, width), np.float32)
    for i, image in enumerate(images_bgr):
        if image.shape[:2] != (height, width):
            if size is None:
                raise ValueError(f"images differ in size ({image.shape[:2]} vs {(height, width)}); pass size=")
            if protocol == "official":
                _official_planes(image, (height, width), table, batch[i])
                continue
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        for c in range(3):
            np.take(table[c], image[:, :, 2 - c], out=batch[i, c])
    return batch
