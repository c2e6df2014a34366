"""Inference backends behind one contract, chosen from the artifact and the device.

| artifact | backends |
|---|---|
| checkpoint (.pth, .pt, .tar, .ckpt) | torch (CPU, CUDA) |
| TorchScript (.ts, .torchscript) | torch (CPU, CUDA) |
| torch.export / AOTInductor (.pt2) | torch (CPU, CUDA; AOTInductor packages on the device they were compiled for) |
| .onnx | onnxruntime (CPU, CUDA with onnxruntime-gpu), openvino (CPU), onnxruntime-trt (TensorRT EP) |
| .engine / .plan | tensorrt (CUDA; built by `stdc build-engine`) |
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..checkpoint import inspect_checkpoint, read_state_dict
from ..errors import MissingDependencyError, StdcError
from ..export.metadata import ArtifactMetadata
from ..export.onnx import read_onnx_metadata
from ..export.torchscript import read_torchscript_metadata
from .base import PRECISIONS, Backend, InputSpec
from .onnxruntime_backend import OnnxRuntimeBackend, OnnxRuntimeTensorRTBackend
from .openvino_backend import OpenVinoBackend
from .tensorrt_backend import TensorRTBackend
from .torch_backend import TorchBackend

BACKENDS: dict[str, type[Backend]] = {b.name: b for b in (TorchBackend, OnnxRuntimeBackend, OpenVinoBackend,
                                                      TensorRTBackend, OnnxRuntimeTensorRTBackend)}

KINDS = {".pth": "checkpoint", ".pt": "checkpoint", ".tar": "checkpoint", ".ckpt": "checkpoint",
         ".ts": "torchscript", ".torchscript": "torchscript", ".pt2": "pt2", ".onnx": "onnx", ".engine": "engine",
         ".plan": "engine"}
# per artifact kind, in order of preference (measured on CPU: ONNX Runtime FP32 is faster
# than OpenVINO FP32 on this project's machines; OpenVINO BF16 is offered as a precision)
BACKENDS_FOR_KIND = {"checkpoint": ("torch",), "torchscript": ("torch",), "pt2": ("torch",),
                     "onnx": ("onnxruntime", "openvino", "onnxruntime-trt"),
                     "engine": ("tensorrt",)}
_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt",
            "onnxruntime-trt": "onnxruntime"}


def artifact_kind(path: str | Path) -> str:
    path = Path(path)
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise StdcError(f"unsupported model file type '{path.suffix}' (expected one of {known})", path)
    return kind


def is_installed(backend: str) -> bool:
    if importlib.util.find_spec(_MODULES[backend]) is None:
        return False
    if backend == "onnxruntime-trt":
        import onnxruntime

        return "TensorrtExecutionProvider" in onnxruntime.get_available_providers()
    return True


def available_backends(kind: str | None = None) -> list[str]:
    names = BACKENDS_FOR_KIND[kind] if kind else tuple(_MODULES)
    return [n for n in names if n in BACKENDS and is_installed(n)]


def artifact_metadata(path: str | Path) -> ArtifactMetadata:
    """The metadata of any artifact (checkpoints: derived from their tensors)."""
    path = Path(path)
    kind = artifact_kind(path)
    if kind == "onnx":
        return read_onnx_metadata(path)
    if kind == "torchscript":
        return read_torchscript_metadata(path)
    if kind == "pt2":
        from ..export.pt2 import read_pt2_metadata

        return read_pt2_metadata(path)
    if kind == "checkpoint":
        _, info = inspect_checkpoint(read_state_dict(path), path=path)
        return ArtifactMetadata(arch=info.arch, num_classes=info.num_classes, input_height=None, input_width=None,
                                batch=None, dynamic=True, classifier_bias=info.classifier_bias,
                                source_format=info.source_format, checkpoint_sha256=info.sha256)
    from ..engine import read_sidecar

    return read_sidecar(path).artifact_metadata


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_device(kind: str) -> str:
    if kind == "engine":
        return "cuda"
    if not _cuda_available():
        return "cpu"
    if kind == "onnx":
        import onnxruntime

        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    return "cuda"


def open_backend(artifact: str | Path, backend: str | None = None, device: str | None = None,
                 precision: str = "fp32") -> Backend:
    """Create (not yet opened) the backend for ``artifact``; use it as a context manager.

    Without ``backend`` the fastest installed one for the artifact and device is chosen.
    """
    path = Path(artifact)
    if not path.exists():
        raise StdcError("no such file", path)
    kind = artifact_kind(path)
    if precision not in PRECISIONS:
        raise StdcError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = device or default_device(kind)
    if backend is None:
        candidates = [n for n in available_backends(kind)
                      if device.split(":")[0] in BACKENDS[n].devices and precision in BACKENDS[n].precisions]
        if not candidates and kind == "engine" and not is_installed("tensorrt"):
            from ..engine import INSTALL_HINT

            raise MissingDependencyError(INSTALL_HINT, path)
        if not candidates:
            raise MissingDependencyError(
                f"no installed backend runs {kind} artifacts on {device} at {precision} "
                f"(backends for {kind}: {', '.join(BACKENDS_FOR_KIND[kind])})", path)
        backend = candidates[0]
    if backend not in BACKENDS:
        raise StdcError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend not in BACKENDS_FOR_KIND[kind]:
        raise StdcError(f"backend {backend} cannot run {kind} artifacts (use {', '.join(BACKENDS_FOR_KIND[kind])})",
                        path)
    if not is_installed(backend):
        if backend == "tensorrt":
            from ..engine import INSTALL_HINT

            raise MissingDependencyError(INSTALL_HINT, path)
        if backend == "onnxruntime-trt":
            raise MissingDependencyError("the ONNX Runtime TensorRT execution provider is not available: install "
                                         "onnxruntime-gpu and TensorRT (see README, 'TensorRT')")
        raise MissingDependencyError(f"backend {backend} is not installed")
    return BACKENDS[backend](path, artifact_metadata(path), device=device, precision=precision)


__all__ = ["BACKENDS", "Backend", "InputSpec", "artifact_kind", "artifact_metadata", "available_backends",
           "open_backend"]
