"""Label maps to pictures: colour masks and overlays (BGR, for OpenCV)."""

from __future__ import annotations

import numpy as np

from .classes import palette


def colorize(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """HxW integer labels -> HxWx3 BGR uint8 using the class palette (out-of-range ids black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:num_classes] = palette(num_classes)[:, ::-1]
    return lut[np.clip(labels, 0, 255).astype(np.uint8)]


def overlay(image_bgr: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Blend the colour mask over the image; ``alpha`` is the mask's weight."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within 0..1, got {alpha}")
    mask = colorize(labels, num_classes).astype(np.float32)
    return (image_bgr.astype(np.float32) * (1 - alpha) + mask * alpha + 0.5).astype(np.uint8)
