"""ONNX export: torch.export-based, simplified with onnxslim, checked, verified in ONNX Runtime.

One input ``input`` (float32 NCHW RGB, ImageNet-normalised), one output ``logits``
(N, C, H, W float32 at input resolution). ``dynamic=True`` makes batch, height and width
dynamic. The file is written atomically once it has passed verification.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..checkpoint import CheckpointInfo
from ..errors import ExportError, StdcError
from ..core.fileio import atomic_write_bytes
from ..models import STDCSeg
from ..preprocess import normalize
from ..synthetic import synthetic_images
from ..parity import FP16_TOLERANCE, Parity, Tolerance, compare_logits
from ..core.artifacts import read_onnx_metadata  # noqa: F401 - re-exported
from ..core.metadata import ArtifactMetadata
from .fp16 import to_fp16
from .quiet import quiet_exporter

log = logging.getLogger(__name__)

MIN_OPSET = 18  # torch.export-based exporter
MAX_SIDE = 8192
MAX_BATCH = 256


@dataclass(frozen=True)
class OnnxExportOptions:
    height: int = 512
    width: int = 1024
    batch: int = 1
    dynamic: bool = False
    opset: int = 20
    simplify: bool = True
    verify: bool = True
    tolerance: Tolerance | None = None  # None: the default for the precision
    precision: str = "fp32"  # or "fp16": FP16 weights and compute, FP32 input and output

    @property
    def effective_tolerance(self) -> Tolerance:
        if self.tolerance is not None:
            return self.tolerance
        return FP16_TOLERANCE if self.precision == "fp16" else Tolerance()

    def validate(self) -> None:
        if not (32 <= self.height <= MAX_SIDE and 32 <= self.width <= MAX_SIDE):
            raise StdcError(f"input size {self.height}x{self.width} out of range (32..{MAX_SIDE} per side)")
        if not 1 <= self.batch <= MAX_BATCH:
            raise StdcError(f"batch {self.batch} out of range (1..{MAX_BATCH})")
        if self.precision not in ("fp32", "fp16"):
            raise StdcError(f"precision {self.precision!r}: export offers fp32 or fp16")
        if self.opset < MIN_OPSET:
            raise StdcError(f"opset {self.opset} is too old for the torch.export-based exporter; use >= {MIN_OPSET}")


@dataclass(frozen=True)
class OnnxExportResult:
    path: Path
    metadata: ArtifactMetadata
    parity: tuple[Parity, ...]  # empty when verification was skipped
    size_bytes: int
    export_seconds: float


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    versions = {"stdc_deploy": __version__, "torch": torch.__version__.split("+")[0],
                "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    with contextlib.suppress(ImportError):
        import onnxslim
        versions["onnxslim"] = onnxslim.__version__
    return versions


def _trace(model: STDCSeg, opts: OnnxExportOptions):
    """torch.export -> ONNX ModelProto."""
    from torch.export import Dim

    # a dynamic batch needs an example batch >= 2, or torch.export specialises it to 1
    batch = max(2, opts.batch) if opts.dynamic else opts.batch
    example = torch.zeros(batch, 3, opts.height, opts.width)
    dynamic_shapes = None
    if opts.dynamic:
        dynamic_shapes = {"x": {0: Dim("batch", min=1, max=MAX_BATCH),
                                2: Dim("height", min=32, max=MAX_SIDE),
                                3: Dim("width", min=32, max=MAX_SIDE)}}
    with quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            model, (example,), dynamo=True, external_data=False, opset_version=opts.opset,
            input_names=["input"], output_names=["logits"], dynamic_shapes=dynamic_shapes,
            verbose=False)
    return program.model_proto


def _io_signature(proto) -> list[tuple[str, list]]:
    return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in (*proto.graph.input, *proto.graph.output)]


def verification_inputs(opts: OnnxExportOptions, seed: int = 0) -> list[np.ndarray]:
    """Fixed, seeded street-like inputs at the export size (and a second size if dynamic)."""
    shapes = [(opts.batch, opts.height, opts.width)]
    if opts.dynamic:
        shapes = [(2, opts.height, opts.width), (1, opts.height // 2 + 7, opts.width // 2 + 13)]
    return [normalize(synthetic_images(n, h, w, seed=seed + i)) for i, (n, h, w) in enumerate(shapes)]


def verify_onnx_bytes(model_bytes: bytes, model: STDCSeg, inputs: list[np.ndarray]) -> list[Parity]:
    """Run ONNX Runtime (CPU) and PyTorch on the same inputs and compare."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    reports = []
    for x in inputs:
        with torch.no_grad():
            reference = model(torch.from_numpy(x)).numpy()
        (got,) = session.run(["logits"], {"input": x})
        reports.append(compare_logits(reference, got))
    return reports


def export_onnx(model: STDCSeg, output: str | os.PathLike, options: OnnxExportOptions = OnnxExportOptions(),
                *, checkpoint: CheckpointInfo | None = None,
                class_names: tuple[str, ...] | None = None) -> OnnxExportResult:
    """Export ``model`` to ``output`` (atomic; nothing is written if any step fails)."""
    import onnx

    options.validate()
    output = Path(output)
    model = model.eval().float().cpu()
    start = time.perf_counter()
    try:
        proto = _trace(model, options)
    except Exception as exc:  # the exporter raises many types; all mean the same to a user
        raise ExportError(f"torch.onnx export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
    signature = _io_signature(proto)
    if options.simplify:
        import onnxslim

        with quiet_exporter():
            proto = onnxslim.slim(proto)
        if _io_signature(proto) != signature:
            raise ExportError(f"onnxslim changed the model's inputs/outputs: {signature} -> {_io_signature(proto)}")
    metadata = ArtifactMetadata(
        arch=model.cfg.name, num_classes=model.num_classes,
        class_names=class_names or (),
        input_height=None if options.dynamic else options.height,
        input_width=None if options.dynamic else options.width,
        batch=None if options.dynamic else options.batch,
        dynamic=options.dynamic, opt_height=options.height, opt_width=options.width,
        classifier_bias=model.conv_out.conv_out.bias is not None,
        source_format=checkpoint.source_format if checkpoint else "none",
        checkpoint_sha256=checkpoint.sha256 if checkpoint else None,
        opset=options.opset, versions=_versions(), precision=options.precision)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata.to_props())
    proto.producer_name, proto.producer_version = "stdc-deploy", __version__
    proto.graph.name = f"{model.cfg.name}_seg"
    if options.precision == "fp16":
        proto = to_fp16(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    data = proto.SerializeToString()

    parity: list[Parity] = []
    if options.verify:
        parity = verify_onnx_bytes(data, model, verification_inputs(options))
        for report in parity:
            log.info("ONNX Runtime vs PyTorch at %s", report.describe())
        failed = [r for r in parity if not r.passes(options.effective_tolerance)]
        if failed:
            limits = options.effective_tolerance.describe(failed[0].reference_abs_max)
            raise ExportError(f"verification failed, {output} not written: {failed[0].describe()} (limits: {limits})")
    atomic_write_bytes(output, data)
    return OnnxExportResult(output, metadata, tuple(parity), len(data), time.perf_counter() - start)
