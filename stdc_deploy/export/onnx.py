"""ONNX export: simplified with onnxslim, checked, verified in ONNX Runtime.

Opsets 18 and newer come from the torch.export-based exporter; 11 to 17, which it cannot
write (it turns them into 18), from PyTorch's TorchScript-based exporter, which writes each
opset natively: ReduceMean with an ``axes`` attribute, Resize with explicit ``sizes``.
(``onnx.version_converter`` cannot take this graph below 18: it lacks adapters for
Relu-14 and Shape-15 and leaves ReduceMean-18 attributes that older ReduceMeans refuse.)

One input ``input`` (float32 NCHW RGB, ImageNet-normalised), one output ``logits``
(N, C, H, W float32 at input resolution). ``dynamic=True`` makes batch, height and width
dynamic. The file is written atomically once it has passed verification.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._version import __version__
from ..checkpoint import CheckpointInfo
from ..errors import ExportError, InvalidValue
from ..models import STDCSeg
from ..parity import Tolerance, default_tolerance
from .common import (
    MAX_SIDE,
    MIN_SIDE,
    ExportResult,
    build_metadata,
    check_export_output,
    check_input_size,
    compare_runs,
    onnx_opset,
    onnx_runner,
    set_onnx_metadata,
    torch_runner,
    verification_inputs,
    verify_without_final_resize,
    write_verified,
)
from .fp16 import to_fp16
from .quiet import quiet_exporter

log = logging.getLogger(__name__)

# 11: the oldest with the Resize that PyTorch's bilinear align_corners needs (and what RKNN,
# NCNN and Hailo converters read); 23: the newest offered, so exports stay loadable by
# deployment runtimes a release or two old.
MIN_OPSET, MAX_OPSET = 11, 23
# the oldest the torch.export-based exporter writes (older requests silently become 18);
# below it the TorchScript-based exporter (torch.onnx.export(dynamo=False)) is used
DYNAMO_MIN_OPSET = 18
MAX_BATCH = 256
PRECISIONS = ("fp32", "fp16")


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
        return self.tolerance if self.tolerance is not None else default_tolerance(self.precision)

    def validate(self) -> None:
        check_input_size(self.height, self.width)
        if not 1 <= self.batch <= MAX_BATCH:
            raise InvalidValue("batch", f"must be within 1..{MAX_BATCH}, got {self.batch}")
        if self.precision not in PRECISIONS:
            raise InvalidValue("precision", f"export offers fp32 or fp16, got {self.precision!r}")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise InvalidValue("opset", f"must be within {MIN_OPSET}..{MAX_OPSET}, got {self.opset}")


def _onnx_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    with contextlib.suppress(ImportError):
        import onnxslim
        versions["onnxslim"] = onnxslim.__version__
    return versions


def exporter_for(opset: int) -> str:
    """Which PyTorch ONNX exporter writes ``opset``: ``"dynamo"`` (torch.export-based, 18 and
    newer) or ``"torchscript"`` (the TorchScript-based one, below 18)."""
    return "dynamo" if opset >= DYNAMO_MIN_OPSET else "torchscript"


def _trace(model: STDCSeg, opts: OnnxExportOptions):
    """PyTorch -> ONNX ModelProto at ``opts.opset``, by the exporter that writes it natively."""
    # a dynamic batch needs an example batch >= 2, or torch.export specialises it to 1
    batch = max(2, opts.batch) if opts.dynamic else opts.batch
    example = torch.zeros(batch, 3, opts.height, opts.width)
    exporter = exporter_for(opts.opset)
    log.info("exporting opset %d with the %s-based ONNX exporter", opts.opset,
             "torch.export" if exporter == "dynamo" else "TorchScript")
    try:
        with quiet_exporter(), torch.no_grad():
            if exporter == "dynamo":
                return _export_dynamo(model, example, opts)
            return _export_torchscript(model, example, opts)
    except Exception as exc:  # the exporters raise many types; all mean the same to a user
        raise ExportError(f"torch.onnx export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc


def _export_dynamo(model: STDCSeg, example: torch.Tensor, opts: OnnxExportOptions):
    from torch.export import Dim

    dynamic_shapes = None
    if opts.dynamic:
        dynamic_shapes = {"x": {0: Dim("batch", min=1, max=MAX_BATCH),
                                2: Dim("height", min=MIN_SIDE, max=MAX_SIDE),
                                3: Dim("width", min=MIN_SIDE, max=MAX_SIDE)}}
    program = torch.onnx.export(
        model, (example,), dynamo=True, external_data=False, opset_version=opts.opset,
        input_names=["input"], output_names=["logits"], dynamic_shapes=dynamic_shapes, verbose=False)
    return program.model_proto


def _export_torchscript(model: STDCSeg, example: torch.Tensor, opts: OnnxExportOptions):
    import onnx

    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (example,), buffer, dynamo=False, opset_version=opts.opset, do_constant_folding=True,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": axes, "logits": axes} if opts.dynamic else None)
    proto = onnx.load_from_string(buffer.getvalue())
    # this exporter leaves the class dimension of a dynamic output symbolic: state it, as the other does
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = model.num_classes
    return proto


def _io_signature(proto) -> list[tuple[str, list]]:
    return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in (*proto.graph.input, *proto.graph.output)]


def _simplify(proto):
    import onnxslim

    signature = _io_signature(proto)
    with quiet_exporter():
        proto = onnxslim.slim(proto)
    if _io_signature(proto) != signature:
        raise ExportError(f"onnxslim changed the model's inputs/outputs: {signature} -> {_io_signature(proto)}")
    return proto


def export_onnx(model: STDCSeg, output: str | os.PathLike, options: OnnxExportOptions = OnnxExportOptions(),
                *, checkpoint: CheckpointInfo | None = None,
                class_names: tuple[str, ...] | None = None) -> ExportResult:
    """Export ``model`` to ``output`` (atomic; nothing is written if any step fails).

    The metadata's ``opset`` is the file's own default-domain opset; an exporter that
    writes another opset than ``options.opset`` is an :class:`ExportError`. Every node is
    checked against the schema of that opset (``onnx.checker`` full check), so no op or
    input form newer than the opset passes.
    """
    import onnx

    options.validate()
    output = check_export_output(output, "onnx", [checkpoint.path if checkpoint else None])
    model = model.eval().float().cpu()
    start = time.perf_counter()
    proto = _trace(model, options)
    if options.simplify:
        proto = _simplify(proto)
    if options.precision == "fp16":
        proto = to_fp16(proto)
    opset = onnx_opset(proto)
    if opset != options.opset:
        raise ExportError(f"the exporter wrote opset {opset}, not the requested {options.opset}; "
                          f"{output} not written")
    metadata = build_metadata(
        model, checkpoint, height=options.height, width=options.width, batch=options.batch,
        dynamic=options.dynamic, precision=options.precision, opset=opset, class_names=class_names,
        versions=_onnx_versions())
    set_onnx_metadata(proto, metadata)
    proto.producer_name, proto.producer_version = "stdc-deploy", __version__
    proto.graph.name = f"{model.cfg.model_name}_seg"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    data = proto.SerializeToString()

    tail = []

    def compare(tmp: Path) -> list:
        inputs = verification_inputs(options.height, options.width, batch=options.batch, dynamic=options.dynamic)
        reference = torch_runner(model)
        parity = compare_runs(reference, onnx_runner(tmp), inputs)
        # also as `--precision auto` runs it, without the final upsampling
        tail.extend(verify_without_final_resize(proto, reference, inputs, options.effective_tolerance, output))
        return parity

    parity = write_verified(output, lambda tmp: tmp.write_bytes(data), compare if options.verify else None,
                            options.effective_tolerance, what=f"ONNX Runtime {options.precision} vs PyTorch fp32")
    return ExportResult(output, metadata, parity, len(data), time.perf_counter() - start,
                        {"opset": opset, "tail_parity": tuple(tail)})
