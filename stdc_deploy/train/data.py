"""Training data: the samples, a check of every label before training starts, and the
official recipe's augmentation (random scale, crop, flip, colour jitter).

Every batch is a pure function of ``(seed, iteration)``: the sample order is a seeded
permutation per epoch and each sample's augmentation draws from its own generator seeded by
``(seed, iteration, slot)``. Worker processes, their number and resuming therefore never
change what the network sees.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..core.metadata import IMAGENET_MEAN, IMAGENET_STD
from ..errors import StdcError
from ..evaluate import Dataset, Sample
from ..sources import read_image

IGNORE = -1  # ignored pixels in training label tensors (any class count fits)


@dataclass(frozen=True)
class Augment:
    """The recipe's augmentation. ``scale_range``: image scale drawn uniformly per sample;
    ``jitter``: brightness, contrast and saturation factors drawn from 1 +- jitter."""

    size: tuple[int, int]  # crop, HxW
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    jitter: float = 0.5


# -- checks before training ------------------------------------------------------------------------

def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    return None


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        while True:
            marker = f.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                return None
            code = marker[1]
            if code in (0xD8, 0x01) or 0xD0 <= code <= 0xD7:
                continue
            length = struct.unpack(">H", f.read(2))[0]
            if code in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height, width = struct.unpack(">xHH", f.read(5))
                return height, width
            f.seek(length - 2, os.SEEK_CUR)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from a PNG or JPEG header; other formats are decoded."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
        size = _png_size(head) or (_jpeg_size(path) if head[:2] == b"\xff\xd8" else None)
    except (OSError, struct.error):
        size = None
    return size if size is not None else read_image(path).shape[:2]


def check_samples(dataset: Dataset, samples: Sequence[Sample], workers: int = 4) -> None:
    """Read every label of ``samples``: values outside the classes (and not the ignore value)
    and a label whose size differs from its image's are refused, naming the file, before
    any training. All files are checked; the error names the first and counts the rest."""

    def check(sample: Sample) -> StdcError | None:
        try:
            label = dataset.read_label(sample)
            size = image_size(sample.image)
            if label.shape != size:
                return StdcError(f"mask is {label.shape[1]}x{label.shape[0]} but its image is {size[1]}x{size[0]}",
                                 sample.label)
        except StdcError as exc:
            return exc
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = [p for p in pool.map(check, samples) if p is not None]
    if problems:
        more = f" ({len(problems) - 1} more bad masks)" if len(problems) > 1 else ""
        first = problems[0]
        raise StdcError(f"{first.message}{more}", first.path)


def split_samples(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[tuple[Sample, ...], tuple[Sample, ...]]:
    """(train, val): a seeded ``fraction`` of the samples held out for validation."""
    count = int(round(len(samples) * fraction))
    if fraction > 0 and count == 0:
        count = 1
    if count >= len(samples):
        raise StdcError(f"--val-split {fraction:g} leaves no training images out of {len(samples)}")
    order = np.random.default_rng([seed, 1]).permutation(len(samples))
    val = sorted(order[:count])
    train = sorted(order[count:])
    return tuple(samples[i] for i in train), tuple(samples[i] for i in val)


def common_size(samples: Sequence[Sample]) -> tuple[int, int]:
    """The most frequent image size among (up to 64 of) the samples."""
    sizes: dict[tuple[int, int], int] = {}
    for sample in samples[:64]:
        size = image_size(sample.image)
        sizes[size] = sizes.get(size, 0) + 1
    return max(sizes, key=sizes.get)


# -- augmentation ------------------------------------------------------------------------------------

_MEAN = np.asarray(IMAGENET_MEAN, np.float32) * 255
_STD = np.asarray(IMAGENET_STD, np.float32) * 255
_GREY = np.asarray([0.114, 0.587, 0.299], np.float32)  # BGR weights of luma


def augment(image: np.ndarray, label: np.ndarray, aug: Augment, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 image + int32 label -> normalised (3, H, W) float32 RGB + (H, W) int64 label
    at ``aug.size``. Padding (where the scaled image is smaller than the crop) is the mean
    colour (0 after normalisation) and ignored in the label."""
    crop_h, crop_w = aug.size
    scale = rng.uniform(*aug.scale_range)
    h, w = label.shape
    new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (new_h, new_w) != (h, w):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)
    img = image.astype(np.float32)
    pad_h, pad_w = max(0, crop_h - new_h), max(0, crop_w - new_w)
    if pad_h or pad_w:
        top, left = int(rng.integers(0, pad_h + 1)), int(rng.integers(0, pad_w + 1))
        canvas = np.empty((new_h + pad_h, new_w + pad_w, 3), np.float32)
        canvas[:] = _MEAN[::-1]
        canvas[top:top + new_h, left:left + new_w] = img
        lab = np.full(canvas.shape[:2], IGNORE, np.int32)
        lab[top:top + new_h, left:left + new_w] = label
        img, label = canvas, lab
    y = int(rng.integers(0, img.shape[0] - crop_h + 1))
    x = int(rng.integers(0, img.shape[1] - crop_w + 1))
    img, label = img[y:y + crop_h, x:x + crop_w], label[y:y + crop_h, x:x + crop_w]
    if aug.flip and rng.random() < 0.5:
        img, label = img[:, ::-1], label[:, ::-1]
    if aug.jitter > 0:
        low, high = 1 - aug.jitter, 1 + aug.jitter
        img = img * rng.uniform(low, high)  # brightness
        grey = img @ _GREY
        img = (img - grey.mean()) * rng.uniform(low, high) + grey.mean()  # contrast
        grey = (img @ _GREY)[..., None]
        img = (img - grey) * rng.uniform(low, high) + grey  # saturation
        img = np.clip(img, 0, 255)
    rgb = (img[..., ::-1] - _MEAN) / _STD
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), np.float32), np.ascontiguousarray(label, np.int64)


