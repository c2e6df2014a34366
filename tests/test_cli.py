import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from stdc_deploy.cli import app
from stdc_deploy.errors import CheckpointError


@pytest.fixture
def runner():
    return CliRunner()


def test_help_lists_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("export", "info", "demo", "infer", "bench"):
        assert name in result.stdout


def test_module_entry_point_runs_with_core_install():
    proc = subprocess.run([sys.executable, "-m", "stdc_deploy", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("stdc-deploy ")


def test_export_onnx_and_info(runner, official_checkpoints, tmp_path):
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", "onnx", str(official_checkpoints["stdc1"]), "-o", str(out),
                                 "--size", "64x128"])
    assert result.exit_code == 0, result.output
    assert "verified (ONNX Runtime fp32 vs PyTorch fp32) 1x19x64x128" in result.stdout
    assert "Wrote" in result.stdout and out.is_file()
    info = runner.invoke(app, ["info", str(out), "--json"])
    assert info.exit_code == 0
    assert '"arch": "stdc1"' in info.stdout and '"input_height": 64' in info.stdout
    args = ["export", "onnx", str(official_checkpoints["stdc1"]), "-o", str(out), "--size", "64x128"]
    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "m.onnx: exists (pass --overwrite" in again.stderr
    again = runner.invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0 and "Replaced" in again.stdout


def test_export_default_path_is_models_dir(runner, official_checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "onnx", str(official_checkpoints["stdc2"]), "--dynamic",
                                 "--size", "64x64"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "stdc2_official-stdc2-dynamic.onnx").is_file()


def test_info_on_checkpoint(runner, official_checkpoints):
    result = runner.invoke(app, ["info", str(official_checkpoints["stdc2"])])
    assert result.exit_code == 0
    assert "stdc2" in result.stdout and "official" in result.stdout


def _assert_one_line_error(result, *fragments):
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_bad_checkpoint_is_one_line(runner, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint at all")
    out = tmp_path / "out.onnx"
    result = runner.invoke(app, ["export", "onnx", str(bad), "-o", str(out)])
    _assert_one_line_error(result, "bad.pth")
    assert not out.exists()


def test_code_running_checkpoint_is_refused(runner, tmp_path):
    import os

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil)
    result = runner.invoke(app, ["info", str(evil)])
    _assert_one_line_error(result, "evil.pth", "refused")
    assert not marker.exists()


def test_mismatched_overrides(runner, official_checkpoints, tmp_path):
    result = runner.invoke(app, ["export", "onnx", str(official_checkpoints["stdc1"]), "-o",
                                 str(tmp_path / "x.onnx"), "--arch", "stdc2"])
    _assert_one_line_error(result, "checkpoint is stdc1, not stdc2")
    result = runner.invoke(app, ["export", "onnx", str(official_checkpoints["stdc1"]), "-o",
                                 str(tmp_path / "x.onnx"), "--num-classes", "11"])
    _assert_one_line_error(result, "has 19 classes, not 11")


@pytest.mark.parametrize("args, fragment", [
    (["--size", "big"], "--size 'big'"),
    (["--size", "1x16"], "each side must be within 2..8192"),
    (["--opset", "10"], "--opset: must be within 11..23, got 10"),
])
def test_bad_options(runner, official_checkpoints, tmp_path, args, fragment):
    result = runner.invoke(app, ["export", "onnx", str(official_checkpoints["stdc1"]), "-o",
                                 str(tmp_path / "x.onnx"), *args])
    _assert_one_line_error(result, fragment)


def test_missing_file(runner, tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "nope.pth")])
    _assert_one_line_error(result, "nope.pth: no such file")


def test_debug_shows_the_exception(runner, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 10)
    result = runner.invoke(app, ["--debug", "info", str(bad)])
    assert result.exit_code != 0
    assert isinstance(result.exception, CheckpointError)


def test_demo_runs_end_to_end(runner, tmp_path):
    result = runner.invoke(app, ["demo", "--size", "64x128", "--runs", "2", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "ONNX Runtime vs PyTorch: 1x19x64x128" in result.stdout
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["demo-stdc1-64x128.onnx", "demo-stdc1-frame.png", "demo-stdc1-overlay.png",
                     "demo-stdc1-random.pth"]


def test_export_refuses_non_finite_weights(runner, official_checkpoints, tmp_path):
    sd = torch.load(official_checkpoints["stdc1"], weights_only=True)
    for name in ("cp.conv_avg.conv.weight", "conv_out.conv_out.weight"):
        sd[name] = sd[name].clone()
        sd[name].view(-1)[0] = float("inf")
    bad = tmp_path / "inf.pth"
    torch.save(sd, bad)
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", "onnx", str(bad), "-o", str(out), "--size", "64x128"])
    _assert_one_line_error(result, "inf.pth", "NaN/Inf values in 2 tensor(s)", "cp.conv_avg.conv.weight")
    assert not out.exists()


def test_usage_lines_name_arguments(runner):
    for command in (["info"], ["verify"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
        assert result.exit_code == 0 and "ARTIFACT" in result.stdout and "{artifact" not in result.stdout
