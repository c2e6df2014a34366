"""Calibrated INT8 ONNX (explicit Q/DQ) from an FP32 export, measured against FP32.

``target="tensorrt"``: symmetric INT8 activations and weights (zero point 0), per-channel
weights: the explicit quantization TensorRT 10/11 builds from (no calibrator classes).
``target="cpu"``: unsigned INT8 activations and signed per-channel weights, what ONNX
Runtime runs fastest on x86. Both are QDQ graphs that ONNX Runtime also runs, so their
accuracy is measured here: label agreement and logit SNR against the FP32 model on held-out
images that calibration did not see.

Calibration reads real images with exactly the inference pre-processing (resize to the
model input, RGB, the artifact's mean/std).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExportError, InvalidValue, StdcError
from ..parity import compare_logits
from ..preprocess import normalize
from ..sources import IMAGE_SUFFIXES, read_image
from .common import ExportResult, check_export_output, read_fp32_onnx_metadata, onnx_opset, onnx_runner, set_onnx_metadata, write_verified
from .quiet import quiet_exporter

METHODS = ("entropy", "minmax", "percentile")
TARGETS = ("tensorrt", "cpu")
MIN_IMAGES = 8


@dataclass(frozen=True)
class QuantizeOptions:
    method: str = "entropy"
    target: str = "tensorrt"
    num_images: int = 100  # calibration images (at most)
    holdout: int = 16  # held-out images for the report (at most)
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InvalidValue("method", f"{self.method!r}: choose one of {', '.join(METHODS)}")
        if self.target not in TARGETS:
            raise InvalidValue("target", f"{self.target!r}: choose one of {', '.join(TARGETS)}")
        if self.num_images < 1:
            raise InvalidValue("num_images", f"must be >= 1, got {self.num_images}")
        if self.holdout < 1:
            raise InvalidValue("holdout", f"must be >= 1, got {self.holdout}")


def calibration_images(folder: Path, options: QuantizeOptions) -> tuple[list[Path], list[Path], list[tuple[str, str]]]:
    """Readable images of ``folder`` split into (calibration, held-out), deterministically."""
    if not folder.is_dir():
        raise StdcError("no such folder", folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    readable, skipped = [], []
    for path in files:
        try:
            read_image(path)
            readable.append(path)
        except StdcError as exc:
            skipped.append((str(path), exc.message))
    if len(readable) < MIN_IMAGES:
        found = f"{len(readable)} readable" + (f", {len(skipped)} unreadable" if skipped else "")
        raise StdcError(f"calibration needs at least {MIN_IMAGES} readable images; found {found}", folder)
    order = np.random.default_rng(options.seed).permutation(len(readable))
    shuffled = [readable[i] for i in order]
    holdout = min(options.holdout, max(1, len(shuffled) // 5))
    return shuffled[holdout:holdout + options.num_images], shuffled[:holdout], skipped


def _batches(paths: Sequence[Path], metadata, size: tuple[int, int]):
    for path in paths:
        yield normalize(read_image(path), metadata.mean, metadata.std, size=size)


def quantize_onnx(model: str | os.PathLike, calib_dir: str | os.PathLike, output: str | os.PathLike,
                  options: QuantizeOptions = QuantizeOptions()) -> ExportResult:
    """Calibrate on ``calib_dir`` and write the Q/DQ model to ``output`` (atomically).

    ``parity`` compares INT8 with FP32 per held-out image; ``details`` holds the target,
    method, ``calibration_images``, ``holdout_images``, the held-out ``label_agreement``,
    the logit ``snr_db`` (10 log10 of the FP32 logits' energy over the error's) and the
    ``skipped`` unreadable images as (path, reason). The agreement is measured, not
    gated: on random weights it says little (gate trained models with ``stdc eval``).
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    options.validate()
    model = Path(model)
    output = check_export_output(output, "onnx", [model])
    start = time.perf_counter()
    metadata = read_fp32_onnx_metadata(model, "quantize an FP32 export")
    size = (metadata.input_height or metadata.opt_height, metadata.input_width or metadata.opt_width)
    calib, holdout, skipped = calibration_images(Path(calib_dir), options)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter({metadata.input_name: x} for x in _batches(calib, metadata, size))

        def get_next(self):
            return next(self._it, None)

    symmetric = options.target == "tensorrt"
    method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
              "percentile": CalibrationMethod.Percentile}[options.method]
    int8 = {"int8_target": options.target, "int8_method": options.method,
            "int8_calibration_images": str(len(calib))}
    written = {}

    def save(tmp: Path) -> None:
        try:
            with quiet_exporter():
                quantize_static(
                    str(model), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
                    calibration_providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT's quantizer raises many types
            raise ExportError(f"INT8 calibration failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        proto = onnx.load(str(tmp))
        written["metadata"] = dataclasses.replace(metadata, precision="int8", opset=onnx_opset(proto))
        set_onnx_metadata(proto, written["metadata"], int8)
        onnx.save(proto, str(tmp))

    energy = {"signal": 0.0, "noise": 0.0}

    def compare(tmp: Path):
        fp32, quantized = onnx_runner(model, metadata.input_name), onnx_runner(tmp, metadata.input_name)
        reports = []
        for x in _batches(holdout, metadata, size):
            a, b = fp32(x), quantized(x)
            reports.append(compare_logits(a, b))
            energy["signal"] += float(np.sum(a.astype(np.float64) ** 2))
            energy["noise"] += float(np.sum((a.astype(np.float64) - b) ** 2))
        return reports

    parity = write_verified(output, save, compare, None, what="ONNX Runtime int8 vs fp32")
    snr = 10 * math.log10(energy["signal"] / energy["noise"]) if energy["noise"] > 0 else math.inf
    details = {"target": options.target, "method": options.method, "calibration_images": len(calib),
               "holdout_images": len(holdout), "label_agreement": float(np.mean([p.label_agreement for p in parity])),
               "snr_db": snr, "skipped": tuple(skipped)}
    return ExportResult(output, written["metadata"], parity, output.stat().st_size, time.perf_counter() - start,
                        details)


def int8_details(path: str | os.PathLike) -> dict:
    """The INT8 provenance stored in an artifact's metadata (empty for other precisions)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("int8_")}


__all__ = ["METHODS", "TARGETS", "QuantizeOptions", "calibration_images", "int8_details", "quantize_onnx"]