# -- batches -----------------------------------------------------------------------------------------

def read_training_label(dataset: Dataset, sample: Sample) -> np.ndarray:
    """int32 class ids, :data:`IGNORE` where ignored (Cityscapes 255 and generic ignore alike)."""
    label = dataset.read_label(sample).astype(np.int32)
    label[(label < 0) | (label >= dataset.num_classes)] = IGNORE
    return label


class BatchSource(torch.utils.data.Dataset):
    """``source[iteration]`` -> (images (B, 3, H, W), labels (B, H, W)): the batch of that
    iteration, the same whoever computes it."""

    def __init__(self, dataset: Dataset, samples: Sequence[Sample], batch: int, aug: Augment, seed: int):
        self.dataset, self.samples, self.batch, self.aug, self.seed = dataset, tuple(samples), batch, aug, seed
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:  # iterations are unbounded; the loader's sampler picks them
        return 2**62

    def order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, 2, epoch]).permutation(len(self.samples))}
        return self._perms[epoch]

    def sample_index(self, iteration: int, slot: int) -> int:
        position = iteration * self.batch + slot
        return int(self.order(position // len(self.samples))[position % len(self.samples)])

    def __getitem__(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for slot in range(self.batch):
            sample = self.samples[self.sample_index(iteration, slot)]
            rng = np.random.default_rng([self.seed, 3, iteration, slot])
            image, label = augment(read_image(sample.image), read_training_label(self.dataset, sample), self.aug, rng)
            images.append(image)
            labels.append(label)
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def iterate(loader: torch.utils.data.DataLoader):
    """``iter(loader)``, its worker processes started with Ctrl-C / SIGTERM ignored (a
    disposition a new process keeps), so that a Ctrl-C at the terminal, which reaches the whole
    process group, stops only the main process, between iterations."""
    if not loader.num_workers or threading.current_thread() is not threading.main_thread():
        return iter(loader)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return iter(loader)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _quiet_worker(_: int) -> None:
    """Workers leave Ctrl-C to the main process, which stops between iterations."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)


def batches(source: BatchSource, start: int, stop: int, workers: int) -> torch.utils.data.DataLoader:
    """The batches of iterations ``start`` .. ``stop - 1``, in order, built by ``workers`` processes.

    Workers are spawned, not forked: a fork copies a process whose runtimes (OpenMP, TBB,
    ONNX Runtime, OpenVINO) may hold threads and locks mid-use, which crashes the copy.
    """
    return torch.utils.data.DataLoader(source, batch_size=None, sampler=range(start, stop), num_workers=workers,
                                       worker_init_fn=_quiet_worker if workers else None,
                                       multiprocessing_context="spawn" if workers else None,
                                       persistent_workers=False, prefetch_factor=2 if workers else None)
