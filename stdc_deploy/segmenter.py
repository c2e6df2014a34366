"""The Python API: :class:`Segmenter` turns BGR frames into label maps with any artifact.

    with Segmenter("models/stdc1-512x1024.onnx") as seg:
        labels = seg.predict(cv2.imread("frame.png"))          # HxW uint8 train ids
        for frame, labels in seg.video("drive.mp4", batch=4):  # pipelined, in order
            ...

A facade: the backend runs the model, :mod:`~stdc_deploy.preprocess` and
:mod:`~stdc_deploy.postprocess` implement the protocols, :mod:`~stdc_deploy.pipeline`
overlaps the stages. Nothing here changes between calls: the protocol and stage times
belong to each call.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Backend, open_backend
from .core.metadata import ArtifactMetadata
from .errors import InvalidValue, StdcError
from .pipeline import Stage, StageTimes, run_pipeline
from .postprocess import resize_logits, to_labels
from .preprocess import PROTOCOLS, normalize
from .sources import VideoReader
from .visualize import colorize, overlay


@dataclass
class Frame:
    """One input: a BGR uint8 image, or the reason it could not be read."""

    index: int
    image: np.ndarray | None
    name: str = ""
    error: str | None = None


@dataclass
class Prediction:
    frame: Frame
    labels: np.ndarray | None  # HxW train ids at the frame's size; None if the frame failed

    @property
    def ok(self) -> bool:
        return self.labels is not None


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise InvalidValue("protocol", f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    return protocol


def network_input_size(metadata: ArtifactMetadata, size: tuple[int, int] | None = None,
                       artifact: str | Path | None = None) -> tuple[int, int]:
    """The network input (height, width) for a requested ``size``: a static model's own size
    (another ``size`` is refused), else ``size``, else the size a dynamic model was verified at."""
    if metadata.input_height is not None and metadata.input_width is not None:
        fixed = (metadata.input_height, metadata.input_width)
        if size is not None and tuple(size) != fixed:
            raise InvalidValue("size", f"this model takes {fixed[0]}x{fixed[1]} input, not {size[0]}x{size[1]} "
                                       "(export a dynamic model for other sizes)", artifact)
        return fixed
    return tuple(size) if size else (metadata.opt_height, metadata.opt_width)


class Segmenter:
    """Segment BGR images with a checkpoint, ONNX file, engine or an opened :class:`Backend`.

    A backend passed in is borrowed (the caller closes it); one opened from a path is
    owned and closed by :meth:`close`. ``size`` (height, width) sets the network input
    for dynamic artifacts (default: the size the artifact was exported and verified at).
    ``protocol`` (``official`` or ``fast``, see :mod:`stdc_deploy.preprocess`) is the
    default for every call; each call may name another. ``precision="auto"`` takes the
    fastest CPU path of known accuracy cost (``backend.cpu_path`` says which and why), with
    the network's final upsampling left to post-processing (:mod:`~stdc_deploy.backends.tail`);
    ``threads`` sets the runtime's CPU threads (default: every usable core).
    """

    def __init__(self, model: str | Path | Backend, *, backend: str | None = None, device: str | None = None,
                 precision: str = "fp32", size: tuple[int, int] | None = None, protocol: str = "official",
                 threads: int | None = None):
        self.protocol = check_protocol(protocol)
        self._owns_backend = not isinstance(model, Backend)
        self.backend = (open_backend(model, backend, device, precision, threads) if self._owns_backend
                        else model.open())
        self.metadata = self.backend.metadata
        try:
            self.input_size = network_input_size(self.metadata, size, self.backend.artifact)
        except InvalidValue:
            self.close()
            raise

    @property
    def num_classes(self) -> int:
        return self.metadata.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.metadata.class_names

    def describe(self) -> str:
        h, w = self.input_size
        return f"{self.backend.describe()}, input {h}x{w}"

    # -- the three steps ----------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray], protocol: str | None = None,
                   size: tuple[int, int] | None = None) -> np.ndarray:
        """BGR uint8 images -> (N, 3, H, W) normalised float32 at the network input size."""
        return normalize(images, self.metadata.mean, self.metadata.std, size=size or self.input_size,
                         protocol=check_protocol(protocol or self.protocol))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Normalised batch -> logits at the input size (any batch size; see :class:`Backend`)."""
        return resize_logits(self.backend.infer(batch), batch.shape[2:])

    def infer_native(self, batch: np.ndarray) -> np.ndarray:
        """Normalised batch -> logits as the backend returns them: at the input size, or at
        1/8 where it skipped the final upsampling. :meth:`postprocess` takes either."""
        return self.backend.infer(batch)

    def postprocess(self, logits: np.ndarray, sizes: Sequence[tuple[int, int]],
                    protocol: str | None = None, input_size: tuple[int, int] | None = None) -> list[np.ndarray]:
        """(N, C, h, w) logits -> N label maps, each at its frame's (height, width).
        ``input_size``: the network input they came from (default: this segmenter's)."""
        protocol = check_protocol(protocol or self.protocol)
        input_size = input_size or self.input_size
        return [to_labels(logits[i], sizes[i], protocol, input_size) for i in range(len(sizes))]

    # -- convenience --------------------------------------------------------------------------
    def predict(self, image: np.ndarray, protocol: str | None = None) -> np.ndarray:
        """One BGR uint8 image -> HxW uint8 train ids at the image's size."""
        return self.predict_batch([image], protocol)[0]

    def predict_batch(self, images: Sequence[np.ndarray], protocol: str | None = None) -> list[np.ndarray]:
        for image in images:
            check_image(image)
        if not images:
            return []
        batch = self.preprocess(images, protocol)
        return self.postprocess(self.infer_native(batch), [im.shape[:2] for im in images], protocol, batch.shape[2:])

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        return colorize(labels, self.num_classes)

    def overlay(self, image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        return overlay(image, labels, self.num_classes, alpha)

    def video(self, source: str | int | Path, batch: int = 1, max_frames: int | None = None,
              protocol: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(frame, labels) for every frame of a video file, camera index or stream URL;
        decoding stops after ``max_frames``."""
        with VideoReader(source) as reader:
            frames = (Frame(i, image, reader.name) for i, image in enumerate(reader))
            for prediction in self.stream(itertools.islice(frames, max_frames), batch=batch, protocol=protocol):
                yield prediction.frame.image, prediction.labels

    # -- the pipeline -------------------------------------------------------------------------
    def stream(self, frames: Iterable[Frame | np.ndarray], batch: int = 1, protocol: str | None = None,
               times: StageTimes | None = None, on_error: Callable[[Frame], None] | None = None,
               queue_size: int = 4) -> Iterator[Prediction]:
        """Pipelined predictions for ``frames``, in order, one per frame.

        Decoding + pre-processing, inference and post-processing overlap in three threads.
        Frames that carry an ``error`` (or are not images) come back as failed predictions
        in their place. ``times`` (a fresh :class:`StageTimes` per run) collects the time
        of each stage.
        """
        if batch < 1:
            raise InvalidValue("batch", f"must be >= 1, got {batch}")
        protocol = check_protocol(protocol or self.protocol)
        times = times if times is not None else StageTimes()

        def prepare(group: list[Frame]) -> tuple[list[Frame], np.ndarray | None]:
            good = [f for f in group if f.error is None]
            return group, (self.preprocess([f.image for f in good], protocol) if good else None)

        def infer(item):
            group, tensor = item
            return group, (self.infer_native(tensor) if tensor is not None else None)

        def post(item) -> list[Prediction]:
            group, logits = item
            good = [f for f in group if f.error is None]
            labels = self.postprocess(logits, [f.image.shape[:2] for f in good], protocol) if good else []
            by_index = {id(f): lab for f, lab in zip(good, labels)}
            return [Prediction(f, by_index.get(id(f))) for f in group]

        stages = [Stage("pre", prepare, background=True), Stage("infer", infer), Stage("post", post, background=True)]
        for group in run_pipeline(_groups(frames, batch), stages, queue_size=queue_size, times=times):
            for prediction in group:
                if prediction.ok:
                    times.frames += 1
                elif on_error is not None:
                    on_error(prediction.frame)
                yield prediction

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_backend:
            self.backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _groups(frames: Iterable[Frame | np.ndarray], batch: int) -> Iterator[list[Frame]]:
    """Batches of up to ``batch`` readable frames; a failed frame travels alone, in its place."""
    pending: list[Frame] = []
    for index, item in enumerate(frames):
        frame = item if isinstance(item, Frame) else Frame(index, item)
        if frame.error is None:
            try:
                check_image(frame.image)
            except StdcError as exc:
                frame.error = str(exc)
        if frame.error is not None:
            if pending:
                yield pending
                pending = []
            yield [frame]
            continue
        pending.append(frame)
        if len(pending) >= batch:
            yield pending
            pending = []
    if pending:
        yield pending


def check_image(image) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise StdcError(f"expected a BGR uint8 HxWx3 image, got a {what}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise StdcError(f"image of {image.shape[1]}x{image.shape[0]} pixels is too small")
