"""Label maps to pictures: colour masks and overlays (BGR, for OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np

from .classes import palette


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """HxW integer labels -> HxWx3 BGR uint8 using the class palette (out-of-range ids black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:num_classes] = palette(num_classes)[:, ::-1]
    if labels.dtype == np.uint8:
        return np.take(lut, labels, axis=0)
    outside = (labels < 0) | (labels >= num_classes)  # e.g. -1 / 255 ignore labels
    picture = np.take(lut, np.where(outside, 0, labels).astype(np.intp), axis=0)
    picture[outside] = 0
    return picture


def overlay(image_bgr: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour mask over the image; ``alpha`` is the mask's weight."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha}")
    if labels.shape != image_bgr.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the image {image_bgr.shape[:2]}")
    return cv2.addWeighted(image_bgr, 1.0 - alpha, colorize(labels, num_classes), alpha, 0.0)
