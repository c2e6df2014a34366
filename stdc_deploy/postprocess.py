"""Network output -> label map at the original frame size.

Two protocols:

``official``
    What the STDC-Seg evaluation does: resize the logits bilinearly with
    ``align_corners=True`` to the frame size, then take the argmax. Computed exactly but
    without resizing every class map: where the four logit pixels around an output pixel
    share one argmax, the argmax of any convex combination of them is that same class, so
    only pixels on label boundaries need their logits interpolated. Equal to
    ``F.interpolate(..., align_corners=True).argmax(1)`` up to float rounding on exact ties,
    and about 5x faster at 1024x2048 on a 2-core CPU.
``fast``
    Argmax at the model resolution, then a nearest-neighbour resize of the labels (sampled
    where the official resize samples). Boundaries move by up to half a model pixel;
    elsewhere the two agree.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

PROTOCOLS = ("official", "fast")


def argmax_classes(logits: np.ndarray) -> np.ndarray:
    """(C, H, W) float logits -> (H, W) uint8 argmax, the first maximum winning as in numpy.

    A running maximum over the class planes with OpenCV's vectorised kernels: about 4x
    faster than ``numpy.argmax(axis=0)`` on 19x512x1024. Since classes are visited in
    increasing order, ``labels = max(labels, c where this class beats the best so far)``.
    """
    if logits.shape[0] > 256 or logits.dtype != np.float32:
        return logits.argmax(0).astype(np.uint8 if logits.shape[0] <= 256 else np.uint16)
    logits = np.ascontiguousarray(logits)
    best = logits[0].copy()
    labels = np.zeros(logits.shape[1:], np.uint8)
    greater = np.empty(logits.shape[1:], np.uint8)
    for c in range(1, logits.shape[0]):
        cv2.compare(logits[c], best, cv2.CMP_GT, dst=greater)  # 255 where greater
        cv2.max(best, logits[c], dst=best)
        np.bitwise_and(greater, np.uint8(c), out=greater)
        cv2.max(labels, greater, dst=labels)
    return labels


@functools.lru_cache(maxsize=16)
def _align_corners_grid(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source index pairs and weights of align_corners=True linear interpolation (as PyTorch)."""
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


@functools.lru_cache(maxsize=8)
def _sampling_maps(in_size: tuple[int, int], out_size: tuple[int, int], nearest: bool) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (fixed point) sending each output pixel to its source cell's top-left
    corner (``nearest=False``) or to the source pixel nearest its sampling point."""
    (y0, _, wy), (x0, _, wx) = _align_corners_grid(in_size[0], out_size[0]), _align_corners_grid(in_size[1], out_size[1])
    if nearest:
        y0 = np.minimum(y0 + (wy >= 0.5), in_size[0] - 1)
        x0 = np.minimum(x0 + (wx >= 0.5), in_size[1] - 1)
    map_x = np.broadcast_to(x0.astype(np.float32)[None, :], out_size)
    map_y = np.broadcast_to(y0.astype(np.float32)[:, None], out_size)
    return cv2.convertMaps(np.ascontiguousarray(map_x), np.ascontiguousarray(map_y), cv2.CV_16SC2,
                           nninterpolation=True)


def _gather(labels: np.ndarray, out_size: tuple[int, int], nearest: bool) -> np.ndarray:
    maps = _sampling_maps(labels.shape, tuple(out_size), nearest)
    return cv2.remap(labels, maps[0], maps[1], cv2.INTER_NEAREST)


_CORNERS = np.ones((2, 2), np.uint8)


def labels_official(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) labels: bilinear align_corners=True resize, then argmax."""
    num_classes, h, w = logits.shape
    height, width = size
    low = argmax_classes(logits)
    if (h, w) == (height, width):
        return low
    if num_classes > 255 or h < 2 or w < 2:  # no free marker value / degenerate: plain resize
        return _resize_then_argmax(logits, size)
    # cell (i, j) is uniform when its corners (i|i+1, j|j+1) share a label: max == min there
    hi = cv2.dilate(low, _CORNERS, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    lo = cv2.erode(low, _CORNERS, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    cell = low.copy()
    cell[hi != lo] = 255  # marker: interpolate the logits there
    out = _gather(cell, size, nearest=False)
    ys, xs = np.nonzero(out == 255)
    if len(ys):
        y0, y1, wy = _align_corners_grid(h, height)
        x0, x1, wx = _align_corners_grid(w, width)
        a0, a1, b0, b1 = y0[ys], y1[ys], x0[xs], x1[xs]
        fy, fx = wy[ys], wx[xs]
        flat = np.ascontiguousarray(logits).reshape(num_classes, h * w)
        top = flat[:, a0 * w + b0] * (1 - fx) + flat[:, a0 * w + b1] * fx
        bottom = flat[:, a1 * w + b0] * (1 - fx) + flat[:, a1 * w + b1] * fx
        out[ys, xs] = (top * (1 - fy) + bottom * fy).argmax(0)
    return out


def _resize_then_argmax(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch

    resized = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(logits))[None].float(),
                                              size=tuple(size), mode="bilinear", align_corners=True)
    labels = resized[0].argmax(0).numpy()
    return labels.astype(np.uint8 if logits.shape[0] <= 256 else np.uint16)


def labels_fast(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) labels: argmax at model resolution, then each output pixel
    takes the label nearest to where the official resize samples it."""
    low = argmax_classes(logits)
    if low.shape == tuple(size):
        return low
    if low.dtype != np.uint8:
        (y0, _, wy), (x0, _, wx) = _align_corners_grid(low.shape[0], size[0]), _align_corners_grid(low.shape[1], size[1])
        return low[np.minimum(y0 + (wy >= 0.5), low.shape[0] - 1)][:, np.minimum(x0 + (wx >= 0.5), low.shape[1] - 1)]
    return _gather(low, size, nearest=True)


def to_labels(logits: np.ndarray, size: tuple[int, int], protocol: str = "official") -> np.ndarray:
    """(C, h, w) logits of one image -> (H, W) train-id labels under ``protocol``."""
    if protocol == "official":
        return labels_official(logits, size)
    if protocol == "fast":
        return labels_fast(logits, size)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
