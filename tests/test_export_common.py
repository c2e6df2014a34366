"""What every exporter shares: size and output checks, metadata, verify-then-write, and the
exporter commands' output policy and options."""

import shutil

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.core.artifacts import read_metadata
from stdc_deploy.core.fileio import OutputExistsError
from stdc_deploy.errors import ExportError, InvalidValue, StdcError
from stdc_deploy.export import export_torchscript
from stdc_deploy.export.common import (
    MAX_SIDE,
    MIN_SIDE,
    build_metadata,
    check_export_output,
    check_input_size,
    write_verified,
)
from stdc_deploy.parity import Parity, Tolerance

SIZE = ["--size", "64x128"]


@pytest.fixture(scope="module")
def stdc1(official_checkpoints):
    return load_model(official_checkpoints["stdc1"])


@pytest.fixture
def checkpoint(official_checkpoints, tmp_path):
    """A private copy, so a test that would overwrite it cannot harm the others."""
    path = tmp_path / "self.pth"
    shutil.copyfile(official_checkpoints["stdc1"], path)
    return path


def one_line_error(result, fragment: str, exit_code: int = 1) -> None:
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


@pytest.mark.parametrize("height, width", [(MIN_SIDE - 1, 64), (64, MAX_SIDE + 1)])
def test_input_size_limits(height, width):
    with pytest.raises(InvalidValue, match=f"size: {height}x{width} is out of range") as caught:
        check_input_size(height, width)
    assert caught.value.param == "size"
    check_input_size(MIN_SIDE, MAX_SIDE)


def test_output_checks(tmp_path):
    source = tmp_path / "in.onnx"
    source.write_bytes(b"model")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StdcError, match="this output is also an input"):
        check_export_output(source, "onnx", [source])
    with pytest.raises(StdcError, match="is a folder"):
        check_export_output(tmp_path, "onnx")
    with pytest.raises(StdcError, match="is a file, not a folder"):
        check_export_output(tmp_path / "file" / "m.onnx", "onnx")
    with pytest.raises(InvalidValue, match="output: TorchScript files need the suffix .ts or .torchscript"):
        check_export_output(tmp_path / "m.onnx", "torchscript")
    with pytest.raises(OutputExistsError):
        check_export_output(source, "onnx", overwrite=False)
    assert check_export_output(source, "onnx") == source  # a library caller replaces by default
    assert check_export_output(tmp_path / "m.PT2", "pt2").name == "m.PT2"


def test_build_metadata(stdc1):
    model, info = stdc1
    static = build_metadata(model, info, height=64, width=128, batch=2, dynamic=False, opset=20,
                            versions={"onnx": "1"})
    assert (static.input_height, static.input_width, static.batch, static.opset) == (64, 128, 2, 20)
    assert static.checkpoint_sha256 == info.sha256 and static.source_format == "official"
    assert set(static.versions) == {"stdc_deploy", "torch", "onnx"}
    dynamic = build_metadata(model, None, height=64, width=128, batch=None, dynamic=True, precision="fp16",
                             class_names=[f"c{i}" for i in range(19)])
    assert dynamic.input_height is None and dynamic.batch is None
    assert (dynamic.opt_height, dynamic.opt_width) == (64, 128)
    assert dynamic.source_format == "none" and dynamic.class_names[3] == "c3" and dynamic.precision == "fp16"


def _parity(error: float, agreement: float = 1.0) -> Parity:
    return Parity((1, 2, 4, 4), error, error / 2, 10.0, agreement)


def test_write_verified_writes_only_what_verifies(tmp_path):
    target = tmp_path / "a.onnx"
    target.write_bytes(b"previous")
    seen = []

    def save(tmp):
        assert tmp.parent.parent == tmp_path and tmp.parent.name.startswith(".")  # a hidden folder beside it
        tmp.write_bytes(b"new")

    def compare(tmp):
        seen.append(tmp.read_bytes())  # the comparison runs the file as written
        return [_parity(1e-4), _parity(0.5)]

    with pytest.raises(ExportError) as caught:
        write_verified(target, save, compare, Tolerance(), what="X vs Y")
    message = str(caught.value)
    assert f"verification failed, {target} not written: X vs Y at 1x2x4x4: max abs error 5.00e-01" in message
    assert "limits: max abs error <= 2.00e-03" in message
    assert seen == [b"new"] and target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["a.onnx"]

    parity = write_verified(target, save, lambda tmp: [_parity(1e-4)], Tolerance(), what="X vs Y")
    assert len(parity) == 1 and target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.onnx"]
    assert write_verified(tmp_path / "b.onnx", save, lambda tmp: [_parity(9.0, 0.1)], None, what="measured")  # no gate
    assert write_verified(tmp_path / "c.onnx", save, None, Tolerance(), what="unverified") == ()


# --- export onnx: output policy and options ---

def test_export_onnx_refuses_to_overwrite_its_checkpoint(runner, checkpoint):
    before = checkpoint.read_bytes()
    result = runner.invoke(app, ["export", "onnx", str(checkpoint), "-o", str(checkpoint), *SIZE])
    one_line_error(result, f"{checkpoint}: this output is also an input")
    assert checkpoint.read_bytes() == before and [p.name for p in checkpoint.parent.iterdir()] == ["self.pth"]


