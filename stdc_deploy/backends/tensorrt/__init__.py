"""TensorRT in one place: engine building, the sidecar, environment checks and the runtime.

``tensorrt`` itself is imported only when an engine is built or run.
"""

from .build import BuildOptions, BuildResult, Profile, build_engine, parse_profile
from .environment import INSTALL_HINT, engine_fits_this_machine, import_tensorrt, this_gpu
from .sidecar import EngineSidecar, check_compatible, read_sidecar, sidecar_path

__all__ = ["INSTALL_HINT", "BuildOptions", "BuildResult", "EngineSidecar", "Profile", "build_engine",
           "check_compatible", "engine_fits_this_machine", "import_tensorrt", "parse_profile", "read_sidecar",
           "sidecar_path", "this_gpu"]
