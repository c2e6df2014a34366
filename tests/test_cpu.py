"""The CPU path: feature detection, `--precision auto`'s rule, threads."""

import shutil
import subprocess
import sys

import cv2
import onnx
import pytest
from typer.testing import CliRunner

from stdc_deploy.backends import available_backends, open_backend
from stdc_deploy.backends.cpu import CpuFeatures, choose_cpu_path, cpu_features, read_cpu_flags
from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.errors import InvalidValue
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.export.quantize import QuantizeOptions, int8_details, quantize_onnx
from stdc_deploy.preprocess import normalize
from stdc_deploy.synthetic import synthetic_images

HAS_OPENVINO = "openvino" in available_backends("onnx")
VNNI_BF16 = CpuFeatures(frozenset({"avx512f", "avx512_vnni", "avx512_bf16"}), ("FP32", "BF16", "INT8"), 2)
PLAIN = CpuFeatures(frozenset({"avx2", "fma"}), ("FP32",), 2)


@pytest.fixture(scope="module")
def models(official_checkpoints, tmp_path_factory):
    """An FP32 export with an INT8 file quantized from it beside it, and an unrelated INT8 file."""
    folder = tmp_path_factory.mktemp("cpu")
    model, info = load_model(official_checkpoints["stdc1"])
    fp32 = folder / "m.onnx"
    export_onnx(model, fp32, OnnxExportOptions(height=64, width=128), checkpoint=info)
    calib = tmp_path_factory.mktemp("calib")
    for i, image in enumerate(synthetic_images(10, 64, 128, seed=3)):
        cv2.imwrite(str(calib / f"{i}.png"), image)
    int8 = folder / "m-int8-cpu.onnx"
    quantize_onnx(fp32, calib, int8, QuantizeOptions(target="cpu", num_images=8))
    other = tmp_path_factory.mktemp("other") / "o.onnx"
    export_onnx(model, other, OnnxExportOptions(height=64, width=96), checkpoint=info)
    quantize_onnx(other, calib, folder / "o-int8-cpu.onnx", QuantizeOptions(target="cpu", num_images=8))
    return {"fp32": fp32, "int8": int8, "agreement": float(int8_details(int8)["int8_label_agreement"])}


def test_flags_from_cpuinfo():
    text = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_vnni avx512_bf16\nprocessor\t: 1\nflags\t: fpu\n"
    flags = read_cpu_flags(text)
    assert {"avx512_vnni", "avx512_bf16"} <= flags and "fpu" in flags
    assert read_cpu_flags("no flags here") == frozenset()
    assert VNNI_BF16.int8_dot == "VNNI" and VNNI_BF16.native_bf16 == "avx512_bf16"
    assert PLAIN.int8_dot is None and PLAIN.native_bf16 is None
    amx = CpuFeatures(frozenset({"amx_int8", "amx_bf16", "avx512_vnni"}), (), 4)
    assert amx.int8_dot == "AMX" and amx.native_bf16 == "AMX" and "AMX" in amx.describe()
    # OpenVINO's own view wins when it says no bf16
    assert CpuFeatures(frozenset({"avx512_bf16"}), ("FP32",), 1).native_bf16 is None
    assert cpu_features().cores >= 1


def test_auto_takes_a_verified_int8_file_quantized_from_the_model(models):
    agreement = models["agreement"]
    chosen = choose_cpu_path(models["fp32"], device="cpu", min_agreement=agreement, features=VNNI_BF16)
    # a --target cpu file runs in ONNX Runtime (faster for it than OpenVINO), its float layers FP32
    assert (chosen.artifact, chosen.backend, chosen.precision) == (models["int8"], "onnxruntime", "fp32")
    vnni_only = CpuFeatures(frozenset({"avx512_vnni"}), ("FP32", "INT8"), 2)
    no_bf16 = choose_cpu_path(models["fp32"], device="cpu", min_agreement=agreement, features=vnni_only)
    assert (no_bf16.artifact, no_bf16.precision) == (models["int8"], "fp32")
    assert "INT8" in chosen.label and "VNNI" in chosen.reason and "m.onnx" in chosen.reason
    assert "--precision fp32" in chosen.describe()
    # below the limit: not taken
    strict = choose_cpu_path(models["fp32"], device="cpu", min_agreement=min(1.0, agreement + 1e-3),
                             features=VNNI_BF16)
    assert strict.artifact == models["fp32"]
    assert strict.label == ("OpenVINO BF16" if HAS_OPENVINO else "FP32")
    # no VNNI: no INT8; no bf16: FP32
    plain = choose_cpu_path(models["fp32"], device="cpu", min_agreement=0.0, features=PLAIN)
    assert (plain.artifact, plain.precision, plain.backend) == (models["fp32"], "fp32", None)
    assert "no VNNI" in plain.reason and "no native bf16" in plain.reason
    # a named INT8 file runs as named, with its recorded agreement
    named = choose_cpu_path(models["int8"], device="cpu", features=PLAIN)
    assert named.artifact == models["int8"] and f"{agreement:.2%}" in named.reason
    assert choose_cpu_path(models["fp32"], device="cuda").precision == "fp32"


