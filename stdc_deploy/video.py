"""Video files in and out, keeping the source's frames, size and timing.

:class:`VideoReader` decodes files (and stream URLs) with PyAV: the exact frame size (odd
sizes included), the container's frame rate, time base and announced frame count, and the
time stamp of every frame, so variable-frame-rate video keeps its timing. Cameras, and
stream URLs PyAV cannot open, are read with OpenCV (no time stamps: a constant rate).

:class:`AtomicVideoWriter` encodes with PyAV under a hidden temporary name and renames the
finished file into place. The codec follows the file's suffix (:data:`DEFAULT_CODECS`)
unless one is named (:data:`CODECS`):

| codec | encoder | containers | pixel format |
|---|---|---|---|
| ``h264`` | libx264 (or libopenh264) | .mp4 .m4v .mov .mkv | yuv420p; yuv444p (High 4:4:4) for odd sizes |
| ``mpeg4`` | mpeg4 (MPEG-4 Part 2) | .mp4 .m4v .mov .mkv .avi | yuv420p |
| ``mjpeg`` | mjpeg | .avi .mov .mkv | yuvj420p |
| ``ffv1`` | ffv1 (lossless) | .mkv .avi | bgr0 |

H.264 in 4:2:0 cannot describe an odd width or height (its cropping works in steps of two
pixels), so odd sizes are written in 4:4:4, which decodes to the exact size in FFmpeg-based
players (VLC, mpv, ffplay, Chromium) but not in every browser or hardware decoder:
``writer.pixel_format`` and :meth:`AtomicVideoWriter.note` say so.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .core.fileio import atomic_output
from .errors import InvalidValue, StdcError
from .optional import require

log = logging.getLogger(__name__)

_STREAM = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_stream_url(source: object) -> bool:
    return isinstance(source, str) and bool(_STREAM.match(source))


# ------------------------------------------------------------------------------------ codecs

@dataclass(frozen=True)
class VideoCodec:
    name: str  # what users type
    encoders: tuple[str, ...]  # FFmpeg encoders, best first
    suffixes: tuple[str, ...]  # containers that hold it; the first is the default
    description: str


CODECS = {
    "h264": VideoCodec("h264", ("libx264", "libopenh264"), (".mp4", ".m4v", ".mov", ".mkv"),
                       "H.264, plays in browsers"),
    "mpeg4": VideoCodec("mpeg4", ("mpeg4",), (".mp4", ".m4v", ".mov", ".mkv", ".avi"), "MPEG-4 Part 2"),
    "mjpeg": VideoCodec("mjpeg", ("mjpeg",), (".avi", ".mov", ".mkv"), "Motion JPEG"),
    "ffv1": VideoCodec("ffv1", ("ffv1",), (".mkv", ".avi"), "lossless"),
}
DEFAULT_CODECS = {".mp4": "h264", ".m4v": "h264", ".mov": "h264", ".mkv": "h264", ".avi": "mjpeg"}
VIDEO_OUTPUT_SUFFIXES = tuple(DEFAULT_CODECS)
_FASTSTART = (".mp4", ".m4v", ".mov")  # index at the front: playback starts before the download ends
_X264_OPTIONS = {"preset": "veryfast", "crf": "18"}  # fast enough for real time; overlays stay crisp
_MPEG4_MAX_TIME_BASE = 65535  # the MPEG-4 Part 2 limit on the time base denominator


def check_codec(codec: str | None) -> str | None:
    """``codec`` (None: by suffix) -> its name; InvalidValue for an unknown one."""
    if codec is None:
        return None
    name = codec.strip().lower()
    if name not in CODECS:
        raise InvalidValue("codec", f"unknown video codec {codec!r}; choose one of {', '.join(CODECS)}")
    return name


def codec_for(path: Path, codec: str | None = None) -> str:
    """The codec a video at ``path`` is written with; StdcError if the container cannot hold it."""
    suffix = Path(path).suffix.lower()
    if suffix not in DEFAULT_CODECS:
        raise StdcError(f"cannot write '{suffix}' videos (use one of {', '.join(VIDEO_OUTPUT_SUFFIXES)})", path)
    name = check_codec(codec) or DEFAULT_CODECS[suffix]
    if suffix not in CODECS[name].suffixes:
        raise InvalidValue("codec", f"{name} video cannot be stored in a '{suffix}' file; "
                                    f"use {' or '.join(CODECS[name].suffixes)}", path)
    return name


def output_suffix(input_suffix: str, codec: str | None = None) -> str:
    """The suffix of a video made from an input with ``input_suffix``: the same where the
    codec fits it, else the codec's default container."""
    suffix = input_suffix.lower()
    name = check_codec(codec) or DEFAULT_CODECS.get(suffix, "h264")
    return suffix if suffix in CODECS[name].suffixes else CODECS[name].suffixes[0]


