"""Inference backends behind one contract, chosen from the artifact and the device.

| artifact | backends |
|---|---|
| checkpoint (.pth, .pt, .tar, .ckpt) | torch (CPU, CUDA) |
| TorchScript (.ts, .torchscript) | torch (CPU, CUDA) |
| torch.export / AOTInductor (.pt2) | torch (CPU, CUDA; AOTInductor packages on the device they were compiled for) |
| .onnx | onnxruntime (CPU, CUDA with onnxruntime-gpu), openvino (CPU), onnxruntime-trt (TensorRT EP) |
| .engine / .plan | tensorrt (CUDA; built by `stdc build-engine`) |

Backend modules are imported when first needed, so choosing and running an ONNX backend
never imports PyTorch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..core.artifacts import KINDS, artifact_kind, check_artifact_file, read_metadata
from ..errors import InvalidValue, MissingDependencyError, StdcError
from ..optional import install_hint, is_available
from .base import PRECISIONS, Backend, InputSpec

# name -> (module, class, import name of the runtime it needs)
_REGISTRY = {
    "torch": (".torch_backend", "TorchBackend", "torch"),
    "onnxruntime": (".onnxruntime_backend", "OnnxRuntimeBackend", "onnxruntime"),
    "openvino": (".openvino_backend", "OpenVinoBackend", "openvino"),
    "onnxruntime-trt": (".onnxruntime_backend", "OnnxRuntimeTensorRTBackend", "onnxruntime"),
    "tensorrt": (".tensorrt.backend", "TensorRTBackend", "tensorrt"),
}
BACKEND_NAMES = tuple(_REGISTRY)
_RUNTIME_NAMES = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "tensorrt": "TensorRT"}
# per artifact kind, in order of preference (measured on CPU, STDC1 512x1024: ONNX Runtime
# and OpenVINO run FP32 at about the same speed; OpenVINO runs BF16 and INT8 Q/DQ files
# much faster, which `--precision auto` (backends/cpu.py) chooses)
BACKENDS_FOR_KIND = {"checkpoint": ("torch",), "torchscript": ("torch",), "pt2": ("torch",),
                     "onnx": ("onnxruntime", "openvino", "onnxruntime-trt"),
                     "engine": ("tensorrt",)}


def backend_class(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise InvalidValue("backend", f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    module, cls, _ = _REGISTRY[name]
    return getattr(importlib.import_module(module, __name__), cls)


def _onnxruntime_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def is_installed(backend: str) -> bool:
    if not is_available(_REGISTRY[backend][2]):
        return False
    if backend == "onnxruntime-trt":
        return "TensorrtExecutionProvider" in _onnxruntime_providers()
    return True


def available_backends(kind: str | None = None) -> list[str]:
    names = BACKENDS_FOR_KIND[kind] if kind else BACKEND_NAMES
    return [n for n in names if is_installed(n)]


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA GPU (imports torch only when asked)."""
    if not is_available("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def default_device(kind: str) -> str:
    if kind == "engine":
        return "cuda"
    if kind == "onnx":  # ONNX Runtime without its CUDA build runs on the CPU: no need to ask torch
        if not is_available("onnxruntime") or "CUDAExecutionProvider" not in _onnxruntime_providers():
            return "cpu"
    return "cuda" if cuda_available() else "cpu"


def _missing(backend: str, path: Path) -> MissingDependencyError:
    if backend == "onnxruntime-trt":
        return MissingDependencyError("the ONNX Runtime TensorRT execution provider is not available: install "
                                      "onnxruntime-gpu and TensorRT (see README, 'TensorRT')", path)
    runtime = _REGISTRY[backend][2]
    return MissingDependencyError(f"{_RUNTIME_NAMES[runtime]} is not installed (backend {backend}): "
                                  f"{install_hint(runtime)}", path)


def create_backend(artifact: str | Path, backend: str | None = None, device: str | None = None,
                   precision: str = "fp32", threads: int | None = None, native_logits: bool | None = None) -> Backend:
    """The backend for ``artifact``, not yet opened (``open()`` it, or use :func:`open_backend`).

    Without ``backend`` the first installed one for the artifact, device and precision is
    chosen (:data:`BACKENDS_FOR_KIND`). ``threads``: CPU threads for the runtime (default:
    every core this process may use). ``precision="auto"``: the fastest CPU path whose
    accuracy cost is known (:mod:`~stdc_deploy.backends.cpu`; it may run an INT8 file
    quantized from ``artifact``); the backend's ``cpu_path`` says what was chosen and why.
    ``native_logits`` (default: with ``precision="auto"``): the caller resizes logits itself,
    so ONNX Runtime and OpenVINO return the network's 1/8-resolution logits, skipping its
    final upsampling (:mod:`~stdc_deploy.backends.tail`; ``final_resize_dropped`` says so).
    """
    if precision == "auto":
        from .cpu import resolve_precision

        artifact, backend, precision, choice = resolve_precision(artifact, "auto", device, backend)
        created = create_backend(artifact, backend, device, precision, threads,
                                 True if native_logits is None else native_logits)
        created.cpu_path = choice
        return created
    path = check_artifact_file(artifact)
    kind = artifact_kind(path)
    if precision not in PRECISIONS:
        raise InvalidValue("precision", f"unknown precision {precision!r}; choose one of "
                                        f"{', '.join(PRECISIONS)} or auto")
    device = device or default_device(kind)
    if backend is None:
        installed = available_backends(kind)
        candidates = [n for n in installed if device.split(":")[0] in backend_class(n).devices
                      and precision in backend_class(n).precisions]
        if not candidates:
            if not installed:
                raise _missing(BACKENDS_FOR_KIND[kind][0], path)
            raise MissingDependencyError(
                f"no installed backend runs {KIND_LABEL.get(kind, kind)} artifacts on {device} at {precision} "
                f"(backends for them: {', '.join(BACKENDS_FOR_KIND[kind])}; installed: {', '.join(installed)})", path)
        backend = candidates[0]
    cls = backend_class(backend)
    if backend not in BACKENDS_FOR_KIND[kind]:
        raise InvalidValue("backend", f"{backend} cannot run {kind} artifacts (use "
                                      f"{', '.join(BACKENDS_FOR_KIND[kind])})", path)
    if not is_installed(backend):
        raise _missing(backend, path)
    return cls(path, read_metadata(path), device=device, precision=precision, threads=threads,
               native_logits=bool(native_logits))


def open_backend(artifact: str | Path, backend: str | None = None, device: str | None = None,
                 precision: str = "fp32", threads: int | None = None, native_logits: bool | None = None) -> Backend:
    """:func:`create_backend`, opened; close it, or use it as a context manager."""
    return create_backend(artifact, backend, device, precision, threads, native_logits).open()


KIND_LABEL = {"checkpoint": "checkpoint", "torchscript": "TorchScript", "pt2": ".pt2", "onnx": "ONNX",
              "engine": "engine"}

__all__ = ["BACKENDS_FOR_KIND", "BACKEND_NAMES", "KINDS", "Backend", "InputSpec", "StdcError", "artifact_kind",
           "available_backends", "backend_class", "create_backend", "cuda_available", "default_device",
           "open_backend"]
