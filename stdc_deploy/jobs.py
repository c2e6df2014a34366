"""The segmentation job runner: plans every output, then segments images and videos into them.

Outputs mirror the inputs' names below the output folder:

| input | ``mask`` | ``color`` | ``overlay`` |
|---|---|---|---|
| image ``a/b.jpg`` | ``a/b_mask.png`` (uint8 train ids) | ``a/b_color.png`` | ``a/b_overlay.jpg`` |
| video ``v.mp4`` | ``v_masks/000000.png`` ... | ``v_color.mp4`` | ``v_overlay.mp4`` |

Output videos keep the input's frame size, frame rate and time stamps, and its container
where it is .mp4/.m4v/.mov/.mkv (H.264) or .avi (Motion JPEG); other inputs give H.264 .mp4.
``codec`` names another codec (see :mod:`stdc_deploy.video`).
Every file is written under a temporary name and renamed when complete; existing outputs
are never replaced without ``overwrite``. Unreadable images are reported and skipped.
Images get the official post-processing protocol by default and videos the fast one
(real time; it differs only along label boundaries): see :mod:`stdc_deploy.postprocess`.
"""

from __future__ import annotations

import itertools
import logging
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InvalidValue, StdcError
from .outputs import write_image
from .core.fileio import OutputExistsError, check_outputs, check_writable_dir
from .pipeline import StageTimes
from .preprocess import PROTOCOLS
from .segmenter import Frame, Segmenter, check_image
from .sources import Source, read_image
from .video import AtomicVideoWriter, VideoReader, check_codec, codec_for, encoder_for, output_suffix
from .visualize import colorize, overlay

log = logging.getLogger(__name__)

SAVE_KINDS = ("mask", "color", "overlay")
DEFAULT_IMAGE_SAVE = ("mask", "overlay")
DEFAULT_VIDEO_SAVE = ("overlay",)


def parse_save(text: str | None) -> tuple[str, ...] | None:
    """``mask,color,overlay`` (any subset) -> tuple; None keeps the per-input defaults."""
    if text is None:
        return None
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in SAVE_KINDS]
    if unknown or not kinds:
        raise InvalidValue("save", f"{text!r}: choose from {', '.join(SAVE_KINDS)} (comma-separated)")
    return kinds