def encoder_for(codec: str) -> str:
    """The best FFmpeg encoder for ``codec`` in this PyAV build; StdcError if there is none."""
    av = require("av", "writing video")
    for encoder in CODECS[codec].encoders:
        if encoder in av.codecs_available:
            try:
                av.Codec(encoder, "w")
                return encoder
            except Exception:  # listed but not usable for encoding
                continue
    others = [name for name in CODECS if name != codec]
    raise StdcError(f"this PyAV build has no {codec} encoder (looked for {', '.join(CODECS[codec].encoders)}); "
                    f"choose another codec ({', '.join(others)}) or install the PyAV wheel from PyPI")


def pixel_format_for(codec: str, encoder: str, width: int, height: int) -> str:
    """The pixel format that keeps a ``width`` x ``height`` frame at its exact size."""
    if codec == "ffv1":
        return "bgr0"
    if codec == "mjpeg":
        return "yuvj420p"
    odd = width % 2 or height % 2
    if codec == "h264" and odd:
        if encoder == "libopenh264":
            raise StdcError(f"{encoder} cannot encode an odd frame size ({width}x{height}); "
                            "use codec ffv1 or mpeg4, or a PyAV build with libx264")
        return "yuv444p"
    return "yuv420p"


def _as_rate(fps: float | Fraction) -> Fraction:
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if not rate > 0:
        raise InvalidValue("fps", f"must be > 0, got {fps}")
    return rate


# ------------------------------------------------------------------------------------ reading

@dataclass(frozen=True)
class VideoInfo:
    fps: float  # average frame rate (float(rate))
    width: int  # as decoded (display orientation)
    height: int
    frame_count: int | None  # as the container announces it; None for live sources and containers that do not say
    rate: Fraction | None = None  # exact average frame rate, e.g. 30000/1001
    time_base: Fraction | None = None  # unit of the time stamps; None: no time stamps (OpenCV)
    duration_s: float | None = None
    codec: str | None = None

    @property
    def expected_frames(self) -> int | None:
        """The announced count, else an estimate from the duration (for progress bars)."""
        if self.frame_count is not None:
            return self.frame_count
        if self.duration_s and self.fps:
            return max(1, round(self.duration_s * self.fps))
        return None


class TimedFrame(NamedTuple):
    image: np.ndarray  # BGR uint8 HxWx3
    pts: int | None  # presentation time stamp in ``info.time_base`` units; None without time stamps


