"""Writing files safely: the output policy every command follows, and atomic writes.

Policy (:func:`check_outputs`, called before any work): an output that is one of the
inputs is refused; an existing output is replaced only with ``overwrite``; an output that
cannot be written (a folder, a path under a file, a read-only place) is refused up front.

Writes (:func:`atomic_output`): the result is written in a hidden folder beside its final
name and renamed into place only when complete, so a file appears whole or not at all; any
``OSError`` while writing becomes one :class:`StdcError` naming the path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import StdcError


class OutputExistsError(StdcError):
    """An output that exists and may not be replaced (``overwrite`` is off)."""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(folder: str | os.PathLike) -> None:
    """Refuse a folder that cannot be created or written (it need not exist yet)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StdcError("is a file, not a folder", folder)
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise StdcError(f"cannot create this folder: {base} is a file", folder)
    if not os.access(base, os.W_OK | os.X_OK):
        raise StdcError(f"cannot write here: {base} is not writable", folder)


def check_outputs(outputs: Iterable[str | os.PathLike | None], inputs: Iterable[str | os.PathLike | None] = (),
                  *, overwrite: bool = False) -> None:
    """Apply the output policy to file ``outputs`` before any work is done.

    Raises :class:`StdcError` naming the first offending path: an output that is also an
    input, two outputs with one name, an output that is a folder, whose folder cannot be
    created or written, or that exists while ``overwrite`` is off
    (:class:`OutputExistsError`).
    """
    outs = [Path(p) for p in outputs if p is not None]
    ins = [Path(p) for p in inputs if p is not None]
    seen: set[Path] = set()
    for out in outs:
        for inp in ins:
            if _same_file(out, inp):
                raise StdcError("this output is also an input; choose another output path", out)
        key = out.absolute()
        if key in seen:
            raise StdcError("two outputs would have this name", out)
        seen.add(key)
        if out.is_dir():
            raise StdcError("is a folder; give a file name", out)
        check_writable_dir(out.parent)
        if out.exists() and not overwrite:
            raise OutputExistsError("exists (overwrite=True replaces it)", out)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with the same file name; move it to ``path`` only if the block
    succeeds.

    The temporary file lives in a hidden folder beside ``path`` (same file system, so the
    final rename is atomic); libraries that pick a format by suffix see the real one. On
    any exception (Ctrl-C included) nothing is left behind and ``path`` is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as exc:
        raise StdcError(f"cannot write ({exc.strerror or type(exc).__name__})", path) from exc
    tmp = scratch / path.name
    try:
        yield tmp
        if not tmp.exists():
            raise StdcError("nothing was written", path)
        os.replace(tmp, path)
    except OSError as exc:
        raise StdcError(f"cannot write ({exc.strerror or type(exc).__name__})", path) from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
