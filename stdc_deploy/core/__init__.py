"""The runtime core: artifact metadata, artifact kinds and folders, model discovery, file output.

Nothing here imports PyTorch or a runtime at import time.
"""

from .artifacts import ENGINES_DIR, KINDS, MODELS_DIR, ORT_TRT_CACHE_DIR, artifact_kind, read_metadata
from .metadata import ArtifactMetadata

__all__ = ["ENGINES_DIR", "KINDS", "MODELS_DIR", "ORT_TRT_CACHE_DIR", "ArtifactMetadata", "artifact_kind",
           "read_metadata"]
