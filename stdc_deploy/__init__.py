"""stdc-deploy: export, accelerate, run and measure STDC-Seg semantic segmentation models.

The names below are imported on first use, so ``import stdc_deploy`` stays cheap and the
ONNX Runtime path never imports PyTorch.
"""

from __future__ import annotations

import importlib

from ._version import __version__
from .errors import CheckpointError, ExportError, StdcError

_LAZY = {
    "ARCHS": ".models", "PRESETS": ".models", "VARIANTS": ".models", "STDCSeg": ".models", "create_model": ".models",
    "CheckpointInfo": ".checkpoint", "load_model": ".checkpoint", "read_state_dict": ".checkpoint",
    "remap_state_dict": ".checkpoint",
    "ArtifactMetadata": ".core.metadata",
    "Segmenter": ".segmenter",
    "create_backend": ".backends", "open_backend": ".backends",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CheckpointError", "ExportError", "StdcError", "__version__", *_LAZY]
