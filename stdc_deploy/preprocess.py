"""Image -> network input: BGR uint8 (OpenCV) to normalised float32 NCHW RGB."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .models import IMAGENET_MEAN, IMAGENET_STD


def normalize(images_bgr: Sequence[np.ndarray] | np.ndarray,
              mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
              size: tuple[int, int] | None = None) -> np.ndarray:
    """Stack BGR uint8 HxWx3 images into a (N, 3, H, W) float32 RGB batch.

    ``size`` (height, width) resizes with bilinear interpolation first; without it all
    images must already share one size. ``mean``/``std`` are on the 0-1 scale.
    """
    if isinstance(images_bgr, np.ndarray) and images_bgr.ndim == 3:
        images_bgr = [images_bgr]
    scale = np.float32(1.0 / 255.0)
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
    inv_std = (1.0 / np.asarray(std, dtype=np.float32)).reshape(1, 1, 3)
    batch = []
    for image in images_bgr:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 BGR image, got shape {image.shape}")
        if size is not None and image.shape[:2] != tuple(size):
            image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        rgb = image[:, :, ::-1].astype(np.float32) * scale
        batch.append(((rgb - mean_arr) * inv_std).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(batch))