def test_auto_runs_nncf_files_in_openvino(models, tmp_path):
    pytest.importorskip("nncf", reason="target openvino needs nncf")
    if not HAS_OPENVINO:
        pytest.skip("OpenVINO is not installed")
    fp32 = tmp_path / "m.onnx"
    shutil.copy(models["fp32"], fp32)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, image in enumerate(synthetic_images(10, 64, 128, seed=3)):
        cv2.imwrite(str(calib / f"{i}.png"), image)
    shutil.copy(models["int8"], tmp_path / "m-int8-cpu.onnx")
    nncf_file = tmp_path / "m-int8-openvino.onnx"
    quantize_onnx(fp32, calib, nncf_file, QuantizeOptions(target="openvino", num_images=8))
    facts = int8_details(nncf_file)
    limit = min(float(facts["int8_label_agreement"]), models["agreement"])
    chosen = choose_cpu_path(fp32, device="cpu", min_agreement=limit, features=VNNI_BF16)
    assert chosen.artifact == nncf_file and chosen.backend == "openvino"  # NNCF files first, in OpenVINO
    bf16 = facts.get("int8_bf16_label_agreement")  # measured where this CPU computes bf16 natively
    assert chosen.precision == ("bf16" if bf16 is not None and float(bf16) >= limit else "fp32")
    plain = choose_cpu_path(fp32, device="cpu", min_agreement=limit,
                            features=CpuFeatures(frozenset({"avx512_vnni"}), ("FP32", "INT8"), 2))
    assert (plain.artifact, plain.backend, plain.precision, plain.label) == (
        nncf_file, "openvino", "fp32", "OpenVINO INT8")


def test_auto_ignores_int8_files_of_other_models(models, tmp_path):
    copy = tmp_path / "m.onnx"  # same name, different folder, no INT8 beside it
    shutil.copy(models["fp32"], copy)
    assert choose_cpu_path(copy, device="cpu", min_agreement=0.0, features=VNNI_BF16).artifact == copy
    changed = tmp_path / "n.onnx"
    export_bytes = models["fp32"].read_bytes()
    changed.write_bytes(export_bytes)
    shutil.copy(models["int8"], tmp_path / "n-int8.onnx")
    assert choose_cpu_path(changed, device="cpu", min_agreement=0.0, features=VNNI_BF16).artifact != changed
    proto = onnx.load(str(changed))  # any other bytes: a different model
    proto.doc_string = "retrained"
    onnx.save(proto, str(changed))
    assert choose_cpu_path(changed, device="cpu", min_agreement=0.0, features=VNNI_BF16).artifact == changed


def test_open_backend_auto_and_threads(models):
    x = normalize(synthetic_images(1, 64, 128, seed=1))
    with open_backend(models["fp32"], device="cpu", precision="auto", threads=1) as b:
        assert b.cpu_path is not None and b.cpu_path.describe().startswith("CPU path: ")
        assert b.final_resize_dropped and "1/8 logits" in b.cpu_path.describe()
        assert b.infer(x).shape == (1, 19, 8, 16) and "1 threads" in b.describe()
    with open_backend(models["fp32"], backend="onnxruntime", device="cpu", threads=1) as b:
        assert b.cpu_path is None
        assert b._session.get_session_options().intra_op_num_threads == 1
    if HAS_OPENVINO:
        with open_backend(models["fp32"], backend="openvino", device="cpu", threads=1) as b:
            assert int(b._compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    with pytest.raises(InvalidValue, match="threads"):
        open_backend(models["fp32"], backend="onnxruntime", device="cpu", threads=0)


def test_cli_precision_auto_and_threads(models, tmp_path):
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), synthetic_images(1, 64, 128, seed=2)[0])
    runner = CliRunner()
    result = runner.invoke(app, ["infer", str(image), "-m", str(models["fp32"]), "--precision", "auto", "--threads", "1",
                                 "-d", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "CPU path: " in result.output and "--precision fp32" in result.output
    assert (tmp_path / "out").is_dir()
    bad = runner.invoke(app, ["infer", str(image), "-m", str(models["fp32"]), "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output
    unknown = runner.invoke(app, ["infer", str(image), "-m", str(models["fp32"]), "--precision", "fp8",
                                  "-d", str(tmp_path / "o2"), "--no-progress"])
    assert unknown.exit_code == 1 and "--precision" in unknown.output and "auto" in unknown.output


def test_auto_on_onnx_never_imports_torch(models):
    code = ("import sys; import numpy as np; from stdc_deploy import Segmenter; "
            f"s = Segmenter({str(models['fp32'])!r}, precision='auto', threads=1); "
            "s.predict(np.zeros((64, 128, 3), np.uint8)); print(s.backend.cpu_path.label, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("False")
