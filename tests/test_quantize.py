"""`stdc quantize`: INT8 Q/DQ ONNX for TensorRT and the CPU, calibrated on images, measured."""

import cv2
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from stdc_deploy.backends import open_backend
from stdc_deploy.core.artifacts import read_metadata
from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.errors import InvalidValue, StdcError
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.export.quantize import QuantizeOptions, calibration_images, int8_details, quantize_onnx
from stdc_deploy.preprocess import normalize
from stdc_deploy.synthetic import synthetic_images


@pytest.fixture(scope="module")
def fp32_onnx(official_checkpoints, tmp_path_factory):
    model, info = load_model(official_checkpoints["stdc1"])
    path = tmp_path_factory.mktemp("q") / "m.onnx"
    export_onnx(model, path, OnnxExportOptions(height=64, width=128), checkpoint=info)
    return path


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    for i, image in enumerate(synthetic_images(12, 96, 192, seed=50)):
        cv2.imwrite(str(folder / f"{i:02d}.png"), image)
    return folder


def zero_points(path):
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    points = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    return proto, points


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_quantize_targets(fp32_onnx, calib_dir, tmp_path, target):
    out = tmp_path / f"int8-{target}.onnx"
    result = quantize_onnx(fp32_onnx, calib_dir, out, QuantizeOptions(method="minmax", target=target, num_images=8))
    facts = result.details
    assert facts["calibration_images"] == 8 and facts["holdout_images"] == 2 and len(result.parity) == 2
    assert 0.0 < facts["label_agreement"] <= 1.0 and facts["snr_db"] > 3
    assert result.metadata.precision == "int8" and result.size_bytes == out.stat().st_size
    proto, points = zero_points(out)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert points and all(p.dtype == (np.int8 if target == "tensorrt" else np.uint8) for p in points)
    if target == "tensorrt":  # symmetric: zero point 0 everywhere
        assert all(int(np.abs(p).max()) == 0 for p in points)
    weights_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                  and any(i.name == n.input[0] for i in proto.graph.initializer)]
    per_channel = [n for n in weights_dq if any(a.name == "axis" for a in n.attribute)]
    assert per_channel  # per-channel weight scales
    meta = read_metadata(out)
    assert meta.precision == "int8" and meta.arch == "stdc1" and meta.input_height == 64
    facts = int8_details(out)
    assert {k: facts[k] for k in ("int8_target", "int8_method", "int8_calibration_images", "int8_holdout_images")} == {
        "int8_target": target, "int8_method": "minmax", "int8_calibration_images": "8", "int8_holdout_images": "2"}
    x = normalize(synthetic_images(1, 64, 128, seed=3))
    with open_backend(out, backend="onnxruntime", device="cpu") as backend:
        assert backend.infer(x).shape == (1, 19, 64, 128)
        assert backend.effective_precision == "int8"


def test_calibration_split_and_errors(calib_dir, tmp_path):
    calib, holdout, skipped = calibration_images(calib_dir, QuantizeOptions(num_images=100, holdout=16))
    assert len(holdout) == 2 and len(calib) == 10 and not set(calib) & set(holdout) and not skipped
    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):
        cv2.imwrite(str(few / f"{i}.png"), synthetic_images(1, 32, 32, seed=i)[0])
    (few / "bad.png").write_bytes(b"nope")
    with pytest.raises(StdcError, match="at least 8 readable images; found 3 readable, 1 unreadable"):
        calibration_images(few, QuantizeOptions())
    with pytest.raises(StdcError, match="no such folder"):
        calibration_images(tmp_path / "absent", QuantizeOptions())
    with pytest.raises(InvalidValue, match="method: 'kl' does not apply to target tensorrt: choose one of minmax, entropy"):
        QuantizeOptions(method="kl").validate()
    with pytest.raises(InvalidValue, match="num_images: must be >= 1"):
        QuantizeOptions(num_images=0).validate()


def test_cli_quantize(fp32_onnx, calib_dir, tmp_path):
    (calib_dir / "zz_broken.png").write_bytes(b"broken")
    try:
        out = tmp_path / "q.onnx"
        result = CliRunner().invoke(app, ["quantize", str(fp32_onnx), "--calib", str(calib_dir), "-o", str(out),
                                          "--method", "minmax", "--target", "cpu", "--num-images", "6"])
        assert result.exit_code == 0, result.output
        assert "calibrated on 6 images (minmax)" in result.stdout and "label agreement" in result.stdout
        assert "skipped" in result.stderr and "zz_broken.png" in result.stderr
        assert out.is_file() and [p.name for p in tmp_path.iterdir()] == ["q.onnx"]  # no scratch files left
        args = ["quantize", str(fp32_onnx), "--calib", str(calib_dir), "-o", str(out), "--method", "minmax",
                "--num-images", "6"]
        before = out.read_bytes()
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 1 and f"{out}: exists (pass --overwrite to replace it)" in refused.stderr
        assert out.read_bytes() == before
        replaced = CliRunner().invoke(app, [*args, "--overwrite"])
        assert replaced.exit_code == 0, replaced.output
        assert f"Replaced {out}" in replaced.stdout and out.read_bytes() != before  # now the tensorrt target
        again = CliRunner().invoke(app, ["quantize", str(out), "--calib", str(calib_dir)])
        assert again.exit_code == 1 and "quantize an FP32 export (this one is int8)" in again.stderr
    finally:
        (calib_dir / "zz_broken.png").unlink()


