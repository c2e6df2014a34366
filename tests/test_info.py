"""`stdc info`: any ONNX file (ours or not), archives, engines and checkpoints; literal paths."""

import json
import zipfile

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from stdc_deploy.backends.tensorrt.sidecar import EngineSidecar, sidecar_path
from stdc_deploy.cli import app
from stdc_deploy.core.metadata import METADATA_FILE, ArtifactMetadata

OURS = ArtifactMetadata(arch="stdc1", num_classes=19, input_height=64, input_width=128, opset=18)


def tiny_onnx(path, props=None):
    """A two-node graph as another tool would write it: a dim param, two op types, a foreign opset."""
    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT16, ["N", 3, 8, 8])
    nodes = [helper.make_node("Relu", ["pixels"], ["r"]), helper.make_node("Cast", ["r"], ["scores"], to=10)]
    graph = helper.make_graph(nodes, "foreign", [x], [y])
    model = helper.make_model(graph, producer_name="someone-else", producer_version="7.1",
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    for key, value in (props or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


@pytest.fixture
def runner():
    return CliRunner()


def test_foreign_onnx_is_described_without_our_metadata(runner, tmp_path):
    path = tiny_onnx(tmp_path / "foreign.onnx", {"author": "x"})
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    for fragment in ("no stdc-deploy metadata", "pixels: float32 [N, 3, 8, 8]", "scores: float16 [N, 3, 8, 8]",
                     "ai.onnx 17, com.example 1", "someone-else 7.1", "2 (Relu 1, Cast 1)", "author"):
        assert fragment in result.stdout, fragment
    data = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert data["kind"] == "onnx" and data["metadata"] is None and data["file_bytes"] == path.stat().st_size
    assert data["onnx"]["inputs"] == [{"name": "pixels", "dtype": "float32", "shape": ["N", 3, 8, 8]}]
    assert data["onnx"]["op_counts"] == {"Relu": 1, "Cast": 1} and data["onnx"]["ir_version"] > 0


def test_our_onnx_shows_graph_and_metadata(runner, tmp_path):
    path = tiny_onnx(tmp_path / "ours.onnx", OURS.to_props())
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "no stdc-deploy metadata" not in result.stdout
    assert "stdc1" in result.stdout and "pixels: float32" in result.stdout
    data = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    assert data["metadata"]["arch"] == "stdc1" and data["metadata"]["input_height"] == 64
    assert len(data["metadata"]["class_names"]) == 19


def test_damaged_metadata_is_named(runner, tmp_path):
    path = tiny_onnx(tmp_path / "half.onnx", {"arch": "stdc1"})  # num_classes missing
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0 and "unusable stdc-deploy metadata" in result.stdout


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"\x00garbage\xff" * 4, "not a readable ONNX")])
def test_empty_or_garbage_onnx(runner, tmp_path, content, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 1 and message in result.stderr and "Traceback" not in result.output


def test_archive_metadata(runner, tmp_path):
    path = tmp_path / "m.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"m/extra/{METADATA_FILE}", json.dumps(OURS.to_props()))
    result = runner.invoke(app, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "pt2" and data["metadata"]["arch"] == "stdc1"
    assert "torch.export program" in runner.invoke(app, ["info", str(path)]).stdout


def test_engine_sidecar(runner, tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    sidecar = EngineSidecar(tensorrt_version="10.9", gpu_name="Some GPU", compute_capability="8.9", precision="fp16",
                            profiles=({"min": [1, 3, 64, 128]},), onnx_sha256="0" * 64, onnx_file="m.onnx",
                            tool_version="0", metadata=OURS.to_props())
    sidecar_path(engine).write_text(sidecar.to_json())
    result = runner.invoke(app, ["info", str(engine)])
    assert result.exit_code == 0, result.output
    assert "10.9" in result.stdout and "Some GPU" in result.stdout and "stdc1" in result.stdout


def test_brackets_in_paths_print_literally(runner, tmp_path):
    folder = tmp_path / "x[" / "bold]y"  # the path reads .../x[/bold]y
    folder.mkdir(parents=True)
    assert "[/bold]" in str(folder)
    path = tiny_onnx(folder / "photo[draft].onnx")
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path} (ONNX)" in result.stdout
    missing = runner.invoke(app, ["info", str(folder / "ckpt[/tmp]x.pth")])
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert missing.stderr.strip() == f"error: {folder / 'ckpt[/tmp]x.pth'}: no such file"


def test_non_finite_checkpoint_is_refused(runner, official_checkpoints, tmp_path):
    sd = torch.load(official_checkpoints["stdc1"], weights_only=True)
    sd["ffm.conv1.weight"] = sd["ffm.conv1.weight"].clone()
    sd["ffm.conv1.weight"].view(-1)[3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert "nan.pth" in line and "NaN/Inf" in line and "ffm.conv1.weight" in line


def test_usage_line_names_the_argument(runner):
    result = runner.invoke(app, ["info", "--help"], env={"COLUMNS": "100"})
    assert "ARTIFACT" in result.stdout and "{artifact}" not in result.stdout