@dataclass
class InferOptions:
    out_dir: Path = Path("outputs")
    output: Path | None = None  # exact output video path, for one video or stream
    save: tuple[str, ...] | None = None
    alpha: float = 0.5
    batch: int = 1
    overwrite: bool = False
    max_frames: int | None = None  # for cameras and streams (and to cut videos short)
    protocol: str | None = None  # None: official for images, fast for videos and streams
    codec: str | None = None  # output videos: h264, mpeg4, mjpeg or ffv1 (None: h264, mjpeg for .avi)

    def protocol_for(self, kind: str) -> str:
        return self.protocol or ("official" if kind == "image" else "fast")

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.output = None if self.output is None else Path(self.output)
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise InvalidValue("protocol", f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InvalidValue("alpha", f"must be within 0..1, got {self.alpha}")
        if self.batch < 1:
            raise InvalidValue("batch", f"must be >= 1, got {self.batch}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InvalidValue("max_frames", f"must be >= 1, got {self.max_frames}")
        self.codec = check_codec(self.codec)


@dataclass
class InferReport:
    frames: int = 0  # frames segmented
    videos: int = 0  # videos, cameras and streams finished (interrupted ones included)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    written: list[Path] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C or SIGTERM: the outputs so far are complete files
    signal: int | None = None  # the signal that interrupted the run (2 SIGINT, 15 SIGTERM); exit code 128 + signal
    notes: list[str] = field(default_factory=list)  # things to tell the user about the outputs
    seconds: float = 0.0  # wall time of the pipelines
    times: StageTimes = field(default_factory=lambda: StageTimes(("read", "pre", "infer", "post", "write")))

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def merge(self, other: InferReport) -> None:
        """Add a part run elsewhere (another process or machine); ``seconds`` stays this run's."""
        self.frames += other.frames
        self.videos += other.videos
        self.failed += other.failed
        self.written += other.written
        self.notes += [note for note in other.notes if note not in self.notes]
        self.interrupted = self.interrupted or other.interrupted
        self.signal = self.signal or other.signal
        for stage, seconds in other.times.seconds.items():
            self.times.add(stage, seconds)
        self.times.frames += other.times.frames


class ProgressSink:
    """What the runner reports to (the CLI draws a progress bar; the default is silent)."""

    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, count: int = 1) -> None: ...

    def error(self, name: str, reason: str) -> None: ...

    def finish(self) -> None: ...


@dataclass
class VideoPlan:
    """One video, camera or stream and its planned outputs (None: not requested)."""

    source: Path | int | str
    name: str
    overlay: Path | None
    color: Path | None
    masks: Path | None

    def outputs(self) -> list[Path]:
        return [p for p in (self.overlay, self.color, self.masks) if p is not None]


def _image_outputs(path: Path, source: Source, out_dir: Path, save: tuple[str, ...]) -> dict[str, Path]:
    rel = source.relative(path)
    base = out_dir / rel.parent / rel.stem
    overlay_suffix = ".jpg" if path.suffix.lower() in (".jpg", ".jpeg") else ".png"
    names = {"mask": "_mask.png", "color": "_color.png", "overlay": f"_overlay{overlay_suffix}"}
    return {kind: base.with_name(base.name + names[kind]) for kind in save}


def _stream_stem(stream: int | str) -> str:
    if isinstance(stream, int):
        return f"camera{stream}"
    stem = re.sub(r"[^A-Za-z0-9]+", "_", stream.split("://", 1)[-1]).strip("_")
    return stem[-60:] or "stream"  # the end names the stream (file, path); hosts and folders come first


def _video_plan(source_path: Path | int | str, stem: str, out_dir: Path, options: InferOptions,
                save: tuple[str, ...]) -> VideoPlan:
    suffix = output_suffix(source_path.suffix if isinstance(source_path, Path) else ".mp4", options.codec)
    overlay = out_dir / f"{stem}_overlay{suffix}" if "overlay" in save else None
    color = out_dir / f"{stem}_color{suffix}" if "color" in save else None
    if options.output is not None:
        if "overlay" in save:
            overlay = options.output
        elif "color" in save:
            color = options.output
    masks = out_dir / f"{stem}_masks" if "mask" in save else None
    return VideoPlan(source_path, str(source_path), overlay, color, masks)


ImagePlan = tuple[Path, dict[str, Path]]  # an input image and its outputs by kind


def plan_outputs(source: Source, options: InferOptions) -> tuple[list[ImagePlan], list[VideoPlan]]:
    """Every output path, decided before any work; refuses to replace existing outputs."""
    if options.output is not None and (len(source.videos) + (source.stream is not None) != 1 or source.images):
        raise InvalidValue("output", "names one video file; for several inputs give an output folder (out_dir)")
    if options.output is not None:
        codec_for(options.output, options.codec)  # a video suffix that can hold the codec
    images = [(p, _image_outputs(p, source, options.out_dir, options.save or DEFAULT_IMAGE_SAVE))
              for p in source.images]
    video_save = options.save or DEFAULT_VIDEO_SAVE
    videos = []
    for path in source.videos:
        rel = source.relative(path)
        videos.append(_video_plan(path, str(rel.parent / rel.stem), options.out_dir, options, video_save))
    if source.stream is not None:
        videos.append(_video_plan(source.stream, _stream_stem(source.stream), options.out_dir, options, video_save))
    for path in (p for v in videos for p in (v.overlay, v.color) if p is not None):
        encoder_for(codec_for(path, options.codec))  # fail before any work, not after the first frame
    check_writable_dir(options.out_dir)
    files = [p for _, outs in images for p in outs.values()] + \
        [p for v in videos for p in (v.overlay, v.color) if p is not None]
    folders = [v.masks for v in videos if v.masks is not None]
    if len({p.absolute() for p in files + folders}) != len(files) + len(folders):
        raise StdcError("two inputs map to the same output name; give them separate runs or folders")
    check_outputs(files, source.images + source.videos, overwrite=options.overwrite)
    for folder in folders:
        check_writable_dir(folder)
        if not options.overwrite and folder.is_dir() and any(folder.iterdir()):
            raise OutputExistsError("exists and is not empty (overwrite=True replaces its files)", folder)
    return images, videos


def read_frame(index: int, path: Path) -> Frame:
    """An image file as a :class:`Frame`; one that cannot be read or used carries the reason."""
    try:
        image = read_image(path)
        check_image(image)
    except StdcError as exc:
        return Frame(index, None, str(path), error=exc.message)
    return Frame(index, image, str(path))


def _read_frames(paths: list[Path]) -> Iterator[Frame]:
    for index, path in enumerate(paths):
        yield read_frame(index, path)


def run_images(segmenter: Segmenter, plans: list[ImagePlan], options: InferOptions,
               report: InferReport, progress: ProgressSink) -> None:
    paths = [p for p, _ in plans]
    outputs = dict(plans)
    progress.start(f"{len(paths)} images", len(paths))

    def on_error(frame: Frame) -> None:
        report.failed.append((frame.name, frame.error or "unreadable"))
        progress.error(frame.name, frame.error or "unreadable")
        progress.advance()

    for prediction in segmenter.stream(_read_frames(paths), batch=options.batch, protocol=options.protocol_for("image"),
                                       times=report.times, on_error=on_error):
        if not prediction.ok:
            continue
        start = time.perf_counter()
        report.written += write_image_outputs(prediction.frame.image, prediction.labels,
                                              outputs[Path(prediction.frame.name)], segmenter.num_classes,
                                              options.alpha)
        report.times.add("write", time.perf_counter() - start)
        report.frames += 1
        progress.advance()


def write_image_outputs(image: np.ndarray, labels: np.ndarray, outputs: dict[str, Path], num_classes: int,
                        alpha: float) -> list[Path]:
    """Write one image's planned outputs (``mask``, ``color``, ``overlay``), each atomically."""
    written = []
    for kind, path in outputs.items():
        if kind == "mask":
            picture = labels
        elif kind == "color":
            picture = colorize(labels, num_classes)
        else:
            picture = overlay(image, labels, num_classes, alpha)
        written.append(write_image(path, picture))
    return written


def interrupt_signal(exc: KeyboardInterrupt) -> int:
    """The signal behind an interruption: ``exc.signum`` where set (SIGTERM), else SIGINT."""
    return int(getattr(exc, "signum", signal.SIGINT))


def mark_interrupted(report: InferReport, exc: KeyboardInterrupt) -> None:
    report.interrupted = True
    report.signal = report.signal or interrupt_signal(exc)


def run_video(segmenter: Segmenter, plan: VideoPlan, options: InferOptions, report: InferReport,
              progress: ProgressSink) -> None:
    """Segment one video, camera or stream into its outputs.

    Output videos keep the source's frame size, frame rate and time stamps. An
    interruption keeps the frames done as playable videos (``report.interrupted``); a
    file that decodes fewer frames than its container announces keeps them too, and is
    recorded in ``report.failed``; any other failure leaves no partial video.
    """
    reader = VideoReader(plan.source)
    info = reader.info
    total = info.expected_frames
    if options.max_frames is not None:
        total = min(total, options.max_frames) if total is not None else options.max_frames
    writers: dict[str, AtomicVideoWriter] = {}
    stamps: dict[int, int | None] = {}  # frame.index -> the source's time stamp
    finished = False
    done = 0

    def frames():
        for index, item in enumerate(reader.frames()):
            stamps[index] = item.pts
            yield Frame(index, item.image, plan.name)

    def open_writers(width: int, height: int) -> None:
        for kind in ("overlay", "color"):
            path = getattr(plan, kind)
            if path is not None:
                writers[kind] = AtomicVideoWriter(path, info.rate or info.fps, (width, height), codec=options.codec,
                                                  time_base=info.time_base)
                note = writers[kind].note()
                if note:
                    log.info("%s", note)
                    report.notes.append(note)

    try:
        if plan.masks is not None:
            plan.masks.mkdir(parents=True, exist_ok=True)
        progress.start(plan.name, total)
        for prediction in segmenter.stream(itertools.islice(frames(), options.max_frames), batch=options.batch,
                                           protocol=options.protocol_for("video"), times=report.times):
            start = time.perf_counter()
            frame, labels = prediction.frame, prediction.labels
            if not writers and (plan.overlay or plan.color):
                open_writers(frame.image.shape[1], frame.image.shape[0])  # the size frames really have
            pts = stamps.pop(frame.index, None)
            if "overlay" in writers:
                writers["overlay"].write(segmenter.overlay(frame.image, labels, options.alpha), pts)
            if "color" in writers:
                writers["color"].write(segmenter.colorize(labels), pts)
            if plan.masks is not None:
                report.written.append(write_image(plan.masks / f"{frame.index:06d}.png", labels))
            report.times.add("write", time.perf_counter() - start)
            done += 1
            report.frames += 1
            progress.advance()
        finished = True
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        mark_interrupted(report, exc)
        finished = True  # keep what was done: a playable video of the frames so far
    finally:
        reader.close()
        for writer in writers.values():
            kept = writer.close(keep=finished)
            if kept is not None:
                report.written.append(kept)
    reached_end = options.max_frames is None or done < options.max_frames
    problem = reader.shortfall() if reached_end and not report.interrupted else None
    if problem is not None:
        reason = problem + (f"; the outputs hold the {done} frames decoded" if done else "")
        report.failed.append((plan.name, reason))
        progress.error(plan.name, reason)


def run_infer(segmenter: Segmenter, source: Source, options: InferOptions,
              progress: ProgressSink | None = None, on_start: Callable[[], None] | None = None) -> InferReport:
    """Segment everything in ``source``; Ctrl-C or SIGTERM ends early with ``report.interrupted``
    and ``report.signal`` set."""
    progress = progress or ProgressSink()
    images, videos = plan_outputs(source, options)
    single = len(images) + len(videos) == 1
    report = InferReport()
    start = time.perf_counter()
    try:
        if images:
            run_images(segmenter, images, options, report, progress)
        for plan in videos:
            if report.interrupted:
                break
            try:
                run_video(segmenter, plan, options, report, progress)
            except StdcError as exc:
                if single:
                    raise
                report.failed.append((plan.name, exc.message))
                progress.error(plan.name, exc.message)
            else:
                report.videos += 1
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        mark_interrupted(report, exc)
    finally:
        report.seconds = time.perf_counter() - start
        progress.finish()
    return report
