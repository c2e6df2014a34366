"""`stdc verify`: artifacts and backends compared pair by pair, with exit codes."""

import json

import pytest
from typer.testing import CliRunner

from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.verify import ArtifactSpec, verify_artifacts
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.synthetic import random_model, synthetic_images
from stdc_deploy.parity import FP16_TOLERANCE, INT8_TOLERANCE, Tolerance, default_tolerance


@pytest.fixture(scope="module")
def artifacts(official_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    model, info = load_model(official_checkpoints["stdc1"])
    fp32 = export_onnx(model, root / "fp32.onnx", OnnxExportOptions(height=64, width=128), checkpoint=info).path
    fp16 = export_onnx(model, root / "fp16.onnx", OnnxExportOptions(height=64, width=128, precision="fp16"),
                       checkpoint=info).path
    other = export_onnx(random_model("stdc1", seed=9, aux_heads=False), root / "other.onnx",
                        OnnxExportOptions(height=64, width=128)).path
    return {"ckpt": official_checkpoints["stdc1"], "fp32": fp32, "fp16": fp16, "other": other}


def test_spec_parsing():
    assert ArtifactSpec.parse("m.onnx") == ArtifactSpec(ArtifactSpec.parse("m.onnx").path)
    spec = ArtifactSpec.parse("dir/m.onnx@openvino:bf16")
    assert (spec.path.name, spec.backend, spec.precision, spec.label) == ("m.onnx", "openvino", "bf16",
                                                                         "m.onnx@openvino:bf16")


def test_default_tolerance_follows_the_coarser_precision():
    assert default_tolerance("fp32", "fp32") == Tolerance()
    assert default_tolerance("fp32", "fp16") == FP16_TOLERANCE == default_tolerance("bf16", "fp32")
    assert default_tolerance("int8", "fp16") == INT8_TOLERANCE


def test_pairs(artifacts):
    specs = [ArtifactSpec(artifacts["fp32"]), ArtifactSpec(artifacts["ckpt"]), ArtifactSpec(artifacts["fp16"])]
    labels, size, pairs = verify_artifacts(specs, synthetic_images(2, 80, 160, seed=4))
    assert size == (64, 128) and len(pairs) == 3
    by_pair = {(p.a, p.b): p for p in pairs}
    same = by_pair[("fp32.onnx", "stdc1_official.pth")]
    assert same.passes and same.parity.max_abs_error < 1e-3 and same.tolerance == Tolerance()
    half = by_pair[("fp32.onnx", "fp16.onnx")]
    assert half.tolerance == FP16_TOLERANCE and half.passes and half.parity.max_abs_error > 1e-4


def test_cli_exit_codes(artifacts):
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(artifacts["fp32"]), f"{artifacts['fp32']}@openvino",
                             str(artifacts["ckpt"]), "--num-images", "2"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.count("pass") == 3 and "FAIL" not in ok.stdout
    bad = runner.invoke(app, ["verify", str(artifacts["fp32"]), str(artifacts["other"]), "--num-images", "1"])
    assert bad.exit_code == 1 and "1 of 1 pairs outside the limits: fp32.onnx vs other.onnx" in bad.stderr
    loose = runner.invoke(app, ["verify", str(artifacts["fp32"]), str(artifacts["other"]), "--num-images", "1",
                                "--atol", "1e9", "--min-agreement", "0"])
    assert loose.exit_code == 0
    one = runner.invoke(app, ["verify", str(artifacts["fp32"])])
    assert one.exit_code == 1 and "at least two artifacts" in one.stderr


def test_table_fits_80_columns_and_json(artifacts, tmp_path, monkeypatch):
    from stdc_deploy.cli.common import console

    monkeypatch.setattr(console, "_width", None)  # follow COLUMNS, as in a fresh process
    out = tmp_path / "v.json"
    args = ["verify", str(artifacts["fp32"]), str(artifacts["ckpt"]), str(artifacts["fp16"]), "--num-images", "1",
            "--json", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    table = result.stdout.split("limits:")[0]
    assert "…" not in result.stdout and max(map(len, table.splitlines())) <= 80
    data = json.loads(out.read_text())
    assert data["passes"] and data["input_size"] == [64, 128] and data["images"] == 1 and len(data["pairs"]) == 3
    pair = data["pairs"][0]
    assert (pair["a"], pair["b"]) == ("fp32.onnx", "stdc1_official.pth")
    assert {"max_abs_error", "mean_abs_error", "logit_abs_max", "label_agreement", "limits", "passes"} <= set(pair)
    assert pair["limits"]["max_abs_error"] == pytest.approx(1e-3 + 1e-4 * pair["logit_abs_max"])
    for p in data["pairs"]:  # the table's numbers are the file's
        assert f"{p['max_abs_error']:.2e}" in result.stdout and f"{p['label_agreement'] * 100:.3f}" in result.stdout
    assert "limits: max err <= 0.001 + 0.0001 x max|logit of A|, agreement >= 99.95%" in result.stdout
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "v.json: exists (pass --overwrite" in again.stderr
    assert CliRunner().invoke(app, [*args, "--overwrite"]).exit_code == 0
    to_stdout = CliRunner().invoke(app, [*args[:-1], "-"])
    assert to_stdout.exit_code == 0 and json.loads(to_stdout.stdout)["pairs"][1]["b"] == "fp16.onnx"


def test_json_output_is_checked_before_running(artifacts, tmp_path):
    result = CliRunner().invoke(app, ["verify", str(artifacts["fp32"]), str(artifacts["ckpt"]),
                                      "--json", str(artifacts["fp32"]), "--overwrite"])
    assert result.exit_code == 1 and "also an input" in result.stderr
    result = CliRunner().invoke(app, ["verify", str(artifacts["fp32"]), str(artifacts["ckpt"]),
                                      "--json", str(tmp_path)])
    assert result.exit_code == 1 and "is a folder" in result.stderr


def test_limits_are_range_checked(artifacts):
    for args in (["--num-images", "0"], ["--atol", "-1"], ["--min-agreement", "1.5"]):
        result = CliRunner().invoke(app, ["verify", str(artifacts["fp32"]), str(artifacts["ckpt"]), *args],
                                    env={"COLUMNS": "200"})
        assert result.exit_code == 2 and "than or equal to" in result.output, args


def test_brackets_in_error_output_print_literally(tmp_path):
    folder = tmp_path / "x[" / "bold]y"
    folder.mkdir(parents=True)
    missing = folder / "photo[draft].onnx"
    result = CliRunner().invoke(app, ["verify", str(missing), str(tmp_path / "b.onnx")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert f"{missing}: no such file" in line
