"""Building engines from ONNX with the TensorRT 10 / 11 Python API.

TensorRT 11 has no builder precision flags and no INT8 calibrators: networks are strongly
typed and the precision lives in the ONNX. So ``precision="fp16"`` first writes the FP16
ONNX (FP32 I/O) and ``precision="int8"`` the calibrated symmetric Q/DQ ONNX, both verified
on the CPU, and the engine is built from that file as it is. The same code builds on
TensorRT 10.x (strongly typed network flag) and 11.x.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..._version import __version__
from ...core.artifacts import check_artifact_file, read_onnx_metadata
from ...core.fileio import atomic_write_bytes
from ...core.metadata import ArtifactMetadata
from ...errors import InvalidValue, StdcError
from ...export.common import ExportResult, check_export_output
from ...export.fp16 import convert_onnx_fp16
from .environment import import_tensorrt, this_gpu
from .sidecar import EngineSidecar, sidecar_path

PRECISIONS = ("fp32", "fp16", "int8")
BuildResult = ExportResult  # earlier name, kept for existing imports


@dataclass(frozen=True)
class Profile:
    """One optimization profile for the (N, 3, H, W) input: min / opt / max shapes."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _shape(text: str) -> tuple[int, int, int, int]:
    try:
        parts = [int(p) for p in re.split(r"[xX]", text.strip())]
    except ValueError:
        parts = []
    if len(parts) == 2:
        parts = [1, *parts]
    if len(parts) != 3 or min(parts) < 1:
        raise InvalidValue("shapes", f"{text!r} is not BATCHxHEIGHTxWIDTH (or HEIGHTxWIDTH)")
    return (parts[0], 3, parts[1], parts[2])


def parse_profile(text: str | None, metadata: ArtifactMetadata) -> Profile:
    """``min:opt:max`` shapes (``1x512x1024:1x512x1024:4x1024x2048``) for a dynamic model;
    a static model's one shape otherwise."""
    if metadata.input_height is not None and metadata.batch is not None:
        fixed = (metadata.batch, 3, metadata.input_height, metadata.input_width)
        if text is not None and any(_shape(s) != fixed for s in text.split(":")):
            raise InvalidValue("shapes", f"this ONNX is static ({'x'.join(map(str, fixed))}); export it dynamic "
                                         "for other shapes")
        return Profile(fixed, fixed, fixed)
    if text is None:
        opt = (1, 3, metadata.opt_height, metadata.opt_width)
        return Profile(opt, opt, opt)
    parts = text.split(":")
    if len(parts) != 3:
        raise InvalidValue("shapes", f"{text!r}: expected MIN:OPT:MAX, e.g. 1x512x1024:1x512x1024:4x1024x2048")
    low, opt, high = (_shape(p) for p in parts)
    if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
        raise InvalidValue("shapes", f"{text!r}: need min <= opt <= max in every dimension")
    return Profile(low, opt, high)


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp32"
    calib: Path | None = None  # images for int8
    num_images: int = 100  # calibration images for int8 (at most)
    shapes: str | None = None
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    device: str = "cuda"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidValue("precision", f"{self.precision!r}: choose fp32, fp16 or int8")
        if self.precision == "int8" and self.calib is None:
            raise InvalidValue("calib", "precision int8 needs a folder of real images for calibration")
        if self.num_images < 1:
            raise InvalidValue("num_images", f"must be >= 1, got {self.num_images}")
        if not 0 < self.workspace_gb <= 1024:
            raise InvalidValue("workspace_gb", f"give GiB between 0 and 1024, got {self.workspace_gb}")


def intermediate_onnx(onnx_path: Path, output: Path, options: BuildOptions) -> Path | None:
    """Where the FP16 / Q/DQ INT8 ONNX the engine is built from goes (beside the engine), or
    None when the engine is built from ``onnx_path`` itself."""
    meta = read_onnx_metadata(onnx_path)
    if options.precision == "fp32" or meta.precision == options.precision:
        return None
    if meta.precision != "fp32":
        raise StdcError(f"this ONNX is {meta.precision}; precision {options.precision} needs the FP32 export",
                        onnx_path)
    return output.with_name(f"{output.stem}.{options.precision}.onnx")


