"""FP16 ONNX from FP32 ONNX: FP16 weights and compute, FP32 input and output.

This is the form TensorRT's strongly typed networks build FP16 engines from, and what
``stdc export onnx --precision fp16`` writes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from ..errors import ExportError
from ..parity import Tolerance, default_tolerance
from .common import (
    read_fp32_onnx_metadata,
    ExportResult,
    check_export_output,
    compare_runs,
    onnx_opset,
    onnx_runner,
    set_onnx_metadata,
    verification_inputs,
    write_verified,
)
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


def drop_duplicate_nodes(graph) -> None:
    """Remove nodes that repeat an earlier node exactly (same op, inputs, outputs, attributes).

    The FP16 converter writes one Cast back to FP32 per use of a constant by an op kept in
    FP32; Resize-11 takes the same empty constant as ``roi`` and ``scales``, which gives two
    identical Casts and breaks single assignment.
    """
    seen, kept = set(), []
    for node in graph.node:
        key = (node.domain, node.op_type, tuple(node.input), tuple(node.output),
               tuple(a.SerializeToString(deterministic=True) for a in node.attribute))
        if key not in seen:
            seen.add(key)
            kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def to_fp16(proto):
    """FP16 weights and compute with the FP32 input and output kept (Casts at the edges), as
    TensorRT's strongly typed mode takes it; ops that need FP32 (e.g. Resize's scales) stay
    FP32 behind Casts. Uses ONNX Runtime's converter, then drops the duplicate nodes it can
    write and restores topological order."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet_exporter():
        converted = convert_float_to_float16(proto, keep_io_types=True)
    drop_duplicate_nodes(converted.graph)
    topological_sort(converted.graph)
    return converted


def convert_onnx_fp16(onnx_path: str | os.PathLike, target: str | os.PathLike,
                      tolerance: Tolerance | None = None) -> ExportResult:
    """FP16 ONNX (FP32 I/O) from an FP32 ONNX, checked in ONNX Runtime against it before it
    is written to ``target`` (``tolerance`` None: the FP16 default)."""
    import onnx

    onnx_path = Path(onnx_path)
    target = check_export_output(target, "onnx", [onnx_path])
    start = time.perf_counter()
    meta = read_fp32_onnx_metadata(onnx_path, "convert an FP32 export to FP16")
    proto = to_fp16(onnx.load(str(onnx_path)))
    metadata = dataclasses.replace(meta, precision="fp16", opset=onnx_opset(proto))
    set_onnx_metadata(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    inputs = verification_inputs(meta.opt_height, meta.opt_width, batch=meta.batch or 1, dynamic=meta.dynamic,
                                 mean=meta.mean, std=meta.std)

    def compare(tmp: Path):
        return compare_runs(onnx_runner(onnx_path, meta.input_name), onnx_runner(tmp, meta.input_name), inputs)

    parity = write_verified(target, lambda tmp: tmp.write_bytes(data), compare,
                            tolerance or default_tolerance("fp16"),
                            what="ONNX Runtime fp16 vs fp32")
    return ExportResult(target, metadata, parity, len(data), time.perf_counter() - start,
                        {"opset": metadata.opset})
