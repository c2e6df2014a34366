import dataclasses
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from stdc_deploy.checkpoint import load_model
from stdc_deploy.errors import ExportError, InvalidValue, StdcError
from stdc_deploy.core.artifacts import read_onnx_metadata
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.preprocess import normalize
from stdc_deploy.synthetic import synthetic_images
from stdc_deploy.parity import Tolerance, compare_logits


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def stdc1(official_checkpoints):
    return load_model(official_checkpoints["stdc1"])


@pytest.fixture(scope="module")
def static_export(stdc1, tmp_path_factory):
    model, info = stdc1
    path = tmp_path_factory.mktemp("onnx") / "stdc1.onnx"
    return export_onnx(model, path, OnnxExportOptions(height=64, width=128, batch=2), checkpoint=info)


@pytest.fixture(scope="module")
def dynamic_export(official_checkpoints, tmp_path_factory):
    model, info = load_model(official_checkpoints["stdc2"])
    path = tmp_path_factory.mktemp("onnx") / "stdc2-dynamic.onnx"
    return model, export_onnx(model, path, OnnxExportOptions(height=64, width=96, dynamic=True), checkpoint=info)


def test_static_export_is_standard_checked_and_self_describing(static_export, stdc1):
    model, info = stdc1
    proto = onnx.load(str(static_export.path))
    onnx.checker.check_model(proto, full_check=True)
    dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(i.name, dims(i)) for i in proto.graph.input] == [("input", [2, 3, 64, 128])]
    assert [(o.name, dims(o)) for o in proto.graph.output] == [("logits", [2, 19, 64, 128])]
    ops = Counter(n.op_type for n in proto.graph.node)
    assert ops["ReduceMean"] == 4  # arm16, arm32, context average, ffm: global pooling as a mean
    assert not ops["GlobalAveragePool"]
    for node in proto.graph.node:
        if node.op_type == "AveragePool":
            kernel = next(a.ints for a in node.attribute if a.name == "kernel_shape")
            assert list(kernel) == [3, 3]  # only the fixed stride-2 skip pooling
    meta = read_onnx_metadata(static_export.path)
    assert (meta.arch, meta.num_classes, meta.input_height, meta.input_width, meta.batch) == ("stdc1", 19, 64, 128, 2)
    assert meta.class_names[0] == "road" and len(meta.class_names) == 19
    assert meta.checkpoint_sha256 == info.sha256 and meta.source_format == "official"
    assert meta.mean == (0.485, 0.456, 0.406) and meta.precision == "fp32" and not meta.dynamic
    assert meta.versions["stdc_deploy"]


def test_static_export_matches_pytorch(static_export, stdc1):
    model, _ = stdc1
    (report,) = static_export.parity
    assert report.max_abs_error < 1e-3 and report.label_agreement >= 0.9995
    x = normalize(synthetic_images(2, 64, 128, seed=123))  # not the verification input
    parity = compare_logits(torch_logits(model, x), run_onnx(static_export.path, x))
    assert parity.max_abs_error < 1e-3, parity.describe()
    assert parity.label_agreement >= 0.9995
    assert parity.reference_abs_max > 5  # realistic logits, not a degenerate model


@pytest.mark.parametrize("shape", [(1, 64, 96), (3, 64, 96), (1, 97, 131), (2, 40, 200)])
def test_dynamic_export_any_batch_and_size(dynamic_export, shape):
    model, result = dynamic_export
    n, h, w = shape
    x = normalize(synthetic_images(n, h, w, seed=h * w))
    out = run_onnx(result.path, x)
    assert out.shape == (n, 19, h, w)
    parity = compare_logits(torch_logits(model, x), out)
    assert parity.max_abs_error < 1e-3 and parity.label_agreement >= 0.9995, parity.describe()


def test_dynamic_metadata_and_dims(dynamic_export):
    _, result = dynamic_export
    proto = onnx.load(str(result.path))
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]  # symbolic batch, height, width
    meta = read_onnx_metadata(result.path)
    assert meta.dynamic and meta.input_height is None and meta.batch is None and meta.arch == "stdc2"
    assert len(result.parity) == 2  # verified at the export size (batch 2) and an odd size


def test_failed_verification_writes_nothing(stdc1, tmp_path):
    model, _ = stdc1
    target = tmp_path / "strict.onnx"
    with pytest.raises(ExportError, match="verification failed, .*strict.onnx not written"):
        export_onnx(model, target, OnnxExportOptions(height=64, width=64, tolerance=Tolerance(atol=0.0, rtol=0.0)))
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_existing_file(stdc1, tmp_path):
    model, _ = stdc1
    target = tmp_path / "keep.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ExportError):
        export_onnx(model, target, OnnxExportOptions(height=64, width=64, tolerance=Tolerance(min_label_agreement=1.1)))
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.onnx"]


@pytest.mark.parametrize("options, param, message", [
    (OnnxExportOptions(opset=10), "opset", "must be within 11..23, got 10"),
    (OnnxExportOptions(opset=27), "opset", "must be within 11..23, got 27"),
    (OnnxExportOptions(height=1, width=64), "size", "1x64 is out of range"),
    (OnnxExportOptions(batch=0), "batch", "must be within 1..256, got 0"),
    (OnnxExportOptions(precision="int4"), "precision", "export offers fp32 or fp16"),
])
def test_invalid_options(stdc1, tmp_path, options, param, message):
    with pytest.raises(InvalidValue, match=message) as caught:
        export_onnx(stdc1[0], tmp_path / "x.onnx", options)
    assert caught.value.param == param and list(tmp_path.iterdir()) == []


