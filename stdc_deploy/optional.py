"""Optional dependencies: one way to import them, one install hint per package.

    ov = require("openvino")     # the module, or MissingDependencyError with the pip line
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError

# import name -> what to install (a pip line users can paste)
INSTALL_HINTS = {
    "onnxruntime": "pip install onnxruntime (or 'stdc-deploy[gpu]' for the CUDA build)",
    "openvino": "pip install 'stdc-deploy[openvino]'",
    "nncf": "pip install 'stdc-deploy[openvino]'",
    "tensorrt": ("pip install --extra-index-url https://pypi.nvidia.com tensorrt "
                 "(needs an NVIDIA GPU and driver; see README, 'TensorRT')"),
    "matplotlib": "pip install 'stdc-deploy[plot]'",
    "ray": "pip install 'stdc-deploy[ray]' (Ray Data; on a cluster, on every node)",
    "av": "pip install av",
    "starlette": "pip install 'stdc-deploy[serve]'",
    "uvicorn": "pip install 'stdc-deploy[serve]'",
    "grpc": "pip install 'stdc-deploy[grpc]'",
    "tritonclient": "pip install 'stdc-deploy[triton]'",
    "torch": "pip install torch",
}


def install_hint(module: str) -> str:
    return INSTALL_HINTS.get(module, f"pip install {module}")


def is_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with the install line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = {"av": "PyAV"}.get(module, module)
        what = f"{purpose} needs {name}" if purpose else f"{name} is not installed"
        raise MissingDependencyError(f"{what}: {install_hint(module)}") from exc
