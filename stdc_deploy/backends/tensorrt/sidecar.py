"""The sidecar ``ENGINE.json`` beside every engine: TensorRT version, GPU, precision, shapes
and the artifact metadata.

An engine runs only on the TensorRT version and GPU model it was built with, so these facts
go in a sidecar (never a header inside the plan, which would break trtexec); loading
refuses an engine whose sidecar names another TensorRT or GPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...core.metadata import ArtifactMetadata
from ...errors import StdcError

SIDECAR_FORMAT = 1


@dataclass(frozen=True)
class EngineSidecar:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profiles: tuple[dict, ...]
    onnx_sha256: str
    onnx_file: str
    tool_version: str
    metadata: dict  # the artifact metadata (ArtifactMetadata.to_props of the engine's ONNX)
    built_at: str = ""
    build_seconds: float = 0.0
    format: int = SIDECAR_FORMAT
    layers: list = field(default_factory=list)  # from the engine inspector, when available

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @property
    def artifact_metadata(self) -> ArtifactMetadata:
        return ArtifactMetadata.from_props(self.metadata)


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(engine)}.json")


def read_sidecar(engine: str | os.PathLike) -> EngineSidecar:
    path = sidecar_path(engine)
    if not path.is_file():
        raise StdcError(f"no sidecar {path.name} beside this engine (it records the TensorRT version, GPU and "
                        "metadata); rebuild it with `stdc build-engine`", engine)
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(EngineSidecar)}
        data = {k: v for k, v in data.items() if k in known}
        data["profiles"] = tuple(data.get("profiles", ()))
        return EngineSidecar(**data)
    except (ValueError, TypeError) as exc:
        raise StdcError(f"unreadable engine sidecar ({type(exc).__name__})", path) from None


def check_compatible(sidecar: EngineSidecar, tensorrt_version: str, gpu_name: str, compute_capability: str,
                     engine: str | os.PathLike) -> None:
    """Refuse an engine built with another TensorRT version or GPU model, saying how to fix it."""
    problems = []
    if sidecar.tensorrt_version != tensorrt_version:
        problems.append(f"built with TensorRT {sidecar.tensorrt_version}, this machine has {tensorrt_version}")
    if sidecar.gpu_name != gpu_name or sidecar.compute_capability != compute_capability:
        problems.append(f"built for {sidecar.gpu_name} (sm {sidecar.compute_capability}), this GPU is {gpu_name} "
                        f"(sm {compute_capability})")
    if problems:
        raise StdcError("; ".join(problems) + f"; rebuild it here: stdc build-engine {sidecar.onnx_file}", engine)