def default_opset(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def test_metadata_opset_is_the_files_opset(static_export, stdc1, tmp_path):
    assert read_onnx_metadata(static_export.path).opset == default_opset(static_export.path) == 20
    assert static_export.details["opset"] == 20
    result = export_onnx(stdc1[0], tmp_path / "o23.onnx", OnnxExportOptions(height=64, width=64, opset=23))
    assert read_onnx_metadata(result.path).opset == default_opset(result.path) == 23


def test_exporter_writing_another_opset_is_refused(stdc1, tmp_path, monkeypatch):
    """The exporter falls back to opset 18 where it cannot convert: refused, not mislabelled."""
    import stdc_deploy.export.onnx as onnx_export

    trace = onnx_export._trace
    monkeypatch.setattr(onnx_export, "_trace", lambda model, opts: trace(model, dataclasses.replace(opts, opset=18)))
    with pytest.raises(ExportError, match="the exporter wrote opset 18, not the requested 21"):
        export_onnx(stdc1[0], tmp_path / "x.onnx", OnnxExportOptions(height=64, width=64, opset=21))
    assert list(tmp_path.iterdir()) == []


def test_unsimplified_export_also_verifies(stdc1, tmp_path):
    model, _ = stdc1
    result = export_onnx(model, tmp_path / "raw.onnx", OnnxExportOptions(height=64, width=64, simplify=False))
    assert result.parity[0].max_abs_error < 1e-3


def test_metadata_of_foreign_onnx_is_a_clear_error(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(StdcError, match="foreign.onnx: no usable stdc-deploy metadata"):
        read_onnx_metadata(path)
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(StdcError, match="junk.onnx: not a readable ONNX model"):
        read_onnx_metadata(tmp_path / "junk.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["stdc1", "stdc2"])
def test_dynamic_export_at_cityscapes_resolutions(arch, official_checkpoints, tmp_path):
    """The sizes users deploy at: Seg50, Seg75, a 4:3 camera, full Cityscapes.

    Judged against a float64 run of the PyTorch model: ONNX Runtime must be as close to
    it as PyTorch's own float32 result is (random STDC2 weights are ~1e-3 sensitive to
    float32 rounding, on either runtime).
    """
    import copy

    model, info = load_model(official_checkpoints[arch])
    exact = copy.deepcopy(model).double()
    result = export_onnx(model, tmp_path / "d.onnx", OnnxExportOptions(dynamic=True), checkpoint=info)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for h, w in [(512, 1024), (768, 1536), (720, 960), (1024, 2048)]:
        x = normalize(synthetic_images(1, h, w, seed=h))
        got = session.run(["logits"], {"input": x})[0]
        parity = compare_logits(torch_logits(model, x), got)
        assert parity.passes(Tolerance()), parity.describe()
        with torch.no_grad():
            truth = exact(torch.from_numpy(x).double()).numpy()
        ort_error = np.abs(got - truth).max()
        torch_error = np.abs(torch_logits(model, x) - truth).max()
        assert ort_error <= 1.5 * torch_error + 1e-4, (h, w, ort_error, torch_error)


def test_metadata_round_trip_keeps_types():
    from stdc_deploy.core.metadata import ArtifactMetadata

    meta = ArtifactMetadata(arch="stdc2", num_classes=3, checkpoint_sha256="1234567890e1" + "0" * 52,
                            input_height=None, input_width=None, batch=None, dynamic=True,
                            versions={"torch": "2.13.0"})
    back = ArtifactMetadata.from_props(meta.to_props())
    assert back == meta
    assert ArtifactMetadata.from_props(ArtifactMetadata(arch="stdc1", num_classes=2).to_props()).checkpoint_sha256 is None


@pytest.mark.parametrize("dynamic", [False, True])
def test_fp16_export_keeps_fp32_io_and_verifies(models_by_arch, tmp_path, dynamic):
    import onnx

    from stdc_deploy.backends import open_backend
    from stdc_deploy.parity import compare_logits

    model = models_by_arch["stdc1"].eval()
    fp32 = export_onnx(model, tmp_path / "m32.onnx", OnnxExportOptions(height=64, width=128, dynamic=dynamic))
    fp16 = export_onnx(model, tmp_path / "m16.onnx",
                       OnnxExportOptions(height=64, width=128, dynamic=dynamic, precision="fp16"))
    assert fp16.metadata.precision == "fp16" and fp16.parity
    assert 0.4 < fp16.size_bytes / fp32.size_bytes < 0.6  # weights halved
    proto = onnx.load(str(fp16.path))
    float_type = onnx.TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)] == [float_type] * 2
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    assert {t.data_type for t in proto.graph.initializer if t.name in conv_weights} == {onnx.TensorProto.FLOAT16}
    x = normalize(synthetic_images(1, 64, 128, seed=12))
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    with open_backend(fp16.path, backend="onnxruntime", device="cpu") as backend:
        parity = compare_logits(reference, backend.infer(x))
    assert parity.max_abs_error < 0.02 * parity.reference_abs_max + 0.05
    assert parity.label_agreement > 0.98
    assert parity.max_abs_error > 1e-4  # really computed in FP16, not a copy of the FP32 model


def test_fp16_cli_default_name(official_checkpoints, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from stdc_deploy.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["export", "onnx", str(official_checkpoints["stdc1"]), "--size", "64x128",
                                      "--precision", "fp16"])
    assert result.exit_code == 0, result.output
    assert "verified (ONNX Runtime fp16 vs PyTorch fp32)" in result.stdout
    assert (tmp_path / "models" / "stdc1_official-stdc1-64x128-fp16.onnx").is_file()
    result = CliRunner().invoke(app, ["export", "onnx", str(official_checkpoints["stdc1"]), "--precision", "int4"])
    assert result.exit_code == 1 and "--precision: export offers fp32 or fp16" in result.stderr
