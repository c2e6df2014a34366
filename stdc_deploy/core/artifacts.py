"""Artifact kinds, their metadata readers and the default folders.

One place for what every runtime, the CLI, ``stdc info`` and model discovery need to know
about a file: which kind it is (by suffix), where its :class:`ArtifactMetadata` lives, and
where exports and engines go by default. Reading metadata never loads weights, and only
checkpoints (whose metadata is derived from their tensors) import PyTorch.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from ..errors import StdcError
from .metadata import METADATA_FILE, ArtifactMetadata

MODELS_DIR = Path("models")  # exports land here
ENGINES_DIR = Path("engines")  # TensorRT engines land here
ORT_TRT_CACHE_DIR = ENGINES_DIR / "ort-trt-cache"  # engines ONNX Runtime's TensorRT EP builds itself

KINDS = {".pth": "checkpoint", ".pt": "checkpoint", ".tar": "checkpoint", ".ckpt": "checkpoint",
         ".ts": "torchscript", ".torchscript": "torchscript", ".pt2": "pt2", ".onnx": "onnx", ".engine": "engine",
         ".plan": "engine"}
KIND_NAMES = {"checkpoint": "checkpoint", "torchscript": "TorchScript", "pt2": "torch.export program",
              "onnx": "ONNX", "engine": "TensorRT engine"}


def artifact_kind(path: str | os.PathLike) -> str:
    """``checkpoint``, ``torchscript``, ``pt2``, ``onnx`` or ``engine``, from the suffix."""
    path = Path(path)
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise StdcError(f"unsupported model file type '{path.suffix}' (expected one of {known})", path)
    return kind


def check_artifact_file(path: str | os.PathLike) -> Path:
    """The path, if it names a non-empty file; else a one-line error saying what it is."""
    path = Path(path)
    if not path.exists():
        raise StdcError("no such file", path)
    if path.is_dir():
        raise StdcError("is a folder, not a model file", path)
    if path.stat().st_size == 0:
        raise StdcError("empty file", path)
    return path


def read_onnx_metadata(path: str | os.PathLike) -> ArtifactMetadata:
    """The stdc-deploy metadata of an ONNX file (the graph's weights are not loaded)."""
    import onnx

    path = check_artifact_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for non-ONNX bytes
        raise StdcError(f"not a readable ONNX model ({type(exc).__name__})", path) from None
    props = {p.key: p.value for p in proto.metadata_props}
    try:
        return ArtifactMetadata.from_props(props)
    except (ValueError, TypeError) as exc:
        raise StdcError(f"no usable stdc-deploy metadata: {exc}", path) from None


def read_archive_metadata(path: str | os.PathLike) -> ArtifactMetadata:
    """The metadata file inside a TorchScript or ``.pt2`` zip archive."""
    path = check_artifact_file(path)
    kind = KIND_NAMES[artifact_kind(path)]
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"extra/{METADATA_FILE}")), None)
            if name is None:
                raise StdcError(f"a {kind} file without stdc-deploy metadata (export it with `stdc export`)", path)
            return ArtifactMetadata.from_props(json.loads(archive.read(name)))
    except (OSError, zipfile.BadZipFile, ValueError, TypeError) as exc:
        raise StdcError(f"not a readable {kind} archive ({type(exc).__name__})", path) from None


def read_checkpoint_metadata(path: str | os.PathLike) -> ArtifactMetadata:
    """Metadata derived from a checkpoint's tensors (architecture, variant, classes, bias)."""
    from ..checkpoint import inspect_checkpoint, read_state_dict

    _, info = inspect_checkpoint(read_state_dict(path), path=path)
    return ArtifactMetadata(arch=info.arch, variant=info.variant, num_classes=info.num_classes, input_height=None,
                            input_width=None, batch=None, dynamic=True, classifier_bias=info.classifier_bias,
                            source_format=info.source_format, checkpoint_sha256=info.sha256)


def read_engine_metadata(path: str | os.PathLike) -> ArtifactMetadata:
    """An engine's metadata, from its sidecar JSON (the plan itself stays opaque)."""
    from ..backends.tensorrt.sidecar import read_sidecar

    return read_sidecar(check_artifact_file(path)).artifact_metadata


_READERS = {"onnx": read_onnx_metadata, "torchscript": read_archive_metadata, "pt2": read_archive_metadata,
            "checkpoint": read_checkpoint_metadata, "engine": read_engine_metadata}


def read_metadata(path: str | os.PathLike) -> ArtifactMetadata:
    """The :class:`ArtifactMetadata` of any artifact kind."""
    path = check_artifact_file(path)
    return _READERS[artifact_kind(path)](path)
