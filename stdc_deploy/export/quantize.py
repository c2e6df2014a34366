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

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExportError, StdcError
from ..preprocess import normalize
from ..sources import IMAGE_SUFFIXES, read_image
from ..core.artifacts import read_onnx_metadata
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
            raise StdcError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.target not in TARGETS:
            raise StdcError(f"--target {self.target!r}: choose one of {', '.join(TARGETS)}")
        if self.num_images < 1 or self.holdout < 1:
            raise StdcError("--num-images and --holdout must be >= 1")


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    calibration_images: int
    holdout_images: int
    label_agreement: float  # INT8 vs FP32 on the held-out images
    snr_db: float  # 10 log10(sum fp32^2 / sum (fp32 - int8)^2) over the held-out logits
    skipped: tuple[tuple[str, str], ...]  # unreadable images: (path, reason)
    size_bytes: int


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
                  options: QuantizeOptions = QuantizeOptions()) -> QuantizeResult:
    """Calibrate on ``calib_dir`` and write the Q/DQ model to ``output`` (atomically)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    options.validate()
    model, output = Path(model), Path(output)
    metadata = read_onnx_metadata(model)
    if metadata.precision != "fp32":
        raise StdcError(f"quantize an FP32 export (this one is {metadata.precision})", model)
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
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as scratch:
        tmp = Path(scratch) / "int8.onnx"
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
        props = {p.key: p.value for p in proto.metadata_props}
        props.update({"precision": "int8", "int8_target": options.target, "int8_method": options.method,
                      "int8_calibration_images": str(len(calib))})
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, props)
        data = proto.SerializeToString()

        fp32 = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        int8 = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        agree = total = 0
        signal = noise = 0.0
        for x in _batches(holdout, metadata, size):
            a = fp32.run(None, {metadata.input_name: x})[0]
            b = int8.run(None, {metadata.input_name: x})[0]
            agree += int(np.sum(a.argmax(1) == b.argmax(1)))
            total += a.shape[0] * a.shape[2] * a.shape[3]
            signal += float(np.sum(a.astype(np.float64) ** 2))
            noise += float(np.sum((a.astype(np.float64) - b) ** 2))
        final = Path(scratch) / "final.onnx"
        final.write_bytes(data)
        os.replace(final, output)
    snr = 10 * math.log10(signal / noise) if noise > 0 else math.inf
    return QuantizeResult(output, len(calib), len(holdout), agree / total, snr, tuple(skipped), len(data))


def int8_details(path: str | os.PathLike) -> dict:
    """The INT8 provenance stored in an artifact's metadata (empty for other precisions)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("int8_")}


__all__ = ["METHODS", "TARGETS", "QuantizeOptions", "QuantizeResult", "calibration_images", "int8_details",
           "quantize_onnx"]
