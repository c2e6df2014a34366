"""`stdc build-engine`: a TensorRT engine (10.x / 11.x) from an ONNX export, with its sidecar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..backends.tensorrt import BuildOptions, build_engine
from ..backends.tensorrt.build import check_build_outputs
from ..core.artifacts import ENGINES_DIR
from .common import OverwriteOption, command, console


@command
def build_engine_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="FP32 ONNX export (stdc export onnx).")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Engine file, .engine or .plan (default: engines/MODEL-PRECISION.engine).")] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32, fp16 (FP16 ONNX first) or int8 (calibrated symmetric Q/DQ ONNX first).")] = "fp32",
    calib: Annotated[Path | None, typer.Option("--calib", help="Calibration images for int8.")] = None,
    num_images: Annotated[int, typer.Option(
        "--num-images", "--calib-images", help="Calibration images to use for int8 (at most).")] = 100,
    shapes: Annotated[str | None, typer.Option(
        "--shapes", help="Dynamic models: MIN:OPT:MAX input shapes, e.g. 1x512x1024:1x512x1024:4x1024x2048.")] = None,
    workspace: Annotated[float, typer.Option("--workspace", help="Builder workspace, GiB.")] = 4.0,
    timing_cache: Annotated[Path | None, typer.Option(
        "--timing-cache", help="Timing cache file: read if present, updated after the build.")] = None,
    device: Annotated[str, typer.Option("--device", help="cuda or cuda:N.")] = "cuda",
    overwrite: OverwriteOption = False,
) -> None:
    """Build a TensorRT engine (strongly typed: the precision comes from the ONNX) and its sidecar JSON.

    The engine, its sidecar ENGINE.json and, for fp16/int8, the ONNX it is built from
    (ENGINE-STEM.PRECISION.onnx) are outputs: existing ones are replaced only with --overwrite.
    Without TensorRT or a usable GPU this exits 1, says how to install TensorRT, and writes nothing.
    """
    output = output or ENGINES_DIR / f"{model.stem}-{precision}.engine"
    options = BuildOptions(precision=precision, calib=calib, num_images=num_images, shapes=shapes,
                           workspace_gb=workspace, timing_cache=timing_cache, device=device)
    options.validate()
    check_build_outputs(model, output, options, overwrite=overwrite)
    with console.status("Building the TensorRT engine..."):
        result = build_engine(model, output, options)
    console.print(f"built {result.path} ({result.size_bytes / 2**20:.1f} MiB, {result.metadata.precision}) from "
                  f"{result.details['onnx']} in {result.seconds:.0f} s; sidecar {result.details['sidecar']}")
