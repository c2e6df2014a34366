"""Where an ONNX model's CPU time goes: per operator type and per part of the network.

    python scripts/profile_cpu.py                                  # random STDC1, 512x1024, ONNX Runtime
    python scripts/profile_cpu.py --model models/stdc1.onnx --runtime openvino --precision bf16
    python scripts/profile_cpu.py --runtime openvino --int8        # NNCF INT8 of the same model

ONNX Runtime: ``SessionOptions.enable_profiling`` (one event per node run; fused nodes keep
the first node's name). OpenVINO: per-layer counters (``PERF_COUNT``, ``profiling_info``).
Every run after the warm-up is summed, then shown as milliseconds per inference:

* per operator type, as the runtime executed it (``FusedConv`` is Conv+activation in ORT;
  OpenVINO names its executed kernels, e.g. ``brgconv_avx512_core``);
* per part, from the ONNX graph: 3x3 / 1x1 convolutions on feature maps, the attention
  branch (global mean, convolutions on 1x1 maps, sigmoid, scaling multiply), concatenations,
  resizes, pooling, the rest.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def graph_parts(path: Path) -> dict[str, str]:
    """ONNX node name -> the part of the network it belongs to."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    parts, producers = {}, {}
    for node in model.graph.node:
        op = node.op_type
        spatial = shapes.get(node.input[0], [0, 0, 0, 0])[2:] if node.input else []
        if op in ("ReduceMean", "Sigmoid", "Mul", "GlobalAveragePool") or (
                op in ("Conv", "Relu", "Add") and spatial and max(spatial) == 1):
            part = "attention branch (mean, 1x1-map convs, sigmoid, mul)"
        elif op == "Conv":
            kernel = inits.get(node.input[1], [0, 0, 0, 0])[2:]
            part = f"conv {kernel[0]}x{kernel[1]}" if len(kernel) == 2 else "conv"
        else:
            part = {"Concat": "concat", "Resize": "resize", "AveragePool": "pooling", "MaxPool": "pooling"}.get(
                op, "other (relu, add, ...)")
        parts[node.name] = part
        for output in node.output:  # ORT renames the nodes it re-lays out after their output (relu_3_nchwc)
            producer = producers.get(node.input[0]) if node.input else None
            fused = op in ("Relu", "Add", "Clip") and producer is not None and producer.op_type == "Conv"
            parts[output] = parts[producer.name] if fused else part
        for output in node.output:
            producers[output] = node
    return parts


def profile_onnxruntime(path: Path, x: np.ndarray, iters: int, threads: int | None) -> list[tuple[str, str, float]]:
    """(node name, op type, microseconds) per node run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="stdc-profile-")) / "ort")
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: x})  # warm-up, also profiled: dropped below by run count
    for _ in range(iters):
        session.run(None, {name: x})
    trace = json.loads(Path(session.end_profiling()).read_text())
    events = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_node = collections.defaultdict(list)
    for e in events:
        per_node[e["name"][:-len("_kernel_time")]].append((e["args"].get("op_name", "?"), float(e["dur"])))
    rows = []
    for node, runs in per_node.items():
        for op, dur in runs[-iters:]:  # the timed runs, not the warm-up
            rows.append((node, op, dur))
    return rows


def profile_openvino(path: Path, x: np.ndarray, iters: int, threads: int | None,
                     precision: str) -> list[tuple[str, str, float]]:
    import openvino as ov

    config = {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
    request.infer({0: x})
    rows = []
    for _ in range(iters):
        request.infer({0: x})
        for info in request.profiling_info:
            if info.status == info.Status.EXECUTED:
                rows.append((info.node_name, f"{info.node_type} [{info.exec_type}]",
                             info.real_time.total_seconds() * 1e6))
    return rows


def table(title: str, totals: dict[str, float], iters: int) -> str:
    whole = sum(totals.values())
    lines = [f"{title:<52} {'ms/inf':>8} {'share':>7}"]
    for key, us in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"{key[:52]:<52} {us / iters / 1e3:8.2f} {us / whole:7.1%}")
    lines.append(f"{'total (sum of node times)':<52} {whole / iters / 1e3:8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX file (default: a random-weight STDC1 exported here)")
    parser.add_argument("--arch", default="stdc1")
    parser.add_argument("--size", default="512x1024", help="HxW for the random-weight model")
    parser.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="OpenVINO inference precision")
    parser.add_argument("--int8", action="store_true", help="profile an INT8 file quantized from the model "
                                                            "(NNCF for openvino, ONNX Runtime's for onnxruntime)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)

    from stdc_deploy.core.artifacts import read_metadata
    from stdc_deploy.preprocess import normalize
    from stdc_deploy.synthetic import synthetic_images

    with tempfile.TemporaryDirectory(prefix="stdc-profile-") as scratch:
        path = args.model
        if path is None:
            from stdc_deploy.export import OnnxExportOptions, export_onnx
            from stdc_deploy.synthetic import random_model

            h, w = (int(v) for v in args.size.lower().split("x"))
            path = Path(scratch) / f"{args.arch}-{h}x{w}.onnx"
            model = random_model(args.arch, seed=0, aux_heads=False, calib_size=(64, 128), calib_images=8)
            export_onnx(model.eval(), path, OnnxExportOptions(height=h, width=w, verify=False))
        meta = read_metadata(path)
        size = (meta.input_height or meta.opt_height, meta.input_width or meta.opt_width)
        parts = graph_parts(path)
        if args.int8:
            import cv2

            from stdc_deploy.export.quantize import QuantizeOptions, quantize_onnx

            calib = Path(scratch) / "calib"
            calib.mkdir()
            for i, image in enumerate(synthetic_images(10, *size, seed=11)):
                cv2.imwrite(str(calib / f"{i:02d}.png"), image)
            target = "openvino" if args.runtime == "openvino" else "cpu"
            int8 = Path(scratch) / "int8.onnx"
            quantize_onnx(path, calib, int8, QuantizeOptions(target=target, num_images=8, holdout=2))
            path = int8
        x = normalize(synthetic_images(meta.batch or 1, *size, seed=0), meta.mean, meta.std)
        start = time.perf_counter()
        if args.runtime == "onnxruntime":
            rows = profile_onnxruntime(path, x, args.iters, args.threads)
        else:
            rows = profile_openvino(path, x, args.iters, args.threads, args.precision)
        wall = (time.perf_counter() - start) / (args.iters + 1)
    by_op, by_part = collections.Counter(), collections.Counter()
    for node, op, us in rows:
        by_op[op] += us
        name = node.removesuffix("_nchwc")
        by_part[parts.get(name, "layout reorders and other runtime-made nodes")] += us
    precision = ("int8+" if args.int8 else "") + args.precision if args.runtime == "openvino" else (
        "int8" if args.int8 else "fp32")
    what = f"{args.runtime} {precision}, {size[0]}x{size[1]}, {args.iters} runs"
    print(table(f"per operator type ({what})", by_op, args.iters))
    print()
    print(table("per part of the network", by_part, args.iters))
    print(f"\nwall time per inference with profiling on: {wall * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
