"""`stdc quantize`: calibrated INT8 ONNX (Q/DQ) for TensorRT or the CPU, measured against FP32."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..export.common import check_export_output
from ..export.quantize import TARGET_METHODS, QuantizeOptions, quantize_onnx
from .common import OverwriteOption, command, console, err_console


@command
def quantize(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="FP32 ONNX export (stdc export onnx).")],
    calib: Annotated[Path, typer.Option("--calib", help="Folder of real images (searched recursively).")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output .onnx file (default: beside MODEL, MODEL-int8-TARGET.onnx).")] = None,
    num_images: Annotated[int, typer.Option("--num-images", help="Calibration images (at most).")] = 100,
    holdout: Annotated[int, typer.Option("--holdout", help="Held-out images for the report (at most; at most a fifth).")] = 16,
    method: Annotated[str | None, typer.Option(
        "--method", help=f"Calibration: {', '.join(TARGET_METHODS['cpu'])} for tensorrt and cpu (default "
                         f"{TARGET_METHODS['cpu'][0]}); nncf for openvino.")] = None,
    target: Annotated[str, typer.Option(
        "--target", help="tensorrt: symmetric INT8 (zero point 0), per-channel weights; cpu: unsigned activations "
                         "(fastest in ONNX Runtime on x86); openvino: NNCF's quantization (needs nncf), the fastest "
                         "INT8 on CPUs with OpenVINO.")] = "tensorrt",
    overwrite: OverwriteOption = False,
) -> None:
    """Calibrate MODEL on real images and write an INT8 Q/DQ ONNX, with its agreement and SNR against FP32.

    The images go through exactly the inference pre-processing; the report uses held-out
    images that calibration did not see. The agreement is stored in the file: `--precision
    auto` runs an INT8 file beside its FP32 model when the agreement is at least 98%.
    """
    options = QuantizeOptions(method=method, target=target, num_images=num_images, holdout=holdout)
    options.validate()
    output = check_export_output(output or model.with_name(f"{model.stem}-int8-{target}.onnx"), "onnx", [model],
                                 overwrite=overwrite)
    verb = "Replaced" if output.exists() else "Wrote"
    method = options.calibration_method
    with console.status(f"Calibrating ({method}, {target})..."):
        result = quantize_onnx(model, calib, output, options)
    facts = result.details
    for path, reason in facts["skipped"]:
        err_console.print(f"skipped {path}: {reason}")
    console.print(f"calibrated on {facts['calibration_images']} images ({method}); on {facts['holdout_images']} "
                  f"held-out images INT8 vs FP32: label agreement {facts['label_agreement']:.2%}, "
                  f"logit SNR {facts['snr_db']:.1f} dB")
    if facts["bf16_label_agreement"] is not None:
        console.print(f"in OpenVINO with bf16 for the layers left in float: label agreement "
                      f"{facts['bf16_label_agreement']:.2%}")
    console.print(f"{verb} {result.path} ({result.size_bytes / 2**20:.1f} MiB, int8 {target})")
