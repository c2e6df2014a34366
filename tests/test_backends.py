"""One contract test that every backend installed here passes."""

import numpy as np
import pytest
import torch

from stdc_deploy.backends import BACKENDS_FOR_KIND, artifact_kind, available_backends, create_backend, open_backend
from stdc_deploy.checkpoint import load_model
from stdc_deploy.errors import StdcError
from stdc_deploy.export import OnnxExportOptions, export_onnx, export_torchscript
from stdc_deploy.preprocess import normalize
from stdc_deploy.synthetic import synthetic_images
from stdc_deploy.parity import compare_logits

CASES = [("checkpoint", "torch", "fp32"), ("torchscript", "torch", "fp32"), ("pt2", "torch", "fp32"),
         ("onnx", "onnxruntime", "fp32"),
         ("onnx", "openvino", "fp32"), ("onnx", "openvino", "bf16")]


@pytest.fixture(scope="module")
def artifacts(official_checkpoints, tmp_path_factory):
    ckpt = official_checkpoints["stdc1"]
    onnx_path = tmp_path_factory.mktemp("backends") / "stdc1.onnx"
    model, info = load_model(ckpt)
    export_onnx(model, onnx_path, OnnxExportOptions(height=64, width=128, batch=2), checkpoint=info)
    ts_path = export_torchscript(model, onnx_path.with_suffix(".ts"), 64, 128, checkpoint=info).path
    from stdc_deploy.export.pt2 import export_pt2

    pt2_path = export_pt2(model, onnx_path.with_suffix(".pt2"), 64, 128, checkpoint=info).path
    return {"checkpoint": ckpt, "onnx": onnx_path, "torchscript": ts_path, "pt2": pt2_path, "model": model}


@pytest.mark.parametrize("kind, backend, precision", CASES)
def test_backend_contract(artifacts, kind, backend, precision):
    if backend not in available_backends(kind):
        pytest.skip(f"{backend} is not installed")
    if precision == "bf16":
        from stdc_deploy.backends.openvino_backend import cpu_supports_bf16

        if not cpu_supports_bf16():
            pytest.skip("this CPU has no bf16 support")
    x = normalize(synthetic_images(2, 64, 128, seed=99))
    with torch.no_grad():
        reference = artifacts["model"](torch.from_numpy(x)).numpy()
    with open_backend(artifacts[kind], backend=backend, device="cpu", precision=precision) as b:
        assert b.is_open and b.name == backend
        assert b.metadata.arch == "stdc1" and b.metadata.num_classes == 19
        out = b.infer(x)
    assert not b.is_open
    assert out.shape == (2, 19, 64, 128) and out.dtype == np.float32
    parity = compare_logits(reference, out)
    # bf16 keeps 8 mantissa bits: on random weights at 64x128 near-ties flip (~94% measured)
    assert parity.label_agreement >= (0.9 if precision == "bf16" else 0.999), parity.describe()


def test_automatic_choice_on_cpu(artifacts):
    assert create_backend(artifacts["checkpoint"], device="cpu").name == "torch"
    assert create_backend(artifacts["torchscript"], device="cpu").name == "torch"
    assert create_backend(artifacts["onnx"], device="cpu").name == "onnxruntime"
    if "openvino" in available_backends("onnx"):
        assert create_backend(artifacts["onnx"], device="cpu", precision="bf16").name == "openvino"
    else:
        with pytest.raises(StdcError, match="no installed backend runs onnx artifacts on cpu at bf16"):
            open_backend(artifacts["onnx"], device="cpu", precision="bf16")


def test_static_model_rejects_other_sizes(artifacts):
    with open_backend(artifacts["onnx"], backend="onnxruntime", device="cpu") as b:
        with pytest.raises(StdcError, match="this model takes height 64, got 32"):
            b.infer(np.zeros((2, 3, 32, 128), np.float32))


@pytest.mark.parametrize("args, message", [
    ({"backend": "torch"}, "torch cannot run onnx artifacts"),
    ({"backend": "nope"}, "unknown backend"),
    ({"precision": "int4"}, "unknown precision"),
    ({"backend": "onnxruntime", "precision": "fp16"}, "offers precision fp32"),
])
def test_bad_choices(artifacts, args, message):
    with pytest.raises(StdcError, match=message):
        open_backend(artifacts["onnx"], **{"device": "cpu", **args})


def test_unknown_files(tmp_path):
    with pytest.raises(StdcError, match="unsupported model file type '.txt'"):
        artifact_kind(tmp_path / "model.txt")
    with pytest.raises(StdcError, match="no such file"):
        open_backend(tmp_path / "absent.onnx")
    assert set(BACKENDS_FOR_KIND) == {"checkpoint", "torchscript", "pt2", "onnx", "engine"}


def test_torchscript_carries_metadata_and_runs_at_any_size(artifacts, tmp_path):
    from stdc_deploy.core.artifacts import read_metadata

    meta = read_metadata(artifacts["torchscript"])
    assert (meta.arch, meta.num_classes, meta.dynamic, meta.opt_height, meta.opt_width) == ("stdc1", 19, True, 64, 128)
    assert meta.checkpoint_sha256 is not None
    loaded = torch.jit.load(str(artifacts["torchscript"]))  # plain LibTorch loading, no stdc_deploy involved
    x = torch.from_numpy(normalize(synthetic_images(3, 80, 100, seed=3)))
    with torch.no_grad():
        assert compare_logits(artifacts["model"](x).numpy(), loaded(x).numpy()).max_abs_error < 1e-4
    bogus = tmp_path / "bogus.ts"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(StdcError, match="bogus.ts: not a readable TorchScript archive"):
        read_metadata(bogus)


@pytest.mark.slow
def test_aoti_package_cpu(artifacts, tmp_path):
    """AOTInductor on the CPU: compiles with the C++ compiler (about 45 s here), loads, matches."""
    from stdc_deploy.export.pt2 import export_pt2, is_aoti_package

    result = export_pt2(artifacts["model"], tmp_path / "m-aoti.pt2", 64, 128, aoti=True)
    assert is_aoti_package(result.path) and all(p.label_agreement == 1.0 for p in result.parity)
    x = normalize(synthetic_images(2, 72, 100, seed=5))
    with torch.no_grad():
        reference = artifacts["model"](torch.from_numpy(x)).numpy()
    with open_backend(result.path, device="cpu") as backend:
        assert compare_logits(reference, backend.infer(x)).max_abs_error < 1e-3