def test_existing_output_needs_overwrite(runner, checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"unrelated")
    result = runner.invoke(app, ["export", "onnx", str(checkpoint), "-o", str(out), *SIZE])
    one_line_error(result, f"{out}: exists (pass --overwrite to replace it)")
    assert out.read_bytes() == b"unrelated" and "Loaded" not in result.stdout  # refused before loading
    result = runner.invoke(app, ["export", "onnx", str(checkpoint), "-o", str(out), *SIZE, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert f"Replaced {out}" in result.stdout and "opset 20" in result.stdout
    assert read_metadata(out).arch == "stdc1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "self.pth"]


@pytest.mark.parametrize("command", ["onnx", "torchscript", "pt2"])
@pytest.mark.parametrize("where, message", [("folder", "is a folder; give a file name"),
                                            ("file/m.out", "is a file, not a folder")])
def test_output_folder_or_under_a_file(runner, checkpoint, tmp_path, command, where, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["export", command, str(checkpoint), "-o", str(tmp_path / where), *SIZE])
    one_line_error(result, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder", "self.pth"]
    assert not any((tmp_path / "folder").iterdir())


@pytest.mark.parametrize("command, name, message", [
    ("torchscript", "x.onnx", "x.onnx: --output: TorchScript files need the suffix .ts or .torchscript"),
    ("pt2", "x.ts", "x.ts: --output: torch.export program files need the suffix .pt2"),
    ("onnx", "x.pt2", "x.pt2: --output: ONNX files need the suffix .onnx"),
])
def test_output_suffix_must_match_the_format(runner, checkpoint, tmp_path, command, name, message):
    result = runner.invoke(app, ["export", command, str(checkpoint), "-o", str(tmp_path / name), *SIZE])
    one_line_error(result, message)
    assert [p.name for p in tmp_path.iterdir()] == ["self.pth"]


@pytest.mark.parametrize("opset", ["27", "99", "10"])
def test_opset_out_of_range_is_one_line(runner, checkpoint, tmp_path, opset):
    result = runner.invoke(app, ["export", "onnx", str(checkpoint), "-o", str(tmp_path / "m.onnx"), *SIZE,
                                 "--opset", opset])
    one_line_error(result, f"--opset: must be within 11..23, got {opset}")
    assert [p.name for p in tmp_path.iterdir()] == ["self.pth"]


def test_export_onnx_with_opset_records_the_files_opset(runner, checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    result = runner.invoke(app, ["export", "onnx", str(checkpoint), "-o", str(out), *SIZE, "--opset", "22"])
    assert result.exit_code == 0, result.output
    imported = {o.domain: o.version for o in onnx.load(str(out)).opset_import}
    assert imported[""] == read_metadata(out).opset == 22 and "opset 22" in result.stdout


# --- TorchScript and pt2: the same tolerance options ---

def test_torchscript_tolerance_options(runner, checkpoint, tmp_path):
    out = tmp_path / "m.ts"
    result = runner.invoke(app, ["export", "torchscript", str(checkpoint), "-o", str(out), *SIZE,
                                 "--min-agreement", "1.1"])
    assert result.exit_code == 2 and "--min-agreement" in result.output and not out.exists()
    # the traced program reproduces eager PyTorch bit for bit, so even zero error passes
    result = runner.invoke(app, ["export", "torchscript", str(checkpoint), "-o", str(out), *SIZE,
                                 "--atol", "0", "--rtol", "0", "--min-agreement", "1.0"])
    assert result.exit_code == 0, result.output
    assert "verified (TorchScript vs PyTorch) 2x19x64x128: max abs error 0.00e+00" in result.stdout
    assert read_metadata(out).opt_height == 64
    again = runner.invoke(app, ["export", "torchscript", str(checkpoint), "-o", str(out), *SIZE])
    one_line_error(again, "exists (pass --overwrite to replace it)")


def test_torchscript_failed_verification_keeps_the_old_file(stdc1, tmp_path):
    model, info = stdc1
    out = tmp_path / "m.ts"
    out.write_bytes(b"previous")
    with pytest.raises(ExportError, match=r"m\.ts not written: TorchScript vs PyTorch at .*agreement >= 110"):
        export_torchscript(model, out, 64, 128, checkpoint=info, tolerance=Tolerance(min_label_agreement=1.1))
    assert out.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["m.ts"]
    with pytest.raises(InvalidValue, match="size: 1x128 is out of range"):
        export_torchscript(model, tmp_path / "n.ts", 1, 128)


def test_pt2_takes_a_tolerance(stdc1, tmp_path):
    from stdc_deploy.export.pt2 import export_pt2

    model, info = stdc1
    with pytest.raises(ExportError, match=r"m\.pt2 not written: torch\.export vs PyTorch at .*agreement >= 110"):
        export_pt2(model, tmp_path / "m.pt2", 64, 128, checkpoint=info, tolerance=Tolerance(min_label_agreement=1.1))
    assert list(tmp_path.iterdir()) == []


def test_export_results_share_one_type(stdc1, tmp_path):
    from stdc_deploy.export import ExportResult, OnnxExportOptions, export_onnx

    model, info = stdc1
    ts = export_torchscript(model, tmp_path / "m.ts", 64, 128, checkpoint=info)
    onnx_result = export_onnx(model, tmp_path / "m.onnx", OnnxExportOptions(height=64, width=128), checkpoint=info)
    for result in (ts, onnx_result):
        assert isinstance(result, ExportResult) and result.size_bytes == result.path.stat().st_size
        assert result.parity and result.seconds > 0 and result.export_seconds == result.seconds
    assert onnx_result.details["opset"] == 20 and onnx_result.metadata.opset == 20
    assert [p.label_agreement for p in onnx_result.details["tail_parity"]] == [1.0]  # as precision auto runs it
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        assert np.allclose(torch.jit.load(str(ts.path))(x).numpy(), model(x).numpy())


@pytest.fixture
def runner():
    return CliRunner()
