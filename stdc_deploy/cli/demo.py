"""`stdc demo`: the whole workflow on random weights, nothing to download."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..demo import run_demo
from ..models import ARCHS
from .common import SizeOption, command, console, parse_size


@command
def demo(
    arch: Annotated[str, typer.Option("--arch", help=f"One of: {', '.join(ARCHS)}.")] = "stdc1",
    size: SizeOption = "512x1024",
    out_dir: Annotated[Path, typer.Option("--out-dir", "-d", help="Where the demo files go.")] = Path("models"),
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed ONNX Runtime runs.")] = 10,
) -> None:
    """Write a random-weight checkpoint in the official format, export and verify ONNX, segment a frame.

    Shows the export workflow end to end without downloading weights; the labels are
    meaningless (random weights) but every number printed is measured.
    """
    if arch not in ARCHS:
        raise typer.BadParameter(f"choose one of {', '.join(ARCHS)}", param_hint="--arch")
    h, w = parse_size(size)
    with console.status("Building a random checkpoint, exporting and verifying..."):
        result = run_demo(arch, (h, w), out_dir, runs=runs)
    console.print(f"checkpoint (official key format, random weights): {result.checkpoint}")
    for report in result.export.parity:
        console.print(f"ONNX Runtime vs PyTorch: {report.describe()}")
    console.print(f"ONNX: {result.export.path} ({result.export.size_bytes / 2**20:.1f} MiB), "
                  f"exported and verified in {result.export.export_seconds:.1f} s")
    console.print(f"ONNX Runtime CPU, {arch} {h}x{w}, batch 1: median {result.latency_ms:.1f} ms "
                  f"({1000 / result.latency_ms:.1f} FPS, model only, {result.runs} runs)")
    console.print(f"frame: {result.frame}  overlay: {result.overlay}")
