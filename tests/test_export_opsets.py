"""ONNX opsets 11..23: the file's real opset, verification parity, ops every target reads,
and OpenCV DNN running the exports."""

from __future__ import annotations

import onnx
import pytest
from typer.testing import CliRunner

from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.core.artifacts import read_onnx_metadata
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.export.common import onnx_opset, onnx_runner
from stdc_deploy.export.onnx import DYNAMO_MIN_OPSET, MAX_OPSET, MIN_OPSET, exporter_for
from stdc_deploy.parity import compare_logits, default_tolerance
from stdc_deploy.preprocess import normalize
from stdc_deploy.synthetic import synthetic_images

HEIGHT, WIDTH = 64, 128
# the ops STDC-Seg exports to, at every opset (Shape..Unsqueeze compute a dynamic export's sizes)
STDC_OPS = {"Add", "AveragePool", "Concat", "Conv", "Mul", "ReduceMean", "Relu", "Resize", "Sigmoid",
            "Shape", "Gather", "Slice", "Unsqueeze", "Squeeze", "Reshape", "Div", "Cast"}


@pytest.fixture(scope="module")
def stdc1(official_checkpoints):
    return load_model(official_checkpoints["stdc1"])[0]


@pytest.fixture(scope="module")
def exported(stdc1, tmp_path_factory):
    """Export once per (opset, dynamic, precision), shared by the tests of this module."""
    root, cache = tmp_path_factory.mktemp("opsets"), {}

    def get(opset: int, dynamic: bool = False, precision: str = "fp32"):
        key = (opset, dynamic, precision)
        if key not in cache:
            path = root / f"o{opset}-{'dyn' if dynamic else 'static'}-{precision}.onnx"
            cache[key] = export_onnx(stdc1, path, OnnxExportOptions(
                height=HEIGHT, width=WIDTH, dynamic=dynamic, opset=opset, precision=precision))
        return cache[key]

    return get


def test_exporter_per_opset():
    assert (MIN_OPSET, DYNAMO_MIN_OPSET, MAX_OPSET) == (11, 18, 23)
    assert [exporter_for(o) for o in (11, 17, 18, 23)] == ["torchscript", "torchscript", "dynamo", "dynamo"]


@pytest.mark.parametrize("opset, dynamic", [(11, False), (11, True), (13, False), (13, True), (17, False),
                                            (17, True), (20, False)])
def test_opset_export_verifies(exported, opset, dynamic):
    result = exported(opset, dynamic)
    proto = onnx.load(str(result.path))
    assert onnx_opset(proto) == read_onnx_metadata(result.path).opset == result.details["opset"] == opset
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}  # nothing beyond the standard ops

    tolerance = default_tolerance("fp32")
    shapes = [(2, 19, HEIGHT, WIDTH), (1, 19, 39, 77)] if dynamic else [(1, 19, HEIGHT, WIDTH)]
    assert [p.shape for p in result.parity] == shapes
    for parity in result.parity:
        assert parity.passes(tolerance) and parity.max_abs_error < 1e-3 and parity.label_agreement >= 0.9995

    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)]
    assert dims == ([["batch", 3, "height", "width"], ["batch", 19, "height", "width"]] if dynamic
                    else [[1, 3, HEIGHT, WIDTH], [1, 19, HEIGHT, WIDTH]])


@pytest.mark.parametrize("opset", [11, 13, 17, 20])
def test_ops_every_target_reads(exported, opset):
    """Only ops of the asked opset; ReduceMean takes ``axes`` as an attribute below 18 and as
    an input from 18; Resize takes explicit sizes (no scales) in PyTorch's modes. (Dynamic
    exports below 18, static at 20: the torch.export dynamic export is the slowest to make.)"""
    graph = onnx.load(str(exported(opset, dynamic=opset < 18).path)).graph
    assert {n.op_type for n in graph.node} <= STDC_OPS
    for node in graph.node:
        assert onnx.defs.get_schema(node.op_type, opset, "").since_version <= opset
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}

    means = [n for n in graph.node if n.op_type == "ReduceMean"]
    assert len(means) == 4
    for node in means:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if opset < 18:
            assert attrs["axes"] == [2, 3] and len(node.input) == 1
        else:
            assert "axes" not in attrs and initializers[node.input[1]].tolist() == [2, 3]

    resizes = [n for n in graph.node if n.op_type == "Resize"]
    modes = sorted(onnx.helper.get_attribute_value(a) for n in resizes for a in n.attribute if a.name == "mode")
    assert modes == [b"linear", b"nearest", b"nearest"]
    for node in resizes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        expected = b"align_corners" if attrs["mode"] == b"linear" else b"asymmetric"
        assert attrs["coordinate_transformation_mode"] == expected
        assert len(node.input) == 4 and node.input[3]  # sizes
        scales = node.input[2]
        assert scales == "" or initializers[scales].size == 0  # empty: required by name before opset 13


@pytest.mark.parametrize("opset, dynamic", [(11, False), (17, True)])
def test_fp16_below_opset_18(exported, opset, dynamic):
    result = exported(opset, dynamic, "fp16")
    proto = onnx.load(str(result.path))
    assert onnx_opset(proto) == result.metadata.opset == opset and result.metadata.precision == "fp16"
    assert len({o for n in proto.graph.node for o in n.output}) == sum(len(n.output) for n in proto.graph.node)
    assert result.parity and all(p.passes(default_tolerance("fp16")) for p in result.parity)


@pytest.mark.parametrize("opset, dynamic, height, width", [(11, False, HEIGHT, WIDTH), (20, False, HEIGHT, WIDTH),
                                                           (11, True, 39, 77), (17, True, 39, 77)])
def test_opencv_dnn_runs_the_export(exported, opset, dynamic, height, width):
    """OpenCV DNN reads static and dynamic exports and agrees with ONNX Runtime (a dynamic
    one at another size than it was exported at)."""
    cv2 = pytest.importorskip("cv2")
    path = exported(opset, dynamic).path
    x = normalize(synthetic_images(1, height, width, seed=3))
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x)
    parity = compare_logits(onnx_runner(path)(x), net.forward())
    assert parity.shape == (1, 19, height, width)
    assert parity.max_abs_error <= 1e-3 * parity.reference_abs_max + 1e-3, parity.describe()
    assert parity.label_agreement >= 0.999, parity.describe()


def test_cli_exports_opset_11(official_checkpoints, tmp_path):
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(app, ["export", "onnx", str(official_checkpoints["stdc1"]), "--opset", "11",
                                      "-o", str(out), "--size", f"{HEIGHT}x{WIDTH}"])
    assert result.exit_code == 0, result.output
    assert f"{HEIGHT}x{WIDTH}, opset 11, fp32" in result.stdout
    assert onnx_opset(onnx.load(str(out))) == 11


@pytest.mark.parametrize("opset", ["10", "99"])
def test_cli_refuses_opsets_out_of_range(official_checkpoints, tmp_path, opset):
    result = CliRunner().invoke(app, ["export", "onnx", str(official_checkpoints["stdc1"]), "--opset", opset,
                                      "-o", str(tmp_path / "x.onnx"), "--size", f"{HEIGHT}x{WIDTH}"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: --opset: must be within 11..23, got {opset}"], result.stderr
    assert list(tmp_path.iterdir()) == []
