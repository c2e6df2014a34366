"""Calibrated INT8 ONNX (explicit Q/DQ) from an FP32 export, measured against FP32.

``target="tensorrt"``: symmetric INT8 activations and weights (zero point 0), per-channel
weights: the explicit quantization TensorRT 10/11 builds from (no calibrator classes).
``target="cpu"``: unsigned INT8 activations and signed per-channel weights, what ONNX
Runtime runs fastest on x86. ``target="openvino"``: quantized by NNCF (OpenVINO's own
quantizer, ``pip install nncf``), still an ONNX Q/DQ file (ONNX Runtime runs it too, slower).
On an AVX-512 VNNI + bf16 CPU OpenVINO runs it 1.5-1.7x faster than the ``cpu`` file with the
layers left in float computing in bf16 (OpenVINO's default there; the ``cpu`` file gains
nothing from it), about as fast with them in f32 (STDC1 512x1024, ``stdc bench --cpu-paths``).

Every target is a QDQ graph, so its accuracy is measured here in the runtime it is made
for (ONNX Runtime, OpenVINO for ``openvino``): label agreement and logit SNR against the
FP32 model on held-out images that calibration did not see. Both figures are stored in
the artifact's metadata (``int8_label_agreement``, ``int8_snr_db``) with the FP32 source's
SHA-256 (``int8_source_sha256``): that is how ``--precision auto`` knows an INT8 file's
accuracy cost (see :mod:`stdc_deploy.backends.cpu`). Where OpenVINO computes bf16 natively,
``openvino`` files are also measured with the layers left in float computing in bf16
(``int8_bf16_label_agreement``): OpenVINO's fastest way to run them.

Calibration methods (ONNX Runtime targets): ``minmax`` takes each tensor's observed range;
``entropy`` the range that minimises the KL divergence of the 8-bit histogram;
``percentile`` cuts 0.0005% off each tail. ONNX Runtime's ``quantize_static`` gives its entropy calibrator 128 histogram bins, as many as quantized
bins, which leaves one candidate range (the full one): entropy then equals minmax. So the
ranges are computed here with the right bin count and handed to ``quantize_static``.

Calibration reads real images with exactly the inference pre-processing (resize to the
model input, RGB, the artifact's mean/std).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends.cpu import file_sha256, int8_details
from ..errors import ExportError, InvalidValue, MissingDependencyError, StdcError
from ..optional import is_available, require
from ..parity import compare_logits
from ..preprocess import normalize
from ..sources import IMAGE_SUFFIXES, read_image
from .common import ExportResult, check_export_output, read_fp32_onnx_metadata, onnx_opset, onnx_runner, set_onnx_metadata, write_verified
from .quiet import quiet_exporter

METHODS = ("entropy", "minmax", "percentile", "nncf")
TARGETS = ("tensorrt", "cpu", "openvino")
# per target: the methods it takes, the first is its default
# (minmax is the default: what quantize_static's "entropy" computed until it was fixed here,
# 10x faster to calibrate than entropy, and on STDC1 512x1024 the better logit SNR: 21.9 dB
# against entropy's 8.6 and percentile's 23.8, random weights, 16 synthetic frames)
TARGET_METHODS = {"tensorrt": ("minmax", "entropy", "percentile"), "cpu": ("minmax", "entropy", "percentile"),
                  "openvino": ("nncf",)}
MIN_IMAGES = 8
# the entropy calibrator's histogram: 1024 bins over [-max, max], searched for the range
# whose 256-level quantization loses least (KL divergence); the search is ORT's Python loop,
# about 0.1 s per tensor at 1024 bins (2048 bins: 4x that, for a finer range only)
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 1024, 256


@dataclass(frozen=True)
class QuantizeOptions:
    method: str | None = None  # None: the target's default (TARGET_METHODS)
    target: str = "tensorrt"
    num_images: int = 100  # calibration images (at most)
    holdout: int = 16  # held-out images for the report (at most)
    seed: int = 0

    @property
    def calibration_method(self) -> str:
        return self.method or TARGET_METHODS.get(self.target, METHODS)[0]

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InvalidValue("target", f"{self.target!r}: choose one of {', '.join(TARGETS)}")
        if self.method is not None and self.method not in TARGET_METHODS[self.target]:
            raise InvalidValue("method", f"{self.method!r} does not apply to target {self.target}: choose one of "
                                         f"{', '.join(TARGET_METHODS[self.target])}")
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
    the logit ``snr_db`` (10 log10 of the FP32 logits' energy over the error's), the
    ``skipped`` unreadable images as (path, reason), and ``bf16_label_agreement`` (OpenVINO
    with the float layers in bf16; None where not measured). The agreement is measured, not
    gated: on random weights it says little (gate trained models with ``stdc eval``).
    """
    import onnx

    options.validate()
    model = Path(model)
    output = check_export_output(output, "onnx", [model])
    start = time.perf_counter()
    metadata = read_fp32_onnx_metadata(model, "quantize an FP32 export")
    size = (metadata.input_height or metadata.opt_height, metadata.input_width or metadata.opt_width)
    calib, holdout, skipped = calibration_images(Path(calib_dir), options)
    method = options.calibration_method
    inputs = lambda paths: ({metadata.input_name: x} for x in _batches(paths, metadata, size))  # noqa: E731
    written: dict = {}

    def save(tmp: Path) -> None:
        try:
            with quiet_exporter():
                if options.target == "openvino":
                    _quantize_nncf(model, tmp, inputs(calib), len(calib))
                else:
                    _quantize_ort(model, tmp, inputs, calib, method, symmetric=options.target == "tensorrt")
        except StdcError:
            raise
        except Exception as exc:  # the quantizers raise many types
            raise ExportError(f"INT8 calibration failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        runtime = _openvino_runner if options.target == "openvino" else onnx_runner
        written["parity"], written["snr_db"] = _measure(onnx_runner(model, metadata.input_name),
                                                        runtime(tmp, metadata.input_name),
                                                        _batches(holdout, metadata, size))
        agreement = float(np.mean([p.label_agreement for p in written["parity"]]))
        facts = {"int8_target": options.target, "int8_method": method, "int8_calibration_images": str(len(calib)),
                 "int8_holdout_images": str(len(holdout)), "int8_label_agreement": f"{agreement:.6f}",
                 "int8_snr_db": f"{written['snr_db']:.3f}", "int8_source": model.name,
                 "int8_source_sha256": file_sha256(model)}
        if options.target == "openvino" and _openvino_bf16():
            bf16, _ = _measure(onnx_runner(model, metadata.input_name),
                               _openvino_runner(tmp, metadata.input_name, "bf16"), _batches(holdout, metadata, size))
            written["bf16_label_agreement"] = float(np.mean([p.label_agreement for p in bf16]))
            facts["int8_bf16_label_agreement"] = f"{written['bf16_label_agreement']:.6f}"
        proto = onnx.load(str(tmp))
        written["metadata"] = dataclasses.replace(metadata, precision="int8", opset=onnx_opset(proto))
        set_onnx_metadata(proto, written["metadata"], facts)
        onnx.save(proto, str(tmp))

    runtime_name = "OpenVINO" if options.target == "openvino" else "ONNX Runtime"
    parity = write_verified(output, save, lambda tmp: written["parity"], None, what=f"{runtime_name} int8 vs fp32")
    details = {"target": options.target, "method": method, "calibration_images": len(calib),
               "holdout_images": len(holdout), "label_agreement": float(np.mean([p.label_agreement for p in parity])),
               "snr_db": written["snr_db"], "skipped": tuple(skipped),
               "bf16_label_agreement": written.get("bf16_label_agreement")}
    return ExportResult(output, written["metadata"], parity, output.stat().st_size, time.perf_counter() - start,
                        details)


def _quantize_ort(model: Path, tmp: Path, inputs, calib: Sequence[Path], method: str, *, symmetric: bool) -> None:
    """ONNX Runtime's QDQ quantizer on ranges calibrated here (see the module docstring)."""
    import inspect
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = inputs(calib)

        def get_next(self):
            return next(self._it, None)

    calibrate_method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                        "percentile": CalibrationMethod.Percentile}[method]
    settings = dict(quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=calibrate_method, calibration_providers=["CPUExecutionProvider"],
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    if method != "entropy":
        quantize_static(str(model), str(tmp), Reader(), **settings)
        return
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise MissingDependencyError("entropy calibration needs onnxruntime >= 1.31 (older versions calibrate "
                                     "min-max under that name): pip install -U onnxruntime, or method='minmax'")
    with tempfile.TemporaryDirectory(prefix="stdc-calib-") as folder:
        calibrator = create_calibrator(model, augmented_model_path=str(Path(folder) / "augmented.onnx"),
                                       calibrate_method=calibrate_method, providers=["CPUExecutionProvider"],
                                       extra_options={"num_bins": ENTROPY_BINS,
                                                      "num_quantized_bins": ENTROPY_QUANTIZED_BINS})
        calibrator.collect_data(Reader())
        ranges = Path(folder) / "ranges.json"
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its bin counts
            save_tensors_data(calibrator.compute_data(), ranges)
        del calibrator
        quantize_static(str(model), str(tmp), None, calibration_cache_path=str(ranges), **settings)


def _quantize_nncf(model: Path, tmp: Path, inputs, count: int) -> None:
    """NNCF's post-training quantization of the ONNX model (symmetric, OpenVINO's placement)."""
    import onnx

    nncf = require("nncf", "target openvino")
    quiet = not logging.getLogger().isEnabledFor(logging.INFO)  # --verbose shows NNCF's progress
    with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
        if quiet:
            logging.getLogger("nncf").setLevel(logging.ERROR)
        quantized = nncf.quantize(onnx.load(str(model)), nncf.Dataset(list(inputs)), subset_size=count,
                                  preset=nncf.QuantizationPreset.PERFORMANCE)
    onnx.save(quantized, str(tmp))


def _openvino_bf16() -> bool:
    """Whether OpenVINO is installed and computes bf16 natively on this CPU."""
    from ..backends.cpu import cpu_features

    return is_available("openvino") and cpu_features().native_bf16 is not None


def _openvino_runner(path: Path, input_name: str, precision: str = "f32"):
    """OpenVINO on the CPU; ``precision`` is what the layers left in float compute in."""
    ov = require("openvino", "target openvino")
    request = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision}).create_infer_request()
    return lambda x: np.array(request.infer({input_name: x})[0], dtype=np.float32, copy=True)


def _measure(fp32, quantized, batches) -> tuple[list, float]:
    """Per-image parity and the logit SNR (dB) of ``quantized`` against ``fp32``."""
    reports, signal, noise = [], 0.0, 0.0
    for x in batches:
        a, b = fp32(x), quantized(x)
        reports.append(compare_logits(a, b))
        signal += float(np.sum(a.astype(np.float64) ** 2))
        noise += float(np.sum((a.astype(np.float64) - b) ** 2))
    return reports, 10 * math.log10(signal / noise) if noise > 0 else math.inf


__all__ = ["METHODS", "TARGETS", "TARGET_METHODS", "QuantizeOptions", "calibration_images", "file_sha256", "int8_details",
           "quantize_onnx"]
