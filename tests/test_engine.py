"""TensorRT engines: everything around the build that runs without TensorRT, and the build
itself where TensorRT and a GPU exist."""

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from stdc_deploy.backends import open_backend
from stdc_deploy.core.artifacts import read_metadata
from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.core.discovery import find_default_model
from stdc_deploy.backends.tensorrt import (
    BuildOptions,
    EngineSidecar,
    check_compatible,
    parse_profile,
    read_sidecar,
    sidecar_path,
)
from stdc_deploy.export.fp16 import convert_onnx_fp16
from stdc_deploy.errors import InvalidValue, MissingDependencyError, StdcError
from stdc_deploy.core.artifacts import read_onnx_metadata
from stdc_deploy.export import OnnxExportOptions, export_onnx

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
SOURCES = Path(__file__).resolve().parents[1] / "stdc_deploy"


@pytest.fixture(scope="module")
def onnx_models(official_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    model, info = load_model(official_checkpoints["stdc1"])
    static = export_onnx(model, root / "static.onnx", OnnxExportOptions(height=64, width=128), checkpoint=info).path
    dynamic = export_onnx(model, root / "dynamic.onnx", OnnxExportOptions(height=64, width=128, dynamic=True),
                          checkpoint=info).path
    return {"static": static, "dynamic": dynamic}


def sidecar_for(onnx_path: Path, **changes) -> EngineSidecar:
    fields = dict(tensorrt_version="10.14.1", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                  precision="fp16", profiles=({"min": [1, 3, 64, 128], "opt": [1, 3, 64, 128], "max": [1, 3, 64, 128]},),
                  onnx_sha256="0" * 64, onnx_file=str(onnx_path), tool_version="0.1.0",
                  metadata=read_onnx_metadata(onnx_path).to_props())
    fields.update(changes)
    return EngineSidecar(**fields)


@pytest.mark.skipif(HAS_TRT, reason="checks the behaviour without TensorRT")
def test_build_engine_without_tensorrt_fails_cleanly(onnx_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["build-engine", str(onnx_models["static"]), "--precision", "fp16"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install --extra-index-url https://pypi.nvidia.com tensorrt" in lines[0]
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == [] and sorted(p.name for p in onnx_models["static"].parent.iterdir()) == [
        "dynamic.onnx", "static.onnx"]  # no engine, sidecar or FP16 ONNX left anywhere


@pytest.mark.parametrize("options, param, message", [
    (BuildOptions(precision="int8"), "calib", "precision int8 needs a folder of real images"),
    (BuildOptions(precision="bf8"), "precision", "choose fp32, fp16 or int8"),
    (BuildOptions(workspace_gb=0), "workspace_gb", "give GiB between 0 and 1024"),
    (BuildOptions(precision="int8", calib=Path("c"), num_images=0), "num_images", "must be >= 1"),
])
def test_build_options_validation(options, param, message):
    with pytest.raises(InvalidValue, match=message) as caught:
        options.validate()
    assert caught.value.param == param and "--" not in caught.value.message


def test_build_engine_cli_names_flags(onnx_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["build-engine", str(onnx_models["static"]), "--precision", "int8",
                                      "--calib-images", "5"])  # the second name of --num-images
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == ["error: --calib: precision int8 needs a folder of real images "
                                                  "for calibration"]
    result = CliRunner().invoke(app, ["build-engine", str(onnx_models["static"]), "--num-images", "0",
                                      "--precision", "int8", "--calib", "."])
    assert result.exit_code == 1 and "error: --num-images: must be >= 1, got 0" in result.stderr
    result = CliRunner().invoke(app, ["build-engine", str(onnx_models["static"]), "--workspace", "0"])
    assert result.exit_code == 1 and "error: --workspace: give GiB" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_build_engine_output_policy(onnx_models, tmp_path):
    """The engine, its sidecar and the intermediate ONNX are outputs; checked before any work."""
    source = onnx_models["static"]
    before = source.read_bytes()
    cases = [
        (["-o", str(source)], f"{source}: this output is also an input"),
        (["-o", str(tmp_path / "m.onnx")], "--output: TensorRT engine files need the suffix .engine or .plan"),
        (["-o", str(tmp_path)], "is a folder; give a file name"),
    ]
    (tmp_path / "old.engine.json").write_text("{}")
    cases.append((["-o", str(tmp_path / "old.engine")], "old.engine.json: exists (pass --overwrite to replace it)"))
    (tmp_path / "new.fp16.onnx").write_text("stale")
    cases.append((["-o", str(tmp_path / "new.engine"), "--precision", "fp16"],
                  "new.fp16.onnx: exists (pass --overwrite to replace it)"))
    for args, message in cases:
        result = CliRunner().invoke(app, ["build-engine", str(source), *args])
        assert result.exit_code == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, lines)
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.fp16.onnx", "old.engine.json"]


def test_profiles(onnx_models):
    static, dynamic = (read_onnx_metadata(onnx_models[k]) for k in ("static", "dynamic"))
    assert parse_profile(None, static).opt == (1, 3, 64, 128)
    with pytest.raises(StdcError, match="this ONNX is static"):
        parse_profile("1x64x128:1x64x128:2x64x128", static)
    assert parse_profile(None, dynamic).max == (1, 3, 64, 128)
    profile = parse_profile("1x256x512:2x512x1024:4x1024x2048", dynamic)
    assert (profile.min, profile.opt, profile.max) == ((1, 3, 256, 512), (2, 3, 512, 1024), (4, 3, 1024, 2048))
    assert parse_profile("64x128:512x1024:1024x2048", dynamic).min == (1, 3, 64, 128)
    with pytest.raises(StdcError, match="min <= opt <= max"):
        parse_profile("1x512x1024:1x256x512:1x1024x2048", dynamic)
    with pytest.raises(StdcError, match="expected MIN:OPT:MAX"):
        parse_profile("1x512x1024", dynamic)


def test_sidecar_roundtrip_and_compatibility(onnx_models, tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(StdcError, match="no sidecar m.engine.json beside this engine"):
        read_sidecar(engine)
    sidecar = sidecar_for(onnx_models["static"])
    sidecar_path(engine).write_text(sidecar.to_json())
    loaded = read_sidecar(engine)
    assert loaded == sidecar and json.loads(sidecar_path(engine).read_text())["format"] == 1
    meta = read_metadata(engine)  # engines describe themselves through their sidecar
    assert (meta.arch, meta.num_classes, meta.input_height) == ("stdc1", 19, 64)
    check_compatible(loaded, "10.14.1", "NVIDIA H100 80GB HBM3", "9.0", engine)
    with pytest.raises(StdcError, match=r"built with TensorRT 10\.14\.1, this machine has 11\.0\.0.*rebuild it here"):
        check_compatible(loaded, "11.0.0", "NVIDIA H100 80GB HBM3", "9.0", engine)
    with pytest.raises(StdcError, match=r"built for NVIDIA H100 80GB HBM3 \(sm 9\.0\), this GPU is NVIDIA L4 \(sm 8\.9\)"):
        check_compatible(loaded, "10.14.1", "NVIDIA L4", "8.9", engine)
    sidecar_path(engine).write_text("{broken")
    with pytest.raises(StdcError, match="unreadable engine sidecar"):
        read_sidecar(engine)


@pytest.mark.skipif(HAS_TRT, reason="checks the behaviour without TensorRT")
def test_engines_route_to_tensorrt_and_are_skipped_here(onnx_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("engines").mkdir()
    Path("models").mkdir()
    engine = Path("engines/m.engine")
    engine.write_bytes(b"plan")
    sidecar_path(engine).write_text(sidecar_for(onnx_models["static"]).to_json())
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        open_backend(engine)
    (Path("models") / "m.onnx").write_bytes(onnx_models["static"].read_bytes())
    choice = find_default_model()
    assert choice.path == Path("models/m.onnx")
    assert choice.skipped == ("skipped engines/m.engine: " + "TensorRT is not installed: pip install "
                              "--extra-index-url https://pypi.nvidia.com tensorrt (needs an NVIDIA GPU and driver; "
                              "see README, 'TensorRT')",)


def test_fp16_onnx_for_the_engine(onnx_models, tmp_path):
    result = convert_onnx_fp16(onnx_models["dynamic"], tmp_path / "m.fp16.onnx")
    target = result.path
    meta = read_onnx_metadata(target)
    assert meta.precision == "fp16" and meta.dynamic and result.metadata == meta
    assert len(result.parity) == 2 and all(p.label_agreement > 0.98 for p in result.parity)
    assert meta.opset == next(o.version for o in onnx.load(str(target)).opset_import if o.domain == "")
    proto = onnx.load(str(target))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)


def test_tensorrt_code_follows_the_current_api():
    """No removed or deprecated TensorRT API, no pycuda (TensorRT 10/11 rules)."""
    code = "\n".join(p.read_text() for p in sorted((SOURCES / "backends" / "tensorrt").glob("*.py")))
    code = re.sub(r'""".*?"""', "", code, flags=re.S)  # docstrings may name what is avoided
    for banned in ("EXPLICIT_BATCH", "BuilderFlag.FP16", "BuilderFlag.INT8", "int8_calibrator", "IInt8",
                   "pycuda", "get_binding", "execute_v2", "execute_async_v2", "max_workspace_size"):
        assert banned not in code, banned
    for required in ("execute_async_v3", "set_input_shape", "set_tensor_address", "build_serialized_network",
                     "set_memory_pool_limit", "create_optimization_profile", "create_timing_cache", "STRONGLY_TYPED"):
        assert required in code, required


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed")
def test_build_and_run_engine(onnx_models, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from stdc_deploy.backends.tensorrt import build_engine
    from stdc_deploy.preprocess import normalize
    from stdc_deploy.synthetic import synthetic_images
    from stdc_deploy.parity import compare_logits

    result = build_engine(onnx_models["dynamic"], tmp_path / "m.engine",
                          BuildOptions(shapes="1x64x128:1x64x128:2x128x256"))
    x = normalize(synthetic_images(2, 96, 160, seed=1))
    assert result.details["sidecar"].is_file()
    with open_backend(result.path) as trt_backend, open_backend(onnx_models["dynamic"], device="cpu") as ort_backend:
        assert trt_backend.name == "tensorrt"
        parity = compare_logits(ort_backend.infer(x), trt_backend.infer(x))
    assert parity.label_agreement > 0.999 and np.isfinite(parity.max_abs_error)


def test_onnxruntime_tensorrt_route(onnx_models):
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("the TensorRT execution provider is installed here")
    with pytest.raises(MissingDependencyError, match="TensorRT execution provider is not available"):
        open_backend(onnx_models["static"], backend="onnxruntime-trt", device="cuda")
