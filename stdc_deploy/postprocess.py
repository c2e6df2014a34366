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

Both take logits at the network input size, as every artifact returns them, or the
network's own 1/8-resolution logits from a backend that skipped the final upsampling
(``Backend.final_resize_dropped``). From those, ``official`` resizes once, straight to the
frame size: identical labels at the input size; at other sizes, one bilinear resize where
the official pipeline makes two (1/8 -> input -> frame), agreeing on all but a few pixels
per ten thousand (README, "CPU"). ``fast`` first makes the labels at the input size exactly
(``input_size``), so it gives the same labels either way.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from .sampling import align_corners_grid

PROTOCOLS = ("official", "fast")


def argmax_classes(logits: np.ndarray) -> np.ndarray:
    """(C, H, W) float logits -> (H, W) uint8 argmax, the first maximum winning as in numpy.

    A running maximum over the class planes with OpenCV's vectorised kernels: about 4x
    faster than ``numpy.argmax(axis=0)`` on 19x512x1024. Since classes are visited in
    increasing order, ``labels = max(labels, c where this class beats the best so far)``.
    """
    return _argmax(logits, runner_up=False)[0]


def _argmax(logits: np.ndarray, runner_up: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Argmax labels and, with ``runner_up``, the largest logit among the other classes."""
    if logits.shape[0] > 256 or logits.dtype != np.float32:
        labels = logits.argmax(0).astype(np.uint8 if logits.shape[0] <= 256 else np.uint16)
        second = np.sort(logits, axis=0)[-2] if runner_up and logits.shape[0] > 1 else None
        return labels, second
    logits = np.ascontiguousarray(logits)
    best = logits[0].copy()
    labels = np.zeros(logits.shape[1:], np.uint8)
    greater = np.empty(logits.shape[1:], np.uint8)
    second = np.full(logits.shape[1:], -np.inf, np.float32) if runner_up else None
    smaller = np.empty_like(best) if runner_up else None
    for c in range(1, logits.shape[0]):
        if runner_up:  # the loser of (best so far, this class) competes for second place
            cv2.min(best, logits[c], dst=smaller)
            cv2.max(second, smaller, dst=second)
        cv2.compare(logits[c], best, cv2.CMP_GT, dst=greater)  # 255 where greater
        cv2.max(best, logits[c], dst=best)
        np.bitwise_and(greater, np.uint8(c), out=greater)
        cv2.max(labels, greater, dst=labels)
    return labels, second


@functools.lru_cache(maxsize=8)
def _sampling_maps(in_size: tuple[int, int], out_size: tuple[int, int], nearest: bool) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (fixed point) sending each output pixel to its source cell's top-left
    corner (``nearest=False``) or to the source pixel nearest its sampling point."""
    (y0, _, wy), (x0, _, wx) = align_corners_grid(in_size[0], out_size[0]), align_corners_grid(in_size[1], out_size[1])
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
    if (h, w) == (height, width):
        return argmax_classes(logits)
    if num_classes > 255 or num_classes < 2 or h < 2 or w < 2:  # no free marker value / degenerate
        return _resize_then_argmax(logits, size)
    low, second = _argmax(logits, runner_up=True)
    # cell (i, j) is uniform when its corners (i|i+1, j|j+1) share a label: max == min there
    hi = cv2.dilate(low, _CORNERS, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    lo = cv2.erode(low, _CORNERS, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
    cell = low.copy()
    cell[hi != lo] = 255  # marker: interpolate the logits there
    out = _gather(cell, size, nearest=False)
    if _cell_spans(h, height)[0].shape[1] * _cell_spans(w, width)[0].shape[1] >= BLOCK_MIN_PIXELS:
        ci, cj = np.nonzero(cell == 255)
        if len(ci):
            _boundary_blocks(np.ascontiguousarray(logits), low, second, ci, cj, size, out)
        return out
    ys, xs = np.nonzero(out == 255)
    if len(ys):
        out[ys, xs] = _boundary_labels(np.ascontiguousarray(logits), low, second, ys, xs, size)
    return out


# Upsampling by 4x or more (1/8 logits straight to the frame: 16x for a 512x1024 network and a
# 1024x2048 frame) gives each boundary cell a block of output pixels; scoring them block by block
# reads each corner's logits once per cell instead of once per pixel (about 3x faster there).
BLOCK_MIN_PIXELS = 16


@functools.lru_cache(maxsize=16)
def _cell_spans(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per source cell along one axis: the output indices it covers, padded to the longest
    run (``index``, padding -1), their interpolation weights (``weight``), and ``valid``."""
    lo, _, w = align_corners_grid(n_in, n_out)
    counts = np.bincount(lo, minlength=n_in)
    span = int(counts.max())
    index = np.full((n_in, span), -1, np.int64)
    weight = np.zeros((n_in, span), np.float32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for i in np.nonzero(counts)[0]:
        index[i, :counts[i]] = np.arange(starts[i], starts[i] + counts[i])
        weight[i, :counts[i]] = w[starts[i]:starts[i] + counts[i]]
    return index, weight, index >= 0


def _boundary_blocks(logits: np.ndarray, low: np.ndarray, second: np.ndarray, ci: np.ndarray, cj: np.ndarray,
                     size: tuple[int, int], out: np.ndarray) -> None:
    """:func:`_boundary_labels` for whole cells: every output pixel whose four source pixels
    are corners of cell (ci, cj), scored from that cell's corner logits, written into ``out``."""
    _, h, w = logits.shape
    rows, fy, row_ok = _cell_spans(h, size[0])
    cols, fx, col_ok = _cell_spans(w, size[1])
    fy, fx = fy[ci][:, :, None], fx[cj][:, None, :]  # (n, R, 1), (n, 1, C)
    ci1, cj1 = np.minimum(ci + 1, h - 1), np.minimum(cj + 1, w - 1)
    corners = (ci * w + cj, ci * w + cj1, ci1 * w + cj, ci1 * w + cj1)

    def interpolate(values, fy, fx):  # PyTorch's order of operations, per cell block
        v00, v01, v10, v11 = (v[:, None, None] for v in values)
        return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy

    flat, hw = logits.reshape(-1), h * w
    # each cell's corner classes in increasing order: a later class must score strictly more to
    # win, so ties go to the smaller class id (as argmax), and repeated classes are skipped
    candidates = np.sort(np.stack([low.reshape(-1)[c] for c in corners]), axis=0).astype(np.intp)
    best = interpolate([flat[candidates[0] * hw + c] for c in corners], fy, fx)
    winner = np.empty(best.shape, np.uint8)
    winner[...] = candidates[0][:, None, None]
    for j in range(1, 4):
        sel = np.nonzero(candidates[j] != candidates[j - 1])[0]
        if not len(sel):
            continue
        cand = candidates[j][sel]
        score = interpolate([flat[cand * hw + c[sel]] for c in corners], fy[sel], fx[sel])
        held, labels = best[sel], winner[sel]
        labels[score > held] = np.broadcast_to(cand[:, None, None], score.shape)[score > held]
        winner[sel], best[sel] = labels, np.maximum(held, score)
    bound = interpolate([second.reshape(-1)[c] for c in corners], fy, fx)
    valid = row_ok[ci][:, :, None] & col_ok[cj][:, None, :]
    ys = np.broadcast_to(rows[ci][:, :, None], valid.shape)[valid]
    xs = np.broadcast_to(cols[cj][:, None, :], valid.shape)[valid]
    out[ys, xs] = winner[valid]
    unsure = valid & ~(best > bound)
    if unsure.any():  # the rare pixels where a non-corner class could still win: all classes
        uy = np.broadcast_to(rows[ci][:, :, None], valid.shape)[unsure]
        ux = np.broadcast_to(cols[cj][:, None, :], valid.shape)[unsure]
        out[uy, ux] = _boundary_labels(logits, low, second, uy, ux, size, all_classes=True)


def _boundary_labels(logits: np.ndarray, low: np.ndarray, second: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                     size: tuple[int, int], all_classes: bool = False) -> np.ndarray:
    """Exact labels of boundary pixels, scoring only the classes that can win.

    Candidates are the argmax classes of the four corners. Every other class k has, at
    each corner, a logit <= that corner's runner-up logit, so its interpolated score is at
    most the same interpolation of the runner-ups (``bound``; float rounding is monotone,
    so this holds for the computed values too). Where the best candidate beats ``bound``
    strictly, it is the argmax over all classes; the rare other pixels score all classes.
    """
    num_classes, h, w = logits.shape
    y0, y1, wy = align_corners_grid(h, size[0])
    x0, x1, wx = align_corners_grid(w, size[1])
    fy, fx = wy[ys], wx[xs]
    corners = (y0[ys] * w + x0[xs], y0[ys] * w + x1[xs], y1[ys] * w + x0[xs], y1[ys] * w + x1[xs])
    if all_classes:
        planes = logits.reshape(num_classes, h * w)
        v = [planes[:, c] for c in corners]
        return ((v[0] * (1 - fx) + v[1] * fx) * (1 - fy) + (v[2] * (1 - fx) + v[3] * fx) * fy).argmax(0)

    def interpolate(v00, v01, v10, v11):  # PyTorch's order of operations
        return (v00 * (1 - fx) + v01 * fx) * (1 - fy) + (v10 * (1 - fx) + v11 * fx) * fy

    flat = logits.reshape(-1)
    low_flat = low.reshape(-1)
    candidates = np.stack([low_flat[c] for c in corners])  # (4, n) class ids
    scores = np.stack([interpolate(*(flat[candidates[j].astype(np.intp) * (h * w) + c] for c in corners))
                       for j in range(4)])
    best = scores.max(0)
    winner = np.where(scores == best, candidates, 255).min(0)  # ties: the smallest class id, as argmax
    bound = interpolate(*(second.reshape(-1)[c] for c in corners))
    unsure = np.nonzero(~(best > bound))[0]
    if len(unsure):
        planes = logits.reshape(num_classes, h * w)
        f_x, f_y = fx[unsure], fy[unsure]
        v = [planes[:, c[unsure]] for c in corners]
        full = (v[0] * (1 - f_x) + v[1] * f_x) * (1 - f_y) + (v[2] * (1 - f_x) + v[3] * f_x) * f_y
        winner[unsure] = full.argmax(0)
    return winner


def _resize_then_argmax(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize every class plane, then argmax: the degenerate cases (one class, more than 255,
    logits under 2 pixels a side). PyTorch's ``F.interpolate`` where PyTorch is installed;
    without it (this module copied into a Triton Python-backend model) the same sampling
    in numpy, one class at a time."""
    dtype = np.uint8 if logits.shape[0] <= 256 else np.uint16
    try:
        import torch
    except ImportError:
        return _resize_then_argmax_numpy(logits, size).astype(dtype)
    resized = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(logits))[None].float(),
                                              size=tuple(size), mode="bilinear", align_corners=True)
    return resized[0].argmax(0).numpy().astype(dtype)


def resize_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, h, w) float32 logits -> (N, C, H, W): the network's own final upsampling
    (bilinear, align_corners=True), for callers that want logits at the input size from a
    backend that skipped it. PyTorch where installed, else numpy."""
    if tuple(logits.shape[2:]) == tuple(size):
        return logits
    try:
        import torch
    except ImportError:
        return _bilinear_numpy(logits.astype(np.float32, copy=False), size)
    with torch.no_grad():
        out = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)),
                                              size=tuple(size), mode="bilinear", align_corners=True)
    return out.numpy()


def _bilinear_numpy(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(..., h, w) -> (..., H, W): bilinear align_corners=True in numpy, PyTorch's order of operations."""
    h, w = planes.shape[-2:]
    y0, y1, wy = align_corners_grid(h, size[0])
    x0, x1, wx = align_corners_grid(w, size[1])
    fy, fx = wy[:, None], wx[None, :]
    top, bottom = planes[..., y0, :], planes[..., y1, :]
    return (top[..., x0] * (1 - fx) + top[..., x1] * fx) * (1 - fy) + (bottom[..., x0] * (1 - fx) + bottom[..., x1] * fx) * fy


def _resize_then_argmax_numpy(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """align_corners=True bilinear resize and argmax (first maximum wins) in numpy, one class at a time."""
    labels = np.zeros(tuple(size), np.int64)
    best = None
    for c, plane in enumerate(logits):
        score = _bilinear_numpy(plane.astype(np.float32, copy=False), size)
        if best is None:
            best = score
            continue
        greater = score > best
        labels[greater] = c
        np.maximum(best, score, out=best)
    return labels


def labels_fast(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) labels: argmax at model resolution, then each output pixel
    takes the label nearest to where the official resize samples it."""
    low = argmax_classes(logits)
    if low.shape == tuple(size):
        return low
    if low.dtype != np.uint8:
        (y0, _, wy), (x0, _, wx) = align_corners_grid(low.shape[0], size[0]), align_corners_grid(low.shape[1], size[1])
        return low[np.minimum(y0 + (wy >= 0.5), low.shape[0] - 1)][:, np.minimum(x0 + (wx >= 0.5), low.shape[1] - 1)]
    return _gather(low, size, nearest=True)


def to_labels(logits: np.ndarray, size: tuple[int, int], protocol: str = "official",
              input_size: tuple[int, int] | None = None) -> np.ndarray:
    """(C, h, w) logits of one image -> (H, W) train-id labels under ``protocol``.
    ``input_size``: the network input the logits came from, where they are smaller (1/8
    logits from a backend that skipped the final upsampling)."""
    if protocol == "official":
        return labels_official(logits, size)
    if protocol == "fast":
        if input_size is not None and tuple(logits.shape[1:]) != tuple(input_size):
            low = labels_official(logits, tuple(input_size))  # what argmax at the input size gives
            return low if low.shape == tuple(size) else _gather(low, tuple(size), nearest=True)
        return labels_fast(logits, size)
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
