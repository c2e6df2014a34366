"""Shared CLI plumbing: consoles, option types, parsing helpers, error handling."""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import StdcError

console = Console(soft_wrap=True)  # long paths stay on one line (and greppable)
err_console = Console(stderr=True, soft_wrap=True)


class State:
    debug = False


def command(fn):
    """Turn :class:`StdcError` into one line on stderr and exit code 1 (traceback with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StdcError as exc:
            if State.debug:
                raise
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s", force=True)


SIZE_ALIASES = {"seg50": (512, 1024), "seg75": (768, 1536), "seg100": (1024, 2048)}


def parse_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. 512x1024) or seg50 / seg75 / seg100."""
    if text.lower() in SIZE_ALIASES:
        return SIZE_ALIASES[text.lower()]
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise StdcError(f"--size {text!r}: expected HEIGHTxWIDTH such as 512x1024, or seg50/seg75/seg100")
    return int(m.group(1)), int(m.group(2))


ArchOption = Annotated[str | None, typer.Option("--arch", help="stdc1 or stdc2; only checked against the checkpoint.")]
NumClassesOption = Annotated[int | None, typer.Option("--num-classes", help="Only checked against the checkpoint.")]
SizeOption = Annotated[str, typer.Option("--size", "-s", help="Input HEIGHTxWIDTH, or seg50 (512x1024) / seg75 / seg100.")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: models/CHECKPOINT-ARCH-SIZE.onnx).")]
