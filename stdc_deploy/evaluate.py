"""Accuracy (mIoU) of any artifact with the official STDC-Seg evaluation protocol.

Per image, through :class:`~stdc_deploy.segmenter.Segmenter` with the ``official``
protocol (the same code ``stdc infer`` runs on images): RGB, ImageNet normalisation,
bilinear align_corners=True resize of the normalised image to the network input, logits,
bilinear align_corners=True resize of the logits to the label size, argmax. Labels:
Cityscapes ``labelIds`` mapped to the 19 train ids, everything else ignored (255). One
confusion matrix over the split; IoU = diag / (row + col - diag); mIoU is the mean over
classes; pixel accuracy = diag / all counted pixels.

Classes that occur neither in the labels nor in the predictions have no IoU (0 / 0); they
are reported as such and left out of the mean. On the Cityscapes val split every class
occurs, so this is the plain mean of the official code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .backends import Backend
from .errors import InvalidValue, StdcError
from .outputs import write_image
from .pipeline import Stage, run_pipeline
from .segmenter import Segmenter
from .sources import IMAGE_SUFFIXES, read_image

# Cityscapes labelIds -> train ids (cityscapesscripts' labels.py); 255 = ignored
_CITYSCAPES_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_MAX_ID = 33
LABEL_TO_TRAIN = np.full(256, 255, np.uint8)
for _label, _train in _CITYSCAPES_TRAIN.items():
    LABEL_TO_TRAIN[_label] = _train
TRAIN_TO_LABEL = np.zeros(256, np.uint8)
for _label, _train in _CITYSCAPES_TRAIN.items():
    TRAIN_TO_LABEL[_train] = _label

_IMAGE_SUFFIX = "_leftImg8bit"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


@dataclass(frozen=True)
class Sample:
    name: str  # frame name, e.g. aachen_000000_000019
    image: Path
    label: Path
    group: str = ""  # city (sub-folder) for the prediction file layout


@dataclass(frozen=True)
class Dataset:
    samples: tuple[Sample, ...]
    num_classes: int
    ignore_index: int
    layout: str  # "cityscapes" or "generic"

    def read_label(self, sample: Sample) -> np.ndarray:
        """Train ids (generic: -1 where ignored; Cityscapes: 255 where ignored).

        Cityscapes labels are the 8-bit ``*_gtFine_labelIds.png``; a 16-bit file is read as
        long as every value is a labelId (0-33), and one with larger values (an
        ``instanceIds`` image: 26001 ...) is refused with that named. Generic masks may be 8- or
        16-bit (16-bit holds more than 256 classes) if every value is a class or the ignore index.
        """
        raw = cv2.imread(str(sample.label), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise StdcError("not a readable label image", sample.label)
        if raw.ndim != 2:
            raise StdcError(f"a label image must have one channel, this one has {raw.shape[2]}", sample.label)
        if raw.dtype not in (np.uint8, np.uint16):
            raise StdcError(f"a label image must hold 8- or 16-bit integers, this one holds {raw.dtype}", sample.label)
        wide = raw.dtype == np.uint16
        if self.layout == "cityscapes":
            if int(raw.max()) > CITYSCAPES_MAX_ID:
                hint = ("; this is a 16-bit image: labels must be 8-bit labelIds (*_gtFine_labelIds.png), "
                        "not instanceIds" if wide else "")
                raise StdcError(f"label id {int(raw.max())} out of range for Cityscapes labelIds "
                                f"(0-{CITYSCAPES_MAX_ID}){hint}", sample.label)
            return LABEL_TO_TRAIN[raw]
        values = np.unique(raw)
        bad = values[(values >= self.num_classes) & (values != self.ignore_index)]
        if len(bad):
            hint = "; this is a 16-bit image: masks must hold train ids, not instance or colour ids" if wide else ""
            raise StdcError(f"label value {int(bad[0])} out of range (classes 0-{self.num_classes - 1}, "
                            f"ignore {self.ignore_index}){hint}", sample.label)
        out = raw.astype(np.int64)
        out[raw == self.ignore_index] = -1
        return out


def cityscapes_dataset(root: Path, split: str = "val") -> Dataset:
    """Pairs under ``leftImg8bit/<split>/<city>/`` and ``gtFine/<split>/<city>/``."""
    images_dir = root / "leftImg8bit" / split
    labels_dir = root / "gtFine" / split
    if not images_dir.is_dir():
        raise StdcError(f"no leftImg8bit/{split} folder (expected the Cityscapes layout)", root)
    images = sorted(images_dir.glob(f"*/*{_IMAGE_SUFFIX}.png"))
    if not images:
        raise StdcError(f"no *{_IMAGE_SUFFIX}.png images in this split", images_dir)
    samples = []
    for image in images:
        name = image.name[: -len(f"{_IMAGE_SUFFIX}.png")]
        label = labels_dir / image.parent.name / f"{name}{_LABEL_SUFFIX}"
        if not label.is_file():
            raise StdcError(f"no label for this image (expected {label})", image)
        samples.append(Sample(name, image, label, image.parent.name))
    return Dataset(tuple(samples), 19, 255, "cityscapes")


def generic_dataset(images_dir: Path, masks_dir: Path, num_classes: int, ignore_index: int = 255) -> Dataset:
    """Images in one folder, masks of train ids (PNG, same stem) in another."""
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise StdcError("no such folder", folder)
    if num_classes < 1:
        raise InvalidValue("num_classes", f"must be >= 1, got {num_classes}")
    if ignore_index < 0:
        raise InvalidValue("ignore_index", f"must be >= 0, got {ignore_index}")
    images = sorted(p for p in images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise StdcError("no images in this folder", images_dir)
    samples = []
    for image in images:
        rel = image.relative_to(images_dir)
        label = masks_dir / rel.with_suffix(".png")
        if not label.is_file():
            raise StdcError(f"no mask for this image (expected {label})", image)
        samples.append(Sample(str(rel.with_suffix("")), image, label, str(rel.parent) if rel.parent != Path(".") else ""))
    return Dataset(tuple(samples), num_classes, ignore_index, "generic")


# -- metrics --------------------------------------------------------------------------------------

def update_confusion(confusion: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> None:
    """Add one image: rows are ground truth, columns predictions; ignored pixels (outside
    0..C-1) are skipped."""
    n = confusion.shape[0]
    valid = (labels >= 0) & (labels < n)
    index = n * labels[valid].astype(np.int64) + predictions[valid].astype(np.int64)
    confusion += np.bincount(index, minlength=n * n).reshape(n, n)


@dataclass(frozen=True)
class Scores:
    iou: tuple[float | None, ...]  # None: class absent from labels and predictions
    miou: float
    pixel_accuracy: float
    pixels: int

    @classmethod
    def from_confusion(cls, confusion: np.ndarray) -> Scores:
        diag = np.diag(confusion).astype(np.float64)
        union = confusion.sum(0) + confusion.sum(1) - diag
        iou = [float(d / u) if u > 0 else None for d, u in zip(diag, union)]
        present = [v for v in iou if v is not None]
        total = int(confusion.sum())
        return cls(tuple(iou), float(np.mean(present)) if present else float("nan"),
                   float(diag.sum() / total) if total else float("nan"), total)


# -- running ----------------------------------------------------------------------------------------

def network_size(backend: Backend, image_hw: tuple[int, int], scale: float | None) -> tuple[int, int]:
    spec = backend.input_spec
    if scale is None:
        if spec.height is not None:
            return spec.height, spec.width
        return backend.metadata.opt_height, backend.metadata.opt_width
    size = (int(image_hw[0] * scale), int(image_hw[1] * scale))
    if spec.height is not None and (spec.height, spec.width) != size:
        raise InvalidValue("scale", f"this model takes {spec.height}x{spec.width}; {scale:g} x a "
                           f"{image_hw[0]}x{image_hw[1]} image needs {size[0]}x{size[1]} (export that size, or a "
                           "dynamic model)",
                        backend.artifact)
    return size


@dataclass
class ModelResult:
    name: str
    backend: str
    confusion: np.ndarray
    input_sizes: set[tuple[int, int]] = field(default_factory=set)

    @property
    def scores(self) -> Scores:
        return Scores.from_confusion(self.confusion)


def evaluate(dataset: Dataset, backends: Sequence[Backend], scale: float | None = None, limit: int | None = None,
             save_predictions: Path | None = None, on_image: Callable[[Sample], None] | None = None,
             prefetch: int = 4) -> list[ModelResult]:
    """Stream the dataset once; every backend sees every image; one confusion matrix each.

    Images and labels are read by a pipeline thread while the models run. With
    ``save_predictions`` the first model's predictions are written as label-id PNGs
    (Cityscapes submission format: ``<city>/<frame>_pred_labelIds.png``).
    """
    for backend in backends:
        if backend.metadata.num_classes != dataset.num_classes:
            raise StdcError(f"the model has {backend.metadata.num_classes} classes, the data "
                            f"{dataset.num_classes}", backend.artifact)
    if limit is not None and limit < 1:
        raise InvalidValue("limit", f"must be >= 1, got {limit}")
    if scale is not None and not 0.05 <= scale <= 4.0:
        raise InvalidValue("scale", f"must be within 0.05..4, got {scale:g}")
    samples = dataset.samples[:limit] if limit else dataset.samples
    results = [ModelResult(b.artifact.name, b.name, np.zeros((dataset.num_classes,) * 2, np.int64)) for b in backends]
    segmenters = [Segmenter(b, protocol="official") for b in backends]  # borrowed: the caller closes them

    def load(sample: Sample) -> tuple[Sample, np.ndarray, np.ndarray]:
        image = read_image(sample.image)
        label = dataset.read_label(sample)
        if label.shape != image.shape[:2]:
            raise StdcError(f"label is {label.shape[1]}x{label.shape[0]} but its image is "
                            f"{image.shape[1]}x{image.shape[0]}", sample.label)
        return sample, image, label

    for sample, image, label in run_pipeline(samples, [Stage("load", load)], queue_size=prefetch):
        for segmenter, result in zip(segmenters, results):
            size = network_size(segmenter.backend, image.shape[:2], scale)
            result.input_sizes.add(size)
            logits = segmenter.infer_native(segmenter.preprocess([image], size=size))
            prediction = segmenter.postprocess(logits, [label.shape], input_size=size)[0]
            update_confusion(result.confusion, label, prediction)
            if save_predictions is not None and result is results[0]:
                _save_prediction(save_predictions, sample, prediction, dataset)
        if on_image:
            on_image(sample)
    return results


def _save_prediction(directory: Path, sample: Sample, prediction: np.ndarray, dataset: Dataset) -> None:
    if dataset.layout == "cityscapes":
        write_image(directory / sample.group / f"{sample.name}_pred_labelIds.png", TRAIN_TO_LABEL[prediction])
    else:
        write_image(directory / f"{sample.name}.png", prediction.astype(np.uint8))
