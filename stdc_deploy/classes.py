"""Class names and colour palettes (Cityscapes train ids by default)."""

from __future__ import annotations

import numpy as np

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (  # RGB, as in cityscapesScripts
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Cityscapes names for 19 classes, ``class_<i>`` otherwise."""
    if num_classes == len(CITYSCAPES_CLASSES):
        return CITYSCAPES_CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


def palette(num_classes: int) -> np.ndarray:
    """An RGB palette (num_classes x 3, uint8): Cityscapes for 19 classes, else generated.

    The generated palette spreads the bits of the class index over the three
    channels (the PASCAL VOC scheme), so neighbouring ids get distinct colours.
    """
    if num_classes == len(CITYSCAPES_PALETTE):
        return np.array(CITYSCAPES_PALETTE, dtype=np.uint8)
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        colours[i] = (r, g, b)
    return colours
