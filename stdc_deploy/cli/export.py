"""`stdc export ...`: checkpoints to deployable artifacts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from ..checkpoint import load_model
from ..core.artifacts import MODELS_DIR
from ..export import OnnxExportOptions, export_onnx, export_torchscript
from ..parity import Tolerance
from .common import ArchOption, NumClassesOption, OutputOption, SizeOption, command, console, parse_size

app = typer.Typer(help="Export a checkpoint to ONNX, TorchScript or .pt2 (torch.export / AOTInductor).", no_args_is_help=True)


def default_onnx_path(checkpoint: Path, arch: str, size: tuple[int, int], dynamic: bool,
                      precision: str = "fp32") -> Path:
    tag = "dynamic" if dynamic else f"{size[0]}x{size[1]}"
    suffix = "" if precision == "fp32" else f"-{precision}"
    return MODELS_DIR / f"{checkpoint.stem}-{arch}-{tag}{suffix}.onnx"


@app.command("onnx")
@command
def onnx_command(
    checkpoint: Annotated[Path, typer.Argument(help="Official, wrapped or MMSeg STDC-Seg checkpoint.")],
    output: OutputOption = None,
    size: SizeOption = "512x1024",
    batch: Annotated[int, typer.Option("--batch", "-b", help="Batch size of a static export.")] = 1,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Dynamic batch, height and width.")] = False,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (>= 18).")] = 20,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxslim.")] = True,
    arch: ArchOption = None,
    num_classes: NumClassesOption = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32, or fp16 (FP16 weights and compute, FP32 input/output; verified against FP32).")] = "fp32",
    atol: Annotated[float | None, typer.Option(
        "--atol", help="Allowed |ONNX - PyTorch| logit error: atol + rtol * max|logit| (default 1e-3; fp16 0.05).")] = None,
    rtol: Annotated[float | None, typer.Option("--rtol", help="See --atol (default 1e-4; fp16 0.02).")] = None,
    min_agreement: Annotated[float | None, typer.Option(
        "--min-agreement", help="Smallest allowed argmax agreement, 0-1 (default 0.9995; fp16 0.98).")] = None,
) -> None:
    """Export CHECKPOINT to ONNX, simplify, check, and verify it against PyTorch in ONNX Runtime.

    The file is written only if verification passes: input `input` (float32 NCHW RGB, ImageNet-normalised), output `logits` (N, classes, H, W), metadata embedded.
    """
    height, width = parse_size(size)
    model, info = load_model(checkpoint, arch=arch, num_classes=num_classes)
    console.print(f"Loaded {checkpoint}: {info.arch}, {info.num_classes} classes, {info.source_format} format"
                  + (", classifier bias" if info.classifier_bias else ""), highlight=False)
    if info.dropped:
        ignored = "; ".join(f"{count} {reason}" for reason, count in info.dropped.items())
        console.print(f"  ignored tensors: {ignored}", highlight=False)
    output = output or default_onnx_path(checkpoint, info.arch, (height, width), dynamic, precision)
    replacing = output.exists()
    options = OnnxExportOptions(height=height, width=width, batch=batch, dynamic=dynamic, opset=opset,
                                simplify=simplify, precision=precision)
    base = options.effective_tolerance
    tolerance = Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol,
                          base.min_label_agreement if min_agreement is None else min_agreement)
    options = dataclasses.replace(options, tolerance=tolerance)
    with console.status("Exporting and verifying..."):
        result = export_onnx(model, output, options, checkpoint=info)
    for report in result.parity:
        console.print(f"  verified (ONNX Runtime {precision} vs PyTorch fp32) {report.describe()}", highlight=False)
    verb = "Replaced" if replacing else "Wrote"
    console.print(f"{verb} {result.path} ({result.size_bytes / 2**20:.1f} MiB, {result.metadata.input_size}, "
                  f"opset {opset}, {precision}) in {result.export_seconds:.1f} s", highlight=False)


@app.command("torchscript")
@command
def torchscript_command(
    checkpoint: Annotated[Path, typer.Argument(help="Official, wrapped or MMSeg STDC-Seg checkpoint.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: models/CHECKPOINT-ARCH.ts).")] = None,
    size: Annotated[str, typer.Option("--size", "-s", help="Trace and verification size HxW (the program runs at any size).")] = "512x1024",
    arch: ArchOption = None,
    num_classes: NumClassesOption = None,
) -> None:
    """Export CHECKPOINT to TorchScript for LibTorch (Python or C++), verified against PyTorch.

    Runs at any batch and input size; metadata in the extra file `stdc_metadata.json`.
    """
    height, width = parse_size(size)
    model, info = load_model(checkpoint, arch=arch, num_classes=num_classes)
    output = output or MODELS_DIR / f"{checkpoint.stem}-{info.arch}.ts"
    replacing = output.exists()
    with console.status("Tracing and verifying..."):
        result = export_torchscript(model, output, height, width, checkpoint=info)
    for report in result.parity:
        console.print(f"  verified (TorchScript vs PyTorch) {report.describe()}", highlight=False)
    console.print(f"{'Replaced' if replacing else 'Wrote'} {result.path} ({result.size_bytes / 2**20:.1f} MiB) "
                  f"in {result.export_seconds:.1f} s", highlight=False)


@app.command("pt2")
@command
def pt2_command(
    checkpoint: Annotated[Path, typer.Argument(help="Official, wrapped or MMSeg STDC-Seg checkpoint.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output file (default: models/CHECKPOINT-ARCH[-aoti].pt2).")] = None,
    size: Annotated[str, typer.Option("--size", "-s", help="Example and verification size HxW (the artifact runs at any size).")] = "512x1024",
    aoti: Annotated[bool, typer.Option("--aoti", help="Compile an AOTInductor package (C++ compiler needed; minutes).")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda: where the artifact runs (AOTInductor compiles for it).")] = "cpu",
    arch: ArchOption = None,
    num_classes: NumClassesOption = None,
) -> None:
    """Export CHECKPOINT with torch.export (.pt2), or as an AOTInductor package with --aoti; verified against PyTorch."""
    from ..export.pt2 import export_pt2

    height, width = parse_size(size)
    model, info = load_model(checkpoint, arch=arch, num_classes=num_classes)
    output = output or MODELS_DIR / f"{checkpoint.stem}-{info.arch}{'-aoti' if aoti else ''}.pt2"
    replacing = output.exists()
    with console.status("Compiling with AOTInductor..." if aoti else "Exporting and verifying..."):
        result = export_pt2(model, output, height, width, aoti=aoti, device=device, checkpoint=info)
    for report in result.parity:
        console.print(f"  verified ({'AOTInductor' if aoti else 'torch.export'} vs PyTorch) {report.describe()}",
                      highlight=False)
    console.print(f"{'Replaced' if replacing else 'Wrote'} {result.path} ({result.size_bytes / 2**20:.1f} MiB) "
                  f"in {result.export_seconds:.1f} s", highlight=False)
