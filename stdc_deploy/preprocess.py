"""Image -> network input: BGR uint8 (OpenCV) to normalised float32 NCHW RGB."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np

from .models import IMAGENET_MEAN, IMAGENET_STD


@functools.lru_cache(maxsize=8)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: the normalised value of every 8-bit level, per RGB channel."""
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    mean_arr = np.asarray(mean, dtype=np.float32)[:, None]
    std_arr = np.asarray(std, dtype=np.float32)[:, None]
    return ((levels[None, :] - mean_arr) / std_arr).astype(np.float32)


def normalize(images_bgr: Sequence[np.ndarray] | np.ndarray,
              mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
              size: tuple[int, int] | None = None) -> np.ndarray:
    """Stack BGR uint8 HxWx3 images into a (N, 3, H, W) float32 RGB batch.

    ``size`` (height, width) resizes the 8-bit image bilinearly first (OpenCV, half-pixel
    centres); without it all images must share one size. ``mean``/``std`` are on the 0-1
    scale. Normalisation is a table lookup per channel written straight into the NCHW
    planes: one pass, about 6x faster than float arithmetic on the whole image.
    """
    if isinstance(images_bgr, np.ndarray) and images_bgr.ndim == 3:
        images_bgr = [images_bgr]
    table = _lookup_table(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    resized = []
    for image in images_bgr:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR image, got {image.dtype} of shape {image.shape}")
        if size is not None and image.shape[:2] != tuple(size):
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        resized.append(image)
    if not resized:
        raise ValueError("no images to normalise")
    height, width = resized[0].shape[:2]
    batch = np.empty((len(resized), 3, height, width), np.float32)
    for i, image in enumerate(resized):
        if image.shape[:2] != (height, width):
            raise ValueError(f"images differ in size ({image.shape[:2]} vs {(height, width)}); pass size=")
        for c in range(3):  # RGB plane c comes from BGR channel 2 - c
            np.take(table[c], image[:, :, 2 - c], out=batch[i, c])
    return batch
