"""FP16 ONNX from FP32 ONNX: FP16 weights and compute, FP32 input and output.

This is the form TensorRT's strongly typed networks build FP16 engines from, and what
``stdc export onnx --precision fp16`` writes.
"""

from __future__ import annotations

from pathlib import Path

from ..core.artifacts import read_onnx_metadata
from ..core.fileio import atomic_write_bytes
from ..errors import ExportError, StdcError
from ..parity import FP16_TOLERANCE, compare_logits
from .quiet import quiet_exporter


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ExportError(f"the graph has a cycle or a dangling input near node {pending[0].name}")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


def to_fp16(proto):
    """FP16 weights and compute with the FP32 input and output kept (Casts at the edges), as
    TensorRT's strongly typed mode takes it; ops that need FP32 (e.g. Resize's scales) stay
    FP32 behind Casts. Uses ONNX Runtime's converter, then restores topological order."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet_exporter():
        converted = convert_float_to_float16(proto, keep_io_types=True)
    topological_sort(converted.graph)
    return converted


def convert_onnx_fp16(onnx_path: Path, target: Path) -> Path:
    """FP16 ONNX (FP32 I/O) from an FP32 ONNX, checked in ONNX Runtime against it."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from ..preprocess import normalize
    from ..synthetic import synthetic_images

    meta = read_onnx_metadata(onnx_path)
    proto = to_fp16(onnx.load(str(onnx_path)))
    props = {p.key: p.value for p in proto.metadata_props}
    props["precision"] = "fp16"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    size = (meta.input_height or meta.opt_height, meta.input_width or meta.opt_width)
    x = normalize(synthetic_images(meta.batch or 1, *size, seed=0), meta.mean, meta.std)
    a = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {meta.input_name: x})[0]
    b = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {meta.input_name: x})[0]
    parity = compare_logits(a, np.asarray(b))
    if not parity.passes(FP16_TOLERANCE):
        raise StdcError(f"the FP16 conversion does not verify against FP32: {parity.describe()}", onnx_path)
    atomic_write_bytes(target, data)
    return target