def check_build_outputs(onnx_path: str | os.PathLike, output: str | os.PathLike, options: BuildOptions,
                        *, overwrite: bool = True) -> None:
    """The output policy for everything a build writes: the engine (``.engine``/``.plan``),
    its sidecar and the intermediate FP16 / INT8 ONNX."""
    onnx_path, output = Path(onnx_path), Path(output)
    extra = [sidecar_path(output), intermediate_onnx(onnx_path, output, options)]
    check_export_output(output, "engine", [onnx_path], extra_outputs=extra, overwrite=overwrite)


def prepare_onnx(onnx_path: Path, output: Path, options: BuildOptions) -> Path:
    """The ONNX the engine is built from: as given (fp32), or its FP16 / Q/DQ INT8 form,
    written beside the engine and verified on the CPU first."""
    target = intermediate_onnx(onnx_path, output, options)
    if target is None:
        return onnx_path
    if options.precision == "int8":
        from ...export.quantize import QuantizeOptions, quantize_onnx

        return quantize_onnx(onnx_path, options.calib, target,
                             QuantizeOptions(target="tensorrt", num_images=options.num_images)).path
    return convert_onnx_fp16(onnx_path, target).path


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike,
                 options: BuildOptions = BuildOptions()) -> ExportResult:
    """Build a serialized engine with the TensorRT 10/11 Python API; atomic engine + sidecar.

    The result's ``details`` name the ``sidecar`` and the ``onnx`` the engine was built from.
    """
    options.validate()
    onnx_path, output = check_artifact_file(onnx_path), Path(output)
    check_build_outputs(onnx_path, output, options)
    profile = parse_profile(options.shapes, read_onnx_metadata(onnx_path))
    trt = import_tensorrt()  # before any work: no partial files without TensorRT
    gpu_name, capability = this_gpu(options.device)
    start = time.perf_counter()
    source = prepare_onnx(onnx_path, output, options)
    meta = read_onnx_metadata(source)  # strongly typed: the engine's precision is the ONNX's

    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:  # "factory function returned nullptr": CUDA could not initialise
        raise StdcError(f"TensorRT cannot initialise CUDA on this machine ({exc})") from None
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    if hasattr(creation, "STRONGLY_TYPED"):  # TRT 10.x; TRT 11 networks are always strongly typed
        flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise StdcError(f"TensorRT's ONNX parser failed: {errors}", source)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    if any(d is None or d < 0 for d in network.get_input(0).shape):
        trt_profile = builder.create_optimization_profile()
        trt_profile.set_shape(meta.input_name, profile.min, profile.opt, profile.max)
        config.add_optimization_profile(trt_profile)
    cache_bytes = options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise StdcError("TensorRT could not build an engine from this ONNX (see the messages above)", source)
    plan_bytes = bytes(plan)
    if options.timing_cache:
        atomic_write_bytes(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    layers = []
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan_bytes)
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        layers = json.loads(info).get("Layers", [])[:2000]
    except Exception:  # noqa: BLE001 - the inspector is optional information
        layers = []
    sidecar = EngineSidecar(
        tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=capability,
        precision=meta.precision, profiles=(profile.to_dict(),),
        onnx_sha256=hashlib.sha256(source.read_bytes()).hexdigest(), onnx_file=str(onnx_path),
        tool_version=__version__, metadata=meta.to_props(),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), build_seconds=time.perf_counter() - start,
        layers=layers)
    atomic_write_bytes(output, plan_bytes)
    try:
        atomic_write_bytes(sidecar_path(output), sidecar.to_json().encode())
    except BaseException:
        output.unlink(missing_ok=True)
        raise
    return ExportResult(output, meta, (), len(plan_bytes),
                        time.perf_counter() - start, {"sidecar": sidecar_path(output), "onnx": source})
