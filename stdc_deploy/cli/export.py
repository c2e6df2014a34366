"""`stdc export ...`: checkpoints to deployable artifacts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from ..checkpoint import CheckpointInfo, load_model
from ..core.artifacts import MODELS_DIR
from ..export import ExportResult, OnnxExportOptions, export_onnx, export_torchscript
from ..export.common import check_export_output
from ..export.onnx import DYNAMO_MIN_OPSET, MAX_OPSET, MIN_OPSET
from ..parity import Tolerance, default_tolerance
from .common import (
    ArchOption,
    VariantOption,
    AtolOption,
    MinAgreementOption,
    NumClassesOption,
    OutputOption,
    OverwriteOption,
    RtolOption,
    SizeOption,
    command,
    console,
    parse_size,
    tolerance_overrides,
)

app = typer.Typer(help="Export a checkpoint to ONNX, TorchScript or .pt2 (torch.export / AOTInductor).", no_args_is_help=True)

CheckpointArgument = Annotated[Path, typer.Argument(metavar="CHECKPOINT", help="Official, wrapped or MMSeg STDC-Seg checkpoint.")]


def default_onnx_path(checkpoint: Path, arch: str, size: tuple[int, int], dynamic: bool,
                      precision: str = "fp32") -> Path:
    tag = "dynamic" if dynamic else f"{size[0]}x{size[1]}"
    suffix = "" if precision == "fp32" else f"-{precision}"
    return MODELS_DIR / f"{checkpoint.stem}-{arch}-{tag}{suffix}.onnx"


def _tolerance(precision: str, atol: float | None, rtol: float | None, min_agreement: float | None) -> Tolerance:
    """The default limits of ``precision`` with the user's overrides."""
    return dataclasses.replace(default_tolerance(precision), **tolerance_overrides(atol, rtol, min_agreement))


def _load(checkpoint: Path, output: Path | None, kind: str, default: Callable[[CheckpointInfo], Path], *,
          overwrite: bool, arch: str | None, num_classes: int | None, variant: str | None):
    """Check the output, load the checkpoint, then check the default output (it names the arch)."""
    if output is not None:
        check_export_output(output, kind, [checkpoint], overwrite=overwrite)
    model, info = load_model(checkpoint, arch=arch, num_classes=num_classes, variant=variant)
    console.print(f"Loaded {checkpoint}: {info.model_name}, {info.num_classes} classes, {info.source_format} format"
                  + (", classifier bias" if info.classifier_bias else ""))
    if info.dropped:
        console.print("  ignored tensors: " + "; ".join(f"{n} {reason}" for reason, n in info.dropped.items()))
    if output is None:
        output = check_export_output(default(info), kind, [checkpoint], overwrite=overwrite)
    return model, info, output


def _report(result: ExportResult, what: str, verb: str, facts: str = "") -> None:
    for report in result.parity:
        console.print(f"  verified ({what}) {report.describe()}")
    for report in result.details.get("tail_parity", ()):
        console.print(f"  verified (without the final upsampling, as --precision auto runs it) {report.describe()}")
    console.print(f"{verb} {result.path} ({result.size_bytes / 2**20:.1f} MiB{facts}) in {result.seconds:.1f} s")


