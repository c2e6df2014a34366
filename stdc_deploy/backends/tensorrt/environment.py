"""What this machine offers TensorRT: the module, the GPU, and whether an engine fits them."""

from __future__ import annotations

from pathlib import Path

from ...errors import MissingDependencyError, StdcError
from ...optional import install_hint, require
from .sidecar import check_compatible, read_sidecar

INSTALL_HINT = f"TensorRT is not installed: {install_hint('tensorrt')}"


def import_tensorrt():
    """The ``tensorrt`` module, or MissingDependencyError with the install line."""
    try:
        return require("tensorrt")
    except MissingDependencyError as exc:
        raise MissingDependencyError(INSTALL_HINT) from exc


def this_gpu(device: str = "cuda") -> tuple[str, str]:
    """(name, compute capability) of the CUDA device, or a clear error."""
    import torch

    if not torch.cuda.is_available():
        raise StdcError("TensorRT needs a CUDA GPU, and PyTorch sees none (check the driver and a CUDA build of torch)")
    index = int(device.split(":")[1]) if ":" in device else 0
    props = torch.cuda.get_device_properties(index)
    return props.name, f"{props.major}.{props.minor}"


def engine_fits_this_machine(engine: Path) -> tuple[bool, str]:
    """Whether ``engine`` can run here, and why not."""
    try:
        trt = import_tensorrt()
        name, capability = this_gpu()
        check_compatible(read_sidecar(engine), trt.__version__, name, capability, engine)
    except StdcError as exc:
        return False, exc.message
    return True, ""