def test_cli_quantize_refuses_to_overwrite_its_input(fp32_onnx, calib_dir, tmp_path):
    model = tmp_path / "q.onnx"
    model.write_bytes(fp32_onnx.read_bytes())
    before = model.read_bytes()
    result = CliRunner().invoke(app, ["quantize", str(model), "--calib", str(calib_dir), "-o", str(model)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [f"error: {model}: this output is also an input; choose another "
                                                  "output path"]
    assert model.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["q.onnx"]


@pytest.mark.parametrize("name, message", [("out.ts", "out.ts: --output: ONNX files need the suffix .onnx"),
                                           ("folder", "is a folder; give a file name"),
                                           ("file.txt/q.onnx", "is a file, not a folder")])
def test_cli_quantize_bad_output_is_one_line(fp32_onnx, calib_dir, tmp_path, name, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.txt").write_text("x")
    result = CliRunner().invoke(app, ["quantize", str(fp32_onnx), "--calib", str(calib_dir),
                                      "-o", str(tmp_path / name)])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]
    assert not any((tmp_path / "folder").iterdir())


def activation_scales(path) -> np.ndarray:
    proto = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    return np.concatenate([inits[n.input[1]].ravel() for n in proto.graph.node
                           if n.op_type == "QuantizeLinear" and n.input[0] not in inits])


def test_calibration_methods_take_effect(fp32_onnx, calib_dir, tmp_path):
    scales = {}
    for method in ("minmax", "percentile"):
        out = tmp_path / f"{method}.onnx"
        result = quantize_onnx(fp32_onnx, calib_dir, out, QuantizeOptions(method=method, target="cpu", num_images=8))
        assert result.details["method"] == method == int8_details(out)["int8_method"]
        scales[method] = activation_scales(out)
    assert not np.array_equal(scales["minmax"], scales["percentile"])
    assert QuantizeOptions(target="cpu").calibration_method == "minmax"
    with pytest.raises(InvalidValue, match="method: 'nncf' does not apply to target cpu"):
        QuantizeOptions(method="nncf", target="cpu").validate()


def test_entropy_calibration_is_not_minmax(tmp_path):
    """ONNX Runtime's quantize_static gives its entropy calibrator as many histogram bins as
    quantized bins, so its "entropy" is minmax; here the entropy range clips heavy tails."""
    from onnx import TensorProto, helper, numpy_helper

    from stdc_deploy.export.quantize import _quantize_ort

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["out"])],
        "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 16, 16])], [weight])
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    batches = [rng.standard_t(2, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]  # heavy tails
    scales = {}
    for method in ("minmax", "entropy"):
        out = tmp_path / f"{method}.onnx"
        _quantize_ort(path, out, lambda paths: ({"input": b} for b in batches), [None] * 8, method, symmetric=False)
        scales[method] = activation_scales(out)
    assert scales["entropy"].shape == scales["minmax"].shape
    assert scales["entropy"][0] < 0.9 * scales["minmax"][0]  # the input's range: tails clipped


def test_int8_metadata_records_accuracy_and_source(fp32_onnx, calib_dir, tmp_path):
    from stdc_deploy.export.quantize import file_sha256

    out = tmp_path / "q.onnx"
    result = quantize_onnx(fp32_onnx, calib_dir, out, QuantizeOptions(target="cpu", num_images=8))
    facts = int8_details(out)
    assert float(facts["int8_label_agreement"]) == pytest.approx(result.details["label_agreement"], abs=1e-6)
    assert float(facts["int8_snr_db"]) == pytest.approx(result.details["snr_db"], abs=1e-3)
    assert facts["int8_source_sha256"] == file_sha256(fp32_onnx) and facts["int8_source"] == fp32_onnx.name


def test_openvino_target_with_nncf(fp32_onnx, calib_dir, tmp_path):
    pytest.importorskip("nncf", reason="target openvino needs nncf")
    pytest.importorskip("openvino")
    out = tmp_path / "ov.onnx"
    result = quantize_onnx(fp32_onnx, calib_dir, out, QuantizeOptions(target="openvino", num_images=8))
    assert result.details["method"] == "nncf" and result.metadata.precision == "int8"
    assert result.details["snr_db"] > 3 and int8_details(out)["int8_target"] == "openvino"
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load(str(out)).graph.node}
    with open_backend(out, backend="openvino", device="cpu") as b:
        x = normalize(synthetic_images(1, 64, 128, seed=4))
        assert b.infer(x).shape == (1, 19, 64, 128)