@app.command("onnx")
@command
def onnx_command(
    checkpoint: CheckpointArgument,
    output: OutputOption = None,
    size: SizeOption = "512x1024",
    batch: Annotated[int, typer.Option("--batch", "-b", help="Batch size of a static export.")] = 1,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Dynamic batch, height and width.")] = False,
    opset: Annotated[int, typer.Option("--opset", help=(
        f"ONNX opset ({MIN_OPSET}..{MAX_OPSET}); {MIN_OPSET}..{DYNAMO_MIN_OPSET - 1} for TensorRT 8, RKNN, NCNN and "
        f"older OpenVINO (TorchScript-based exporter), {DYNAMO_MIN_OPSET}+ via torch.export."))] = 20,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxslim.")] = True,
    arch: ArchOption = None,
    variant: VariantOption = None,
    num_classes: NumClassesOption = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32, or fp16 (FP16 weights and compute, FP32 input/output; verified against FP32).")] = "fp32",
    atol: AtolOption = None,
    rtol: RtolOption = None,
    min_agreement: MinAgreementOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Export CHECKPOINT to ONNX, simplify, check, and verify it against PyTorch in ONNX Runtime.

    The file is written only if verification passes: input `input` (float32 NCHW RGB, ImageNet-normalised), output `logits` (N, classes, H, W), metadata embedded.
    """
    height, width = parse_size(size)
    options = OnnxExportOptions(height=height, width=width, batch=batch, dynamic=dynamic, opset=opset,
                                simplify=simplify, precision=precision,
                                tolerance=_tolerance(precision, atol, rtol, min_agreement))
    options.validate()
    def default(info: CheckpointInfo) -> Path:
        return default_onnx_path(checkpoint, info.model_name, (height, width), dynamic, precision)

    model, info, output = _load(checkpoint, output, "onnx", default, overwrite=overwrite, arch=arch,
                                num_classes=num_classes, variant=variant)
    verb = "Replaced" if output.exists() else "Wrote"
    with console.status("Exporting and verifying..."):
        result = export_onnx(model, output, options, checkpoint=info)
    _report(result, f"ONNX Runtime {precision} vs PyTorch fp32", verb,
            f", {result.metadata.input_size}, opset {result.metadata.opset}, {precision}")


@app.command("torchscript")
@command
def torchscript_command(
    checkpoint: CheckpointArgument,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output .ts file (default: models/CHECKPOINT-ARCH.ts).")] = None,
    size: Annotated[str, typer.Option("--size", "-s", help="Trace and verification size HxW (the program runs at any size).")] = "512x1024",
    arch: ArchOption = None,
    variant: VariantOption = None,
    num_classes: NumClassesOption = None,
    atol: AtolOption = None,
    rtol: RtolOption = None,
    min_agreement: MinAgreementOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Export CHECKPOINT to TorchScript for LibTorch (Python or C++), verified against PyTorch.

    Runs at any batch and input size; metadata in the extra file `stdc_metadata.json`.
    """
    height, width = parse_size(size)
    model, info, output = _load(checkpoint, output, "torchscript",
                                lambda info: MODELS_DIR / f"{checkpoint.stem}-{info.model_name}.ts",
                                overwrite=overwrite, arch=arch, num_classes=num_classes, variant=variant)
    verb = "Replaced" if output.exists() else "Wrote"
    with console.status("Tracing and verifying..."):
        result = export_torchscript(model, output, height, width, checkpoint=info,
                                    tolerance=_tolerance("fp32", atol, rtol, min_agreement))
    _report(result, "TorchScript vs PyTorch", verb)


@app.command("pt2")
@command
def pt2_command(
    checkpoint: CheckpointArgument,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output .pt2 file (default: models/CHECKPOINT-ARCH[-aoti].pt2).")] = None,
    size: Annotated[str, typer.Option("--size", "-s", help="Example and verification size HxW (the artifact runs at any size).")] = "512x1024",
    aoti: Annotated[bool, typer.Option("--aoti", help="Compile an AOTInductor package (C++ compiler needed; minutes).")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda: where the artifact runs (AOTInductor compiles for it).")] = "cpu",
    arch: ArchOption = None,
    variant: VariantOption = None,
    num_classes: NumClassesOption = None,
    atol: AtolOption = None,
    rtol: RtolOption = None,
    min_agreement: MinAgreementOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Export CHECKPOINT with torch.export (.pt2), or as an AOTInductor package with --aoti; verified against PyTorch."""
    from ..export.pt2 import export_pt2

    height, width = parse_size(size)
    model, info, output = _load(checkpoint, output, "pt2",
                                lambda info: MODELS_DIR / f"{checkpoint.stem}-{info.model_name}{'-aoti' if aoti else ''}.pt2",
                                overwrite=overwrite, arch=arch, num_classes=num_classes, variant=variant)
    verb = "Replaced" if output.exists() else "Wrote"
    with console.status("Compiling with AOTInductor..." if aoti else "Exporting and verifying..."):
        result = export_pt2(model, output, height, width, aoti=aoti, device=device, checkpoint=info,
                            tolerance=_tolerance("fp32", atol, rtol, min_agreement))
    _report(result, f"{'AOTInductor' if aoti else 'torch.export'} vs PyTorch", verb)


@app.command("triton")
@command
def triton_command(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help=(
        "A dynamic ONNX export (stdc export onnx --dynamic) or a TensorRT engine with its sidecar."))],
    output: Annotated[Path, typer.Option("--output", "-o", help="The model repository folder to write.")],
    size: Annotated[str | None, typer.Option("--size", "-s", help=(
        "Network input HxW of a dynamic model (default: the size it was exported and verified at)."))] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="max_batch_size of every model.")] = 8,
    instances: Annotated[int, typer.Option("--instances", help="Instances of each model.")] = 1,
    kind: Annotated[str, typer.Option("--kind", help="Where the network runs: gpu or cpu.")] = "gpu",
    net: Annotated[str, typer.Option("--net", help=(
        "onnx: Triton's onnxruntime backend (with the TensorRT accelerator on gpu); python: ONNX Runtime on the "
        "CPU inside the Python backend, for Triton builds without the onnxruntime backend (needs --kind cpu)."))
    ] = "onnx",
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 TensorRT accelerator (--kind gpu).")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a repository this command wrote before.")] = False,
) -> None:
    """Write a Triton Inference Server model repository serving MODEL.

    The ensemble `stdc` takes encoded images and returns label maps through stdc_pre, stdc_net and stdc_post; the pre- and post-processing are stdc-deploy's own, copied into the repository, so Triton's Python backend needs numpy and opencv-python-headless only. README.txt in the repository says how to run and call it.
    """
    from ..export.triton import export_triton

    verb = "Replaced" if output.is_dir() and any(output.iterdir()) else "Wrote"
    result = export_triton(model, output, size=parse_size(size) if size else None, max_batch=max_batch,
                           instances=instances, kind=kind, net=net, fp16=fp16, overwrite=overwrite)
    height, width = result.input_size
    models = ", ".join(f"{name} ({runtime})" for name, runtime in result.models.items())
    console.print(f"{verb} {result.path}: {models}")
    console.print(f"  network input {height}x{width}, max batch {result.max_batch}, "
                  f"{result.size_bytes / 2**20:.1f} MiB in {result.seconds:.1f} s; how to serve it: "
                  f"{result.path / 'README.txt'}")
