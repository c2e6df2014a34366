"""A procedural segmentation data set: textured shapes on textured backgrounds.

Three classes that differ in outline, texture and colour range, as real classes do:
``0 background`` (dull gradients, blotches and noise), ``1 disc`` (ellipses filled with warm,
saturated stripes) and ``2 block`` (polygons filled with a cool, saturated checkerboard).
Colours are drawn per shape within each range, shapes overlap, occlude each other and touch
the borders, and sensor noise covers everything, so boundaries have to be learnt as on real
data. Used to measure what ``stdc train`` learns, and the accuracy cost of each
deployment precision, where no real data set can be downloaded.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..core.fileio import atomic_write_bytes
from ..errors import InvalidValue

CLASS_NAMES = ("background", "disc", "block")


def _colour(rng: np.random.Generator, hues: tuple[float, float] = (0, 180), saturation: tuple[float, float] = (0, 255),
            value: tuple[float, float] = (40, 255)) -> np.ndarray:
    """A BGR colour drawn in HSV (OpenCV ranges: hue 0-180)."""
    hsv = np.array([[[rng.uniform(*hues) % 180, rng.uniform(*saturation), rng.uniform(*value)]]], np.float32)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None]
    dull = {"saturation": (0, 110)}
    img = _colour(rng, **dull) * (1 - ramp) * 0.5 + _colour(rng, **dull) * (1 + ramp) * 0.5
    blotches = cv2.GaussianBlur(rng.normal(0, 40, (height, width, 3)).astype(np.float32), (0, 0),
                                rng.uniform(3, 8))
    return img + blotches


def _stripes(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Warm, saturated stripes (reds to yellows)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(5, 10)
    wave = (np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / period) > 0)[..., None]
    warm = {"hues": (-25, 35), "saturation": (90, 255)}
    return np.where(wave, _colour(rng, **warm), _colour(rng, **warm))


def _checker(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Cool, saturated checkerboards (greens to blues)."""
    yy, xx = np.mgrid[0:height, 0:width]
    cell = int(rng.integers(3, 7))
    board = (((yy // cell) + (xx // cell)) % 2 == 0)[..., None]
    cool = {"hues": (45, 130), "saturation": (90, 255)}
    return np.where(board, _colour(rng, **cool), _colour(rng, **cool))


def shapes_sample(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One BGR uint8 image and its uint8 mask of class ids (0, 1, 2)."""
    img = _background(height, width, rng)
    mask = np.zeros((height, width), np.uint8)
    scale = min(height, width)
    for _ in range(int(rng.integers(3, 7))):
        shape = np.zeros((height, width), np.uint8)
        if rng.random() < 0.5:
            cls, fill = 1, _stripes(height, width, rng)
            centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            axes = (int(rng.uniform(0.08, 0.28) * scale), int(rng.uniform(0.08, 0.28) * scale))
            cv2.ellipse(shape, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            cls, fill = 2, _checker(height, width, rng)
            centre = rng.uniform((0, 0), (width, height))
            radius = rng.uniform(0.12, 0.35) * scale
            corners = int(rng.integers(3, 6))
            step = 2 * np.pi / corners
            angles = rng.uniform(0, step) + step * np.arange(corners) + rng.uniform(-0.25, 0.25, corners) * step
            points = centre + radius * np.stack([np.cos(angles), np.sin(angles)], 1) * rng.uniform(0.6, 1.0, (corners, 1))
            cv2.fillPoly(shape, [np.round(points).astype(np.int32)], 1)
        inside = shape.astype(bool)
        img[inside] = fill[inside]
        mask[inside] = cls
    img += rng.normal(0, rng.uniform(2, 10), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_shapes_dataset(root: str | Path, count: int, height: int = 128, width: int = 128, *, seed: int = 0,
                         split: str | None = None) -> tuple[Path, Path]:
    """Write ``count`` samples as ``root/images/NNNN.png`` and ``root/masks/NNNN.png`` (the
    generic layout ``stdc train`` and ``stdc eval`` read); returns the two folders.

    ``split`` (e.g. ``"train"``, ``"val"``) adds a level: ``root/images/train/...``. Each
    file is written atomically; the same seed gives the same files.
    """
    if count < 1:
        raise InvalidValue("count", f"must be >= 1, got {count}")
    if min(height, width) < 16:
        raise InvalidValue("size", f"shapes need at least 16x16 pixels, got {height}x{width}")
    root = Path(root)
    images, masks = root / "images", root / "masks"
    if split:
        images, masks = images / split, masks / split
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask = shapes_sample(height, width, rng)
        for folder, array in ((images, image), (masks, mask)):
            ok, data = cv2.imencode(".png", array)
            atomic_write_bytes(folder / f"{i:04d}.png", data.tobytes())
    return images, masks
