"""What the workers of a distributed ``stdc infer`` run: one function or class per stage.

Images flow as rows (dicts of columns, as Ray Data's ``map_batches`` hands them over):

1. :func:`read_and_prepare`: ``path`` -> ``tensor`` (the normalised network input), the
   frame size, the image itself where overlays are wanted, and ``error`` (empty when the
   file was read; otherwise the reason, and the row is carried along to be reported);
2. :class:`InferLogits`: ``tensor`` -> ``logits``; the model is opened once per instance;
3. :func:`post_and_write`: ``logits`` -> labels -> the planned files, written atomically.

Columns a stage does not consume pass through, so the planned output paths (one column per
kind in :data:`~stdc_deploy.jobs.SAVE_KINDS`, empty where not requested) ride along.
Every stage does exactly what the local runner does (:mod:`stdc_deploy.jobs`), with the
same functions, so a row gives the same bytes here as in a local run. Videos are not split:
:func:`segment_video` runs the local video pipeline on one whole video.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.artifacts import read_metadata
from ..errors import StdcError
from ..jobs import SAVE_KINDS, InferOptions, InferReport, ProgressSink, VideoPlan, read_frame, run_video, \
    write_image_outputs
from ..postprocess import to_labels
from ..preprocess import normalize
from ..segmenter import Segmenter, network_input_size

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelSpec:
    """How each worker opens the model: the arguments of :class:`~stdc_deploy.segmenter.Segmenter`.

    ``model`` must be readable under the same path on every machine (a shared file
    system, or the same image on every node). ``threads``: the runtime's CPU threads in
    each worker (None: every core the worker may use).
    """

    model: Path
    backend: str | None = None
    device: str | None = None
    precision: str = "fp32"
    size: tuple[int, int] | None = None
    threads: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "model", Path(self.model).absolute())
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))

    def open(self, protocol: str = "official") -> Segmenter:
        return Segmenter(self.model, backend=self.backend, device=self.device, precision=self.precision,
                         size=self.size, protocol=protocol, threads=self.threads)

    def input_size(self) -> tuple[int, int]:
        """The network input (height, width), from the artifact's metadata alone: the caller
        need not be able to open the model (a driver without the workers' GPU)."""
        return network_input_size(read_metadata(self.model), self.size, self.model)


def object_column(items: list) -> np.ndarray:
    """A column of arrays of any shapes (``np.array`` would merge equal shapes into one array)."""
    column = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        column[i] = item
    return column


def _passed_on(batch: Batch, consumed: tuple[str, ...]) -> Batch:
    return {name: column for name, column in batch.items() if name not in consumed}


def read_and_prepare(batch: Batch, *, mean: tuple[float, ...], std: tuple[float, ...], size: tuple[int, int],
                     protocol: str, keep_images: bool) -> Batch:
    """Stage 1: decode each ``path`` and normalise it to the network input.

    A file that cannot be read keeps its row with ``error`` set and a zero tensor, so it
    reaches the end of the pipeline and is reported there by name.
    """
    start = time.perf_counter()
    frames = [read_frame(i, Path(p)) for i, p in enumerate(batch["path"])]
    read_s = time.perf_counter() - start
    good = [f.index for f in frames if f.error is None]
    tensor = np.zeros((len(frames), 3, *size), np.float32)
    if good:
        tensor[good] = normalize([frames[i].image for i in good], mean, std, size=size, protocol=protocol)
    out = dict(batch)
    out.update(tensor=tensor, error=np.array([f.error or "" for f in frames], dtype=object),
               height=np.array([0 if f.image is None else f.image.shape[0] for f in frames], np.int64),
               width=np.array([0 if f.image is None else f.image.shape[1] for f in frames], np.int64),
               read_s=np.full(len(frames), read_s / len(frames)),
               pre_s=np.full(len(frames), (time.perf_counter() - start - read_s) / len(frames)))
    if keep_images:
        out["image"] = object_column([f.image if f.image is not None else np.zeros((1, 1, 3), np.uint8)
                                       for f in frames])
    return out


class InferLogits:
    """Stage 2: ``tensor`` -> ``logits`` with the model opened once, when the worker starts.

    ``size`` is the input size the tensors were made at; a model that takes another one
    is refused at start-up rather than failing on every batch.
    """

    def __init__(self, spec: ModelSpec, size: tuple[int, int]):
        self.segmenter = spec.open()
        if tuple(self.segmenter.input_size) != tuple(size):
            h, w = self.segmenter.input_size
            self.segmenter.close()
            raise StdcError(f"opens with input {h}x{w}, but the tensors were made at {size[0]}x{size[1]}",
                            spec.model)
        self.size = tuple(size)
        self.description = self.segmenter.describe()  # what this worker chose (precision="auto" decides per machine)

    def __call__(self, batch: Batch) -> Batch:
        start = time.perf_counter()
        ok = np.array([not e for e in batch["error"]], dtype=bool)
        if ok.any():  # logits at the input size, or 1/8 where the backend left the upsampling to post_and_write
            computed = self.segmenter.infer_native(np.ascontiguousarray(batch["tensor"][ok]))
            logits = np.zeros((len(ok), *computed.shape[1:]), np.float32)
            logits[ok] = computed
        else:
            logits = np.zeros((len(ok), self.segmenter.num_classes, 1, 1), np.float32)
        out = _passed_on(batch, ("tensor",))
        out.update(logits=logits, infer_s=np.full(len(ok), (time.perf_counter() - start) / len(ok)),
                   worker=np.full(len(ok), self.description, dtype=object))
        return out


def post_and_write(batch: Batch, *, protocol: str, num_classes: int, alpha: float,
                   input_size: tuple[int, int] | None = None) -> Batch:
    """Stage 3: labels at each frame's size, then its planned outputs, each written atomically.

    Returns one small row per input: ``path``, ``error``, the ``worker``'s model description
    and the seconds of every stage.
    """
    post_s, write_s = [], []
    for i, error in enumerate(batch["error"]):
        if error:
            post_s.append(0.0)
            write_s.append(0.0)
            continue
        start = time.perf_counter()
        labels = to_labels(batch["logits"][i], (int(batch["height"][i]), int(batch["width"][i])), protocol, input_size)
        post_s.append(time.perf_counter() - start)
        outputs = {kind: Path(batch[kind][i]) for kind in SAVE_KINDS if batch[kind][i]}
        image = batch["image"][i] if "image" in batch else None
        start = time.perf_counter()
        write_image_outputs(image, labels, outputs, num_classes, alpha)
        write_s.append(time.perf_counter() - start)
    out = {name: batch[name] for name in ("path", "error", "worker", "read_s", "pre_s", "infer_s")}
    out.update(post_s=np.array(post_s), write_s=np.array(write_s))
    return out


def open_and_describe(spec: ModelSpec) -> str:
    """Open the model as a worker would and say what it runs on: a model that no worker can
    open (a path missing on the nodes, a backend not installed there) fails here, once."""
    with spec.open() as segmenter:
        return segmenter.describe()


def worker_note(description: str) -> str:
    return f"workers ran {description}"


@dataclass
class VideoResult:
    """What :func:`segment_video` sends back: the video's report, or the error that stopped it."""

    report: InferReport
    error: tuple[str, str | None] | None = None  # (message, path) of a StdcError


def segment_video(spec: ModelSpec, plan: VideoPlan, options: InferOptions) -> VideoResult:
    """One whole video through the local pipeline (frames in order, one output per kind)."""
    report = InferReport()
    start = time.perf_counter()
    try:
        with spec.open(options.protocol_for("video")) as segmenter:
            report.notes.append(worker_note(segmenter.describe()))
            run_video(segmenter, plan, options, report, ProgressSink())
    except StdcError as exc:
        return VideoResult(report, (exc.message, exc.path))
    finally:
        report.seconds = time.perf_counter() - start
    report.videos = 1
    return VideoResult(report)
