"""What an artifact is: any ONNX file (ours or not: inputs, outputs, opsets, producer, node
counts by op type, like ``polygraphy inspect model``), exports, engines and checkpoints, as
JSON-ready dictionaries."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from .core.artifacts import artifact_kind, check_artifact_file, read_metadata
from .core.metadata import ArtifactMetadata
from .errors import StdcError

TOP_OPS = 10  # op types listed by `stdc info` on an ONNX file


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _tensor(value_info) -> dict:
    """Name, element type and shape (dim params by name, unknown dims as '?') of a graph input/output."""
    tensor_type = value_info.type.tensor_type
    dims = None
    if tensor_type.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim]
    return {"name": value_info.name, "dtype": _dtype_name(tensor_type.elem_type), "shape": dims}


def describe_onnx(path: str | os.PathLike) -> dict:
    """What an ONNX file holds, whoever wrote it: the graph's interface, opsets, producer, node
    counts by op type, and the stdc-deploy metadata (None when absent). Weights are not loaded."""
    import onnx

    path = check_artifact_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for non-ONNX bytes
        raise StdcError(f"not a readable ONNX model ({type(exc).__name__})", path) from None
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    ops = Counter(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                  for node in graph.node)
    props = {p.key: p.value for p in proto.metadata_props}
    metadata, problem = None, None
    try:
        metadata = ArtifactMetadata.from_props(props)
    except (ValueError, TypeError) as exc:  # a foreign model, or our metadata damaged
        if "arch" in props or "num_classes" in props:
            problem = str(exc)
    return {
        "ir_version": proto.ir_version,
        "producer": " ".join(p for p in (proto.producer_name, proto.producer_version) if p) or None,
        "opsets": {(o.domain or "ai.onnx"): o.version for o in proto.opset_import},
        "inputs": [_tensor(v) for v in graph.input if v.name not in initializers],
        "outputs": [_tensor(v) for v in graph.output],
        "nodes": len(graph.node),
        "op_counts": dict(ops.most_common()),
        "initializers": len(initializers),
        "metadata": None if metadata is None else _metadata_dict(metadata),
        "metadata_problem": problem,
        "other_metadata_keys": sorted(k for k in props if k not in ArtifactMetadata.__dataclass_fields__),
    }


def _metadata_dict(meta: ArtifactMetadata) -> dict:
    rows = dict(vars(meta))
    rows["class_names"] = list(meta.class_names)
    rows["mean"], rows["std"] = list(meta.mean), list(meta.std)
    return rows


def describe_artifact(path: Path) -> dict:
    """JSON-ready description of any artifact kind."""
    path = check_artifact_file(path)
    kind = artifact_kind(path)
    out: dict = {"path": str(path), "kind": kind, "file_bytes": path.stat().st_size}
    if kind == "onnx":
        out["onnx"] = describe_onnx(path)
        out["metadata"] = out["onnx"].pop("metadata")
    elif kind == "checkpoint":
        from .checkpoint import inspect_checkpoint, read_state_dict

        _, ckpt = inspect_checkpoint(read_state_dict(path), path=path)
        out["checkpoint"] = dict(vars(ckpt))
    elif kind == "engine":
        from .backends.tensorrt.sidecar import read_sidecar

        sidecar = read_sidecar(path)
        out["metadata"] = _metadata_dict(sidecar.artifact_metadata)
        out["engine"] = {k: v for k, v in vars(sidecar).items() if k not in ("metadata", "layers")}
    else:
        out["metadata"] = _metadata_dict(read_metadata(path))
    return out