class VideoReader:
    """Frames of a video file, camera or stream, in order, as BGR uint8 arrays.

    Iterating gives the images; :meth:`frames` gives them with their time stamps. When
    the frames run out, :meth:`shortfall` says whether the file ended early (a truncated
    or corrupt file decodes fewer frames than its container announced).
    """

    def __init__(self, source: str | int | Path):
        self.source = source
        self.name = str(source)
        self.frames_read = 0
        self.error: str | None = None  # the first decoding error; decoding goes on after it
        self._container = self._capture = None
        self._first: TimedFrame | None = None
        if isinstance(source, int):
            self._open_opencv()
        elif is_stream_url(source):
            try:
                self._open_pyav(live=True)
            except StdcError:
                self._open_opencv()
        else:
            self._open_pyav(live=False)

    # -- opening --------------------------------------------------------------------------------
    def _open_pyav(self, live: bool) -> None:
        av = require("av", "reading video")
        try:
            container = av.open(self.name, timeout=10.0) if live else av.open(str(self.source))
        except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
            raise StdcError("cannot open this video (missing codec, corrupt file, or no such device)",
                            self.name) from exc
        if not container.streams.video:
            container.close()
            raise StdcError("cannot open this video: it has no video stream", self.name)
        stream = container.streams.video[0]  # slice threads only: frame threads drop frames at damaged data
        self._container, self._stream = container, stream
        self._decoded = self._decode_pyav()
        self._first = next(self._decoded, None)
        if self._first is None:
            container.close()
            cause = f": {self.error}" if self.error else ""
            raise StdcError(f"cannot open this video: no frame can be decoded (truncated or corrupt file){cause}",
                            self.name)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        rate = Fraction(rate) if rate and 0 < rate < 1000 else Fraction(30)
        duration = stream.duration * stream.time_base if stream.duration and stream.time_base else None
        if duration is None and container.duration:
            duration = container.duration / 1_000_000
        height, width = self._first.image.shape[:2]
        self.info = VideoInfo(fps=float(rate), width=width, height=height,
                              frame_count=None if live or not stream.frames else int(stream.frames),
                              rate=rate, time_base=Fraction(stream.time_base),
                              duration_s=None if duration is None else float(duration),
                              codec=stream.codec_context.name)

    def _open_opencv(self) -> None:
        capture = cv2.VideoCapture(self.source if isinstance(self.source, int) else self.name)
        if not capture.isOpened():
            capture.release()
            raise StdcError("cannot open this video (missing codec, corrupt file, or no such device)", self.name)
        self._capture = capture
        fps = capture.get(cv2.CAP_PROP_FPS)
        fps = fps if 0 < fps < 1000 else 30.0
        self.info = VideoInfo(fps=fps, width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                              height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), frame_count=None,
                              rate=Fraction(fps).limit_denominator(1001))

    # -- decoding -------------------------------------------------------------------------------
    def _decode_pyav(self) -> Iterator[TimedFrame]:
        av = require("av")
        last_pts = None
        demuxed = self._container.demux(self._stream)
        while True:
            try:
                packet = next(demuxed)
            except StopIteration:
                return
            except av.FFmpegError as exc:  # the container itself is cut or broken: stop here
                self.error = self.error or f"cannot read past frame {self.frames_read} ({exc.strerror or exc})"
                return
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:  # a damaged packet: note it and go on with the next one
                self.error = self.error or f"damaged data after frame {self.frames_read} ({exc.strerror or exc})"
                continue
            for frame in decoded:
                pts = frame.pts if frame.pts is not None else last_pts
                image = frame.to_ndarray(format="bgr24")
                if frame.rotation:  # display orientation, as players (and OpenCV) show it
                    image = np.ascontiguousarray(np.rot90(image, round(frame.rotation / 90)))
                last_pts = pts
                yield TimedFrame(image, pts)

    def frames(self) -> Iterator[TimedFrame]:
        """(image, pts) for every frame; ``pts`` in ``info.time_base`` units (None from OpenCV)."""
        if self._capture is not None:
            while True:
                ok, image = self._capture.read()
                if not ok:
                    return
                self.frames_read += 1
                yield TimedFrame(image, None)
        if self._first is not None:
            first, self._first = self._first, None
            self.frames_read += 1
            yield first
        for item in self._decoded:
            self.frames_read += 1
            yield item

    def __iter__(self) -> Iterator[np.ndarray]:
        for item in self.frames():
            yield item.image

    def shortfall(self) -> str | None:
        """After reading to the end: why the video was not read whole, or None."""
        announced = self.info.frame_count
        if announced is not None and self.frames_read < announced:
            cause = f": {self.error}" if self.error else ""
            return (f"truncated or corrupt: the container announces {announced} frames but only "
                    f"{self.frames_read} could be decoded{cause}")
        if self.error:
            return f"corrupt: {self.error}"
        return None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------ writing

class _Discarded(Exception):
    """Thrown into :func:`atomic_output` to drop the temporary file."""


