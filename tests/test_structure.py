"""Behaviour the package layout promises: per-pair verification limits, lazy optional
runtimes, the default-model rule, and the output policy's building blocks."""

import os

import pytest

from stdc_deploy.checkpoint import load_model
from stdc_deploy.core.fileio import OutputExistsError, atomic_output, check_outputs
from stdc_deploy.errors import StdcError
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.parity import FP16_TOLERANCE
from stdc_deploy.synthetic import synthetic_images
from stdc_deploy.verify import ArtifactSpec, verify_artifacts


@pytest.fixture(scope="module")
def fp32_and_fp16(official_checkpoints, tmp_path_factory):
    model, info = load_model(official_checkpoints["stdc1"])
    root = tmp_path_factory.mktemp("structure")
    paths = {}
    for precision in ("fp32", "fp16"):
        paths[precision] = export_onnx(model, root / f"{precision}.onnx",
                                       OnnxExportOptions(height=64, width=128, precision=precision),
                                       checkpoint=info).path
    return paths


def test_verify_overrides_start_from_the_pairs_own_limits(fp32_and_fp16):
    specs = [ArtifactSpec(fp32_and_fp16["fp32"]), ArtifactSpec(fp32_and_fp16["fp16"])]
    images = synthetic_images(1, 64, 128, seed=1)
    _, _, pairs = verify_artifacts(specs, images, overrides={"min_label_agreement": 0.97})
    (pair,) = pairs
    assert pair.tolerance.atol == FP16_TOLERANCE.atol and pair.tolerance.rtol == FP16_TOLERANCE.rtol
    assert pair.tolerance.min_label_agreement == 0.97
    assert pair.passes


def test_default_model_is_never_reduced_precision(fp32_and_fp16, tmp_path, monkeypatch):
    from stdc_deploy.core.discovery import find_default_model

    models = tmp_path / "models"
    models.mkdir()
    os.link(fp32_and_fp16["fp16"], models / "m-fp16.onnx")
    with pytest.raises(StdcError, match="only reduced-precision exports"):
        find_default_model(models, tmp_path / "engines")
    os.link(fp32_and_fp16["fp32"], models / "m.onnx")
    os.utime(models / "m-fp16.onnx")  # the FP16 file is the newest
    choice = find_default_model(models, tmp_path / "engines")
    assert choice.path == models / "m.onnx"
    assert any("m-fp16.onnx" in note and "fp16" in note for note in choice.skipped)


def test_output_policy(tmp_path):
    source = tmp_path / "model.pth"
    source.write_bytes(b"weights")
    with pytest.raises(StdcError, match="also an input"):
        check_outputs([source], [source], overwrite=True)
    with pytest.raises(OutputExistsError):
        check_outputs([source])
    check_outputs([source], overwrite=True)
    with pytest.raises(StdcError, match="is a folder"):
        check_outputs([tmp_path])
    with pytest.raises(StdcError, match="is a file"):
        check_outputs([source / "x.onnx"])
    check_outputs([tmp_path / "new" / "deeper" / "x.onnx"])  # folders to be created are fine


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_importing_the_package_changes_no_process_state():
    import subprocess
    import sys

    code = ("import os\nbefore = os.umask(0o027)\nimport stdc_deploy, stdc_deploy.core.fileio, stdc_deploy.cli\n"
            "print(oct(os.umask(0)))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0o27"
