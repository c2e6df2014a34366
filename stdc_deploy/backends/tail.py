"""Running an ONNX model without its final upsampling.

Every STDC-Seg artifact ends with the last step of the official inference path: a bilinear,
``align_corners=True`` resize of the 1/8-resolution logits to the input size. A caller that
turns logits into labels resizes them again anyway, to the frame size
(:func:`~stdc_deploy.postprocess.labels_official`, which interpolates only at label
boundaries). For such callers the network's own resize of every class plane is wasted work:
on the 2-core test CPU, leaving it out took STDC1 512x1024 with NNCF INT8 + bf16 in OpenVINO
from 51.3 to 31.1 ms, input batch to labels (``stdc bench --cpu-paths``, README "CPU").

:func:`without_final_resize` returns the graph ending before that resize, found by
structure: the graph output is produced by a linear ``align_corners`` Resize, possibly
followed by quantize / dequantize / cast nodes (Q/DQ INT8 and FP16 files). Anything else
is left alone (``None``). The artifact file is never changed.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# Nodes that may sit between the final Resize and the graph output: they change precision,
# not geometry (an INT8 file requantizes the resized logits; an FP16 file casts them to float32).
PASSTHROUGH = ("QuantizeLinear", "DequantizeLinear", "Cast")


def _attribute(node, name: str, default=None):
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def final_resize(graph) -> tuple[object, list] | None:
    """(the final Resize node, the nodes after it) when the only graph output ends with a
    linear align_corners Resize; else None."""
    if len(graph.output) != 1:
        return None
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    after = []
    node = producer.get(graph.output[0].name)
    while node is not None and node.op_type in PASSTHROUGH:
        after.append(node)
        node = producer.get(node.input[0])
    if node is None or node.op_type != "Resize":
        return None
    if _attribute(node, "mode", "nearest") != "linear" or _attribute(node, "coordinate_transformation_mode") != "align_corners":
        return None
    if any(consumers.get(n.output[0], 0) > 1 for n in [node, *after[1:]]):
        return None  # something else reads an intermediate result: not a pure tail
    return node, after


def without_final_resize(proto):
    """A copy of the ONNX ``proto`` whose output is the input of its final upsampling
    (named after that tensor), or None when the graph does not end that way."""
    import onnx

    found = final_resize(proto.graph)
    if found is None:
        return None
    resize, _ = found
    cut = onnx.ModelProto()
    cut.CopyFrom(proto)
    graph = cut.graph
    wanted = {resize.input[0]}
    live = []
    # nodes are in topological order: keep what the new output needs, which leaves out the
    # resize, what follows it and what only computed its target size
    for node in reversed(graph.node):
        if wanted.intersection(node.output):
            live.append(node)
            wanted.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(live))
    graph_output = proto.graph.output[0].type.tensor_type
    found = _inferred(proto, resize.input[0])
    new = onnx.helper.make_tensor_value_info(
        resize.input[0], found.elem_type if found else graph_output.elem_type,
        [d.dim_value or d.dim_param or None for d in found.shape.dim] if found and found.HasField("shape")
        else [None, None, "height_8", "width_8"])
    del graph.output[:]
    graph.output.append(new)
    kept_init = [t for t in graph.initializer if t.name in wanted]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)
    return cut


def _inferred(proto, name: str):
    """The tensor type of ``name`` as ONNX shape inference finds it (an FP16 file's logits
    are float16 before their final cast), or None."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # inference is a convenience here, never a failure
        return None
    for info in inferred.graph.value_info:
        if info.name == name:
            return info.type.tensor_type
    return None


def load_without_final_resize(path) -> tuple[bytes, str] | None:
    """(serialized model without its final resize, its output name) for the ONNX file at
    ``path`` (external weights included), or None where the graph does not end in one."""
    import onnx

    proto = onnx.load(str(path))
    cut = without_final_resize(proto)
    if cut is None:
        log.info("%s: no final align_corners resize found; logits stay at the input size", path)
        return None
    return cut.SerializeToString(), cut.graph.output[0].name