class AtomicVideoWriter:
    """A video written under a temporary name and moved into place when finished.

    ``fps`` is the frame rate (a ``Fraction`` such as 30000/1001 is kept exactly);
    ``size`` is (width, height), kept exactly. :meth:`write` takes each frame's time stamp
    ``pts`` in ``time_base`` units (the source's), so irregular timing is kept; without
    time stamps frames follow each other at ``fps``. AVI files hold a constant rate only:
    their frames follow each other at ``fps``.

    ``close(keep=True)`` (normal end, or an interruption: the frames done form a playable
    video) finalises the container and renames it; ``close(keep=False)`` (a failure)
    deletes it. A video without frames is never kept.
    """

    def __init__(self, path: str | Path, fps: float | Fraction, size: tuple[int, int], *,
                 codec: str | None = None, time_base: Fraction | None = None):
        av = require("av", "writing video")
        self.path = Path(path)
        self._container = None
        self._kept = False
        self.size = (int(size[0]), int(size[1]))  # (width, height)
        self.codec = codec_for(self.path, codec)
        self.encoder = encoder_for(self.codec)
        width, height = self.size
        if width < 2 or height < 2:
            raise InvalidValue("size", f"a video frame must be at least 2x2 pixels, got {width}x{height}", self.path)
        self.pixel_format = pixel_format_for(self.codec, self.encoder, width, height)
        self.rate = _as_rate(fps)
        suffix = self.path.suffix.lower()
        self.keeps_timestamps = suffix != ".avi"
        self._source_time_base = Fraction(time_base) if time_base else None
        self._time_base = self._codec_time_base()
        self.frames = 0
        self._pending: deque = deque()  # encoded packets not yet in the file
        self._first_pts: int | None = None
        self._last_pts = -1
        self._resized_warned = False
        self._atomic = atomic_output(self.path)
        tmp = self._atomic.__enter__()
        container = None
        try:
            options = {"movflags": "+faststart"} if suffix in _FASTSTART else {}
            container = av.open(str(tmp), "w", options=options)
            stream = container.add_stream(self.encoder, rate=self.rate)
            stream.width, stream.height, stream.pix_fmt = width, height, self.pixel_format
            context = stream.codec_context
            context.time_base = self._time_base
            if self.pixel_format.startswith("yuv4"):  # tag what the frames are converted with
                context.colorspace = context.color_primaries = context.color_trc = 1  # BT.709
                context.color_range = 1  # limited (MPEG) range
            if self.encoder == "libx264":
                context.options = dict(_X264_OPTIONS)
            context.open()
        except (av.FFmpegError, OSError) as exc:
            self._drop(container)
            raise StdcError(f"cannot encode {self.codec} video ({self.encoder}, {self.pixel_format}, "
                            f"{width}x{height}): {getattr(exc, 'strerror', None) or exc}", self.path) from exc
        except BaseException:
            self._drop(container)
            raise
        self._container, self._stream = container, stream

    def _codec_time_base(self) -> Fraction:
        frame_step = 1 / self.rate
        if not self.keeps_timestamps or self._source_time_base is None:
            return frame_step
        if self.codec == "mpeg4" and self._source_time_base.denominator > _MPEG4_MAX_TIME_BASE:
            return Fraction(1, 60000)  # holds 30000/1001, 25, 30, 50, 60 fps exactly
        return self._source_time_base

    def note(self) -> str | None:
        """A sentence for the user when the file will not play everywhere, else None."""
        if self.pixel_format == "yuv444p":
            width, height = self.size
            return (f"{self.path.name}: odd frame size {width}x{height} kept exactly with H.264 High 4:4:4 "
                    "(yuv444p); FFmpeg-based players (VLC, mpv, Chromium) play it, some browsers and "
                    "hardware decoders do not; an even-sized input gives yuv420p, which plays everywhere")
        return None

    def _next_pts(self, pts: int | None) -> int:
        if pts is None or self._source_time_base is None or not self.keeps_timestamps:
            out = round(self.frames / self.rate / self._time_base)
        else:
            if self._first_pts is None:
                self._first_pts = pts
            out = round((pts - self._first_pts) * self._source_time_base / self._time_base)
        return max(out, self._last_pts + 1)  # strictly increasing, whatever the source says

    def write(self, frame: np.ndarray, pts: int | None = None) -> None:
        """Append one BGR (or grey, or BGRA) uint8 frame; ``pts`` in ``time_base`` units."""
        av = require("av")
        if self._container is None:
            raise StdcError("the video is already closed", self.path)
        if frame.dtype != np.uint8:
            raise StdcError(f"video frames must be uint8, got {frame.dtype}", self.path)
        if frame.ndim == 2 or frame.shape[2] == 1:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        elif frame.shape[2] == 4:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
        if (frame.shape[1], frame.shape[0]) != self.size:
            if not self._resized_warned:
                log.warning("%s: a %dx%d frame is resized to the video's %dx%d", self.path, frame.shape[1],
                            frame.shape[0], *self.size)
                self._resized_warned = True
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_LINEAR)
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        if self.pixel_format.startswith("yuv4"):
            picture = picture.reformat(format=self.pixel_format, dst_colorspace="ITU709", dst_color_range="MPEG")
        picture.pts = self._next_pts(pts)
        picture.time_base = self._time_base
        try:
            self._pending.extend(self._stream.encode(picture))
            self._last_pts = picture.pts
            self.frames += 1
            self._mux_pending(self._container)
        except av.FFmpegError as exc:
            raise StdcError(f"cannot encode frame {self.frames} ({exc.strerror or exc})", self.path) from exc

    def _mux_pending(self, container) -> None:
        # one packet at a time, so an interruption between two loses none of them
        while self._pending:
            container.mux(self._pending.popleft())

    def close(self, keep: bool = True) -> Path | None:
        """Finish the file and rename it into place (``keep``), or delete it; returns the
        path kept, or None."""
        if self._container is None:
            return self.path if self._kept else None
        av = require("av")
        keep = keep and self.frames > 0
        container, self._container = self._container, None
        try:
            if keep:
                self._mux_pending(container)
                self._pending.extend(self._stream.encode(None))
                self._mux_pending(container)
            container.close()
        except av.FFmpegError as exc:
            self._drop(container)
            if not keep:
                return None
            raise StdcError(f"cannot finish the video ({exc.strerror or exc})", self.path) from exc
        except BaseException:
            self._drop(container)
            raise
        if not keep:
            self._drop()
            return None
        self._atomic.__exit__(None, None, None)
        self._kept = True
        return self.path

    def _drop(self, container=None) -> None:
        if container is not None:
            try:
                container.close()
            except Exception:
                pass
        self._container = None
        self._atomic.__exit__(_Discarded, _Discarded(), None)

    def __enter__(self) -> AtomicVideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # an error deletes the file; an interruption keeps the frames done
        self.close(keep=exc_type is None or issubclass(exc_type, KeyboardInterrupt))

