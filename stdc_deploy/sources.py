"""What ``stdc infer`` reads: images, folders, globs, path lists, videos, cameras, streams.

:func:`resolve_source` turns the SOURCE argument into a :class:`Source`: a list of image
and video files (with the folder their output names are made relative to), or one live
stream. Image reading lives here, video reading in :mod:`stdc_deploy.video` (re-exported),
so every consumer decodes the same way.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import InvalidValue, StdcError
from .video import VideoInfo, VideoReader, is_stream_url

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".ts"})
LIST_SUFFIXES = frozenset({".txt", ".lst"})


@dataclass
class Source:
    """Resolved inputs: files (``images``, ``videos``) or one live ``stream``."""

    description: str
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    stream: int | str | None = None
    root: Path = Path(".")  # output names mirror the inputs' paths below this folder

    def relative(self, path: Path) -> Path:
        try:
            return path.resolve().relative_to(self.root)
        except ValueError:
            return Path(path.name)


def media_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _files_source(description: str, paths: list[Path], root: Path | None = None) -> Source:
    source = Source(description)
    for path in paths:
        kind = media_kind(path)
        if kind == "image":
            source.images.append(path)
        elif kind == "video":
            source.videos.append(path)
        else:
            known = ", ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
            raise StdcError(f"unsupported file type '{path.suffix}' (images and videos: {known})", path)
    files = [p.resolve() for p in paths]
    if root is None:
        root = Path(os.path.commonpath([p.parent for p in files])) if files else Path.cwd()
    source.root = root.resolve()
    return source


def _read_list(path: Path) -> list[Path]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise StdcError(f"cannot read the path list ({exc.__class__.__name__})", path) from None
    paths = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line).expanduser()
        entry = entry if entry.is_absolute() else path.parent / entry
        if not entry.is_file():
            raise StdcError(f"line {number}: no such file {line}", path)
        paths.append(entry)
    return paths


def resolve_source(source: str, recursive: bool = False) -> Source:
    """Interpret SOURCE: camera index, stream URL, glob, folder, path list, image or video."""
    text = source.strip()
    if text.isdigit():
        return Source(f"camera {text}", stream=int(text))
    if is_stream_url(text):
        return Source(text, stream=text)
    if any(ch in text for ch in "*?[") and not Path(text).expanduser().exists():
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        matches = [p for p in matches if media_kind(p)]
        if not matches:
            raise StdcError(f"the pattern {text!r} matches no image or video")
        return _files_source(f"{len(matches)} files matching {text}", matches)
    path = Path(text).expanduser()
    if not path.exists():
        raise StdcError("no such file or folder", path)
    if path.is_dir():
        pattern = "**/*" if recursive else "*"
        files = sorted(p for p in path.glob(pattern) if p.is_file() and media_kind(p))
        if not files:
            if not recursive and any(p.is_file() and media_kind(p) for p in path.rglob("*")):
                raise InvalidValue("recursive", "no images or videos in this folder itself; its subfolders have "
                                                "some and are searched only when set", path)
            raise StdcError("no images or videos in this folder", path)
        return _files_source(f"{len(files)} files in {path}", files, root=path)
    if path.suffix.lower() in LIST_SUFFIXES:
        files = _read_list(path)
        if not files:
            raise StdcError("the path list is empty", path)
        return _files_source(f"{len(files)} files listed in {path}", files)
    result = _files_source(str(path), [path], root=path.parent)
    return result


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 HxWx3 (grey and alpha images converted); StdcError naming the file if unreadable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise StdcError(f"cannot read ({exc.strerror or exc.__class__.__name__})", path) from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise StdcError("not a readable image (corrupt or unsupported encoding)", path)
    return image


__all__ = ["IMAGE_SUFFIXES", "LIST_SUFFIXES", "VIDEO_SUFFIXES", "Source", "VideoInfo", "VideoReader", "media_kind", "read_image",
           "resolve_source"]
