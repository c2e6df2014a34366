"""stdc-deploy: export, accelerate, run and measure STDC-Seg semantic segmentation models."""

__version__ = "0.1.0"

from .checkpoint import CheckpointInfo, load_model, read_state_dict, remap_state_dict  # noqa: E402
from .errors import CheckpointError, ExportError, StdcError  # noqa: E402
from .models import ARCHS, PRESETS, STDCSeg, create_model  # noqa: E402
from .segmenter import Segmenter  # noqa: E402

__all__ = [
    "ARCHS", "PRESETS", "CheckpointError", "CheckpointInfo", "ExportError", "STDCSeg", "Segmenter", "StdcError",
    "__version__", "create_model", "load_model", "read_state_dict", "remap_state_dict",
]
