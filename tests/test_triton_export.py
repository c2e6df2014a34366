"""`stdc export triton`: the repository's configurations parse back into Triton's schema and
follow the ensemble rules, and its Python-backend models, run in this process with a stand-in
for ``triton_python_backend_utils``, give exactly the labels of ``Segmenter``."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")

from google.protobuf import json_format  # noqa: E402

from stdc_deploy.backends.tensorrt.sidecar import EngineSidecar, sidecar_path  # noqa: E402
from stdc_deploy.cli import app  # noqa: E402
from stdc_deploy.core.artifacts import read_onnx_metadata  # noqa: E402
from stdc_deploy.core.fileio import OutputExistsError  # noqa: E402
from stdc_deploy.errors import InvalidValue, MissingDependencyError, StdcError  # noqa: E402
from stdc_deploy.export.triton import (  # noqa: E402
    ENSEMBLE,
    NET,
    POST,
    PRE,
    build_configs,
    check_repository,
    export_triton,
    plan_network,
    read_repository,
)
from stdc_deploy.segmenter import Segmenter  # noqa: E402
from stdc_deploy.synthetic import synthetic_images  # noqa: E402

IMAGE_SIZES = ((70, 150), (41, 97))


# -- a stand-in for triton_python_backend_utils (the parts model.py uses) -------------------------
class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class InferenceRequest:
    def __init__(self, *tensors):
        self._inputs = list(tensors)

    def inputs(self):
        return self._inputs


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = range(7)

    def __init__(self, message, code=INTERNAL):
        self._message, self._code = message, code

    def message(self):
        return self._message

    def code(self):
        return self._code


class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self._outputs, self._error = list(output_tensors or []), error

    def output_tensors(self):
        return self._outputs

    def has_error(self):
        return self._error is not None

    def error(self):
        return self._error


def _by_name(tensors, name):
    return next((t for t in tensors if t.name() == name), None)


def fake_pb_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.InferenceRequest, module.InferenceResponse = Tensor, InferenceRequest, InferenceResponse
    module.TritonError = TritonError
    module.get_input_tensor_by_name = lambda request, name: _by_name(request.inputs(), name)
    module.get_output_tensor_by_name = lambda response, name: _by_name(response.output_tensors(), name)
    module.get_output_config_by_name = lambda config, name: next(
        (o for o in config.get("output", []) if o["name"] == name), None)
    return module


def load_model(repo, name: str, config):
    """``repo/name/1/model.py``, initialised as Triton's Python backend does."""
    for module in [m for m in sys.modules if m == "stdc_ops" or m.startswith("stdc_ops.")]:
        del sys.modules[module]  # every model folder has its own copy
    path = repo / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"triton_{name}_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model_config = json_format.MessageToDict(config, preserving_proto_field_name=True)
    model.initialize({"model_config": json.dumps(model_config), "model_instance_kind": "CPU",
                      "model_repository": str(repo / name), "model_version": "1", "model_name": name})
    return model


def output(response, name):
    assert not response.has_error(), response.error().message()
    return _by_name(response.output_tensors(), name).as_numpy()


@pytest.fixture
def without_the_package(monkeypatch):
    """Triton's Python environment: the stand-in backend utils, no stdc_deploy, no PyTorch."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    monkeypatch.setitem(sys.modules, "stdc_deploy", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    yield
    for module in [m for m in sys.modules if m == "stdc_ops" or m.startswith("stdc_ops.")]:
        del sys.modules[module]


@pytest.fixture(scope="module")
def images_and_labels(dynamic_onnx):
    images = [synthetic_images(1, h, w, seed=i + 3)[0] for i, (h, w) in enumerate(IMAGE_SIZES)]
    encoded = [cv2.imencode(".png", image)[1].tobytes() for image in images]
    decoded = [cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in encoded]
    with Segmenter(dynamic_onnx, protocol="official") as seg:
        labels = [seg.predict(image) for image in decoded]
    return encoded, labels


@pytest.fixture(scope="module")
def python_repo(dynamic_onnx, tmp_path_factory):
    return export_triton(dynamic_onnx, tmp_path_factory.mktemp("triton") / "repo", kind="cpu", net="python",
                         max_batch=4).path


# -- configurations -----------------------------------------------------------------------------
@pytest.mark.parametrize("net, kind, fp16", [("onnx", "gpu", True), ("onnx", "cpu", False), ("python", "cpu", False)])
def test_repository_configs_parse_back_and_follow_the_rules(dynamic_onnx, tmp_path, net, kind, fp16):
    result = export_triton(dynamic_onnx, tmp_path / "repo", max_batch=6, instances=2, kind=kind, net=net, fp16=fp16)
    configs = read_repository(result.path)
    assert sorted(configs) == sorted([ENSEMBLE, NET, PRE, POST])
    check_repository(configs)
    assert all(config.name == name and config.max_batch_size == 6 for name, config in configs.items())
    meta = read_onnx_metadata(dynamic_onnx)
    height, width = result.input_size
    assert (height, width) == (meta.opt_height, meta.opt_width)

    netc = configs[NET]
    assert (netc.platform, netc.backend) == (("onnxruntime_onnx", "") if net == "onnx" else ("", "python"))
    assert [(t.name, list(t.dims)) for t in netc.input] == [("input", [3, -1, -1])]
    assert [(t.name, list(t.dims)) for t in netc.output] == [("logits", [meta.num_classes, -1, -1])]
    assert netc.instance_group[0].count == 2
    assert netc.instance_group[0].kind == (netc.instance_group[0].KIND_GPU if kind == "gpu" else
                                           netc.instance_group[0].KIND_CPU)
    assert list(netc.model_warmup[0].inputs["input"].dims) == [3, height, width]
    accelerators = netc.optimization.execution_accelerators.gpu_execution_accelerator
    if kind == "gpu":
        (trt,) = accelerators
        params = dict(trt.parameters)
        assert trt.name == "tensorrt" and params["precision_mode"] == "FP16"
        assert params["trt_profile_min_shapes"] == f"input:1x3x{height}x{width}"
        assert params["trt_profile_max_shapes"] == f"input:6x3x{height}x{width}"
        assert params["trt_engine_cache_enable"] == "true"
    else:
        assert not accelerators

    pre = configs[PRE]
    assert [(t.name, list(t.dims)) for t in pre.output] == [("input", [3, height, width]), ("size", [2])]
    assert configs[ENSEMBLE].platform == "ensemble" and not configs[ENSEMBLE].instance_group
    for config in configs.values():
        facts = json.loads(config.parameters["metadata"].string_value)
        assert facts["class_names"] == list(meta.class_names) and facts["protocol"] == "official"
        assert (facts["input_height"], facts["input_width"]) == (height, width)
        assert json.loads(config.parameters["mean"].string_value) == list(meta.mean)
        assert config.parameters["num_classes"].string_value == str(meta.num_classes)

    files = {p.relative_to(result.path).as_posix() for p in result.path.rglob("*") if p.is_file()}
    assert {"README.txt", "stdc_net/1/model.onnx", "stdc_pre/1/model.py", "stdc_pre/1/stdc_ops/preprocess.py",
            "stdc_post/1/stdc_ops/postprocess.py"} <= files
    assert ("stdc_net/1/model.py" in files) == (net == "python")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no hidden build folder left
    readme = (result.path / "README.txt").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:<yy.mm>-py3" in readme
    assert "pip install numpy opencv-python-headless" in readme
    assert ("onnxruntime" in readme.split("pip install")[1].splitlines()[0]) == (net == "python")


def _good_configs(dynamic_onnx):
    return build_configs(plan_network(dynamic_onnx), max_batch=4)


def _rename(configs):
    configs[PRE].name = "other"


def _read_unknown(configs):
    configs[ENSEMBLE].ensemble_scheduling.step[1].input_map["input"] = "nowhere"


def _read_later_output(configs):
    configs[ENSEMBLE].ensemble_scheduling.step[1].input_map["input"] = "labels"


def _unproduced_output(configs):
    del configs[ENSEMBLE].ensemble_scheduling.step[2].output_map["labels"]


def _missing_member(configs):
    del configs[POST]


def _datatype(configs):
    configs[POST].input[1].data_type = configs[POST].input[1].data_type + 1


def _dims(configs):
    del configs[NET].input[0].dims[:]
    configs[NET].input[0].dims.extend([1, -1, -1])


def _max_batch(configs):
    configs[ENSEMBLE].max_batch_size = 8


def _written_twice(configs):
    configs[ENSEMBLE].ensemble_scheduling.step[1].output_map["logits"] = "size"


def _unfed_input(configs):
    del configs[ENSEMBLE].ensemble_scheduling.step[2].input_map["size"]


@pytest.mark.parametrize("breakage, fragment", [
    (_rename, "holds a configuration named 'other'"),
    (_read_unknown, "neither an ensemble input nor an output of an earlier step"),
    (_read_later_output, "neither an ensemble input nor an output of an earlier step"),
    (_unproduced_output, "no step produces its output 'labels'"),
    (_missing_member, "no model 'stdc_post'"),
    (_datatype, "but stdc_post input 'size' is"),
    (_dims, "TYPE_FP32 [3, 64, 128] but stdc_net input 'input' is TYPE_FP32 [1, -1, -1]"),
    (_max_batch, "max_batch_size 8 exceeds the member's 4"),
    (_written_twice, "which is already stdc_pre output 'size'"),
    (_unfed_input, "nothing feeds its input 'size'"),
])
def test_checker_catches_broken_repositories(dynamic_onnx, breakage, fragment):
    configs = _good_configs(dynamic_onnx)
    check_repository(configs)
    breakage(configs)
    with pytest.raises(StdcError, match=None) as caught:
        check_repository(configs)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


# -- the models, run in this process --------------------------------------------------------------
def _image_request(*items):
    return InferenceRequest(Tensor("image", np.array([[item] for item in items], dtype=object)))


@pytest.mark.usefixtures("without_the_package")
def test_python_models_give_the_labels_of_segmenter(python_repo, images_and_labels):
    encoded, expected = images_and_labels
    configs = read_repository(python_repo)
    pre, net, post = (load_model(python_repo, name, configs[name]) for name in (PRE, NET, POST))

    # one call holds several requests, as with dynamic batching; the broken one fails alone
    answers = pre.execute([_image_request(encoded[0]), _image_request(b"\x89PNG broken"),
                           _image_request(encoded[1]), _image_request(b"")])
    for bad in (answers[1], answers[3]):
        assert bad.has_error()
        message = bad.error().message()
        assert "not a readable image" in message and "\n" not in message
        assert bad.error().code() == TritonError.INVALID_ARG
    good = [answers[0], answers[2]]
    sizes = [output(a, "size") for a in good]
    assert [tuple(s[0]) for s in sizes] == list(IMAGE_SIZES) and sizes[0].dtype == np.int32
    logits = net.execute([InferenceRequest(Tensor("input", output(a, "input"))) for a in good])
    labels = post.execute([InferenceRequest(Tensor("logits", output(lg, "logits")), Tensor("size", s))
                           for lg, s in zip(logits, sizes)])
    for answer, want in zip(labels, expected):
        got = output(answer, "labels")
        assert got.dtype == np.uint8 and got.shape == (1, *want.shape)
        assert np.array_equal(got[0], want)


@pytest.mark.usefixtures("without_the_package")
def test_onnx_network_and_batched_request(dynamic_onnx, tmp_path, images_and_labels):
    """The onnxruntime_onnx repository: its model.onnx between pre and post, and one request
    holding two images of one size (labels stacked) beside one with mixed sizes (refused)."""
    import onnxruntime as ort

    encoded, expected = images_and_labels
    repo = export_triton(dynamic_onnx, tmp_path / "repo", kind="cpu").path
    configs = read_repository(repo)
    pre, post = load_model(repo, PRE, configs[PRE]), load_model(repo, POST, configs[POST])
    session = ort.InferenceSession(str(repo / NET / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    same, mixed = pre.execute([_image_request(encoded[0], encoded[0]), _image_request(encoded[0], encoded[1])])
    requests = []
    for answer in (same, mixed):
        logits = session.run(["logits"], {"input": output(answer, "input")})[0]
        requests.append(InferenceRequest(Tensor("logits", logits), Tensor("size", output(answer, "size"))))
    same_labels, mixed_labels = post.execute(requests)
    got = output(same_labels, "labels")
    assert got.shape == (2, *expected[0].shape) and all(np.array_equal(g, expected[0]) for g in got)
    assert mixed_labels.has_error() and "differ in size" in mixed_labels.error().message()


def test_post_processing_without_torch_matches(monkeypatch):
    """The degenerate cases postprocess hands to PyTorch have a numpy path for Triton."""
    from stdc_deploy import postprocess

    rng = np.random.default_rng(0)
    cases = [rng.standard_normal((1, 6, 7)), rng.standard_normal((300, 5, 9)), rng.standard_normal((4, 1, 8))]
    with_torch = [postprocess.to_labels(c.astype(np.float32), (23, 31)) for c in cases]
    monkeypatch.setitem(sys.modules, "torch", None)
    for case, want in zip(cases, with_torch):
        got = postprocess.to_labels(case.astype(np.float32), (23, 31))
        assert got.dtype == want.dtype and np.array_equal(got, want)


# -- what is refused --------------------------------------------------------------------------------
@pytest.mark.parametrize("options, param", [
    ({"net": "python"}, "kind"),  # the python network runs on the CPU
    ({"kind": "cpu", "fp16": True}, "fp16"),
    ({"kind": "tpu"}, "kind"),
    ({"net": "torch"}, "net"),
    ({"max_batch": 0}, "max_batch"),
    ({"instances": 0}, "instances"),
])
def test_bad_options(dynamic_onnx, tmp_path, options, param):
    with pytest.raises(InvalidValue) as caught:
        export_triton(dynamic_onnx, tmp_path / "repo", **options)
    assert caught.value.param == param
    assert not (tmp_path / "repo").exists()


def test_output_policy(dynamic_onnx, tmp_path):
    repo = tmp_path / "repo"
    export_triton(dynamic_onnx, repo, kind="cpu")
    with pytest.raises(OutputExistsError):
        export_triton(dynamic_onnx, repo, kind="cpu")
    (repo / "stale.txt").write_text("from before")
    export_triton(dynamic_onnx, repo, kind="cpu", max_batch=2, overwrite=True)
    assert not (repo / "stale.txt").exists() and read_repository(repo)[NET].max_batch_size == 2
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(StdcError, match="not a model repository written by stdc export triton"):
        export_triton(dynamic_onnx, other, overwrite=True)
    assert (other / "a.jpg").exists()
    with pytest.raises(StdcError, match="holds the model file itself"):
        export_triton(dynamic_onnx, dynamic_onnx.parent, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    export_triton(dynamic_onnx, empty, kind="cpu")  # an empty folder is no output to protect
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "photos", "repo"]


def _with_metadata(onnx_path, output, **props):
    """A copy of ``onnx_path`` whose metadata says ``props`` (the graph is unchanged)."""
    import onnx

    proto = onnx.load(str(onnx_path))
    for prop in proto.metadata_props:
        prop.value = props.get(prop.key, prop.value)
    onnx.save(proto, str(output))
    return output


def test_fixed_batch_model_is_refused(dynamic_onnx, tmp_path):
    static = _with_metadata(dynamic_onnx, tmp_path / "static.onnx", batch="1", input_height="64", input_width="128")
    with pytest.raises(StdcError, match="fixed batch of 1.*export a dynamic model"):
        export_triton(static, tmp_path / "repo")


def test_int8_export_runs_the_accelerator_in_int8(dynamic_onnx, tmp_path):
    int8 = _with_metadata(dynamic_onnx, tmp_path / "int8.onnx", precision="int8")
    repo = export_triton(int8, tmp_path / "repo").path
    (accelerator,) = read_repository(repo)[NET].optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["precision_mode"] == "INT8"
    with pytest.raises(InvalidValue, match="INT8"):
        export_triton(int8, tmp_path / "fp16", fp16=True)


def _fake_engine(dynamic_onnx, folder, profile):
    engine = folder / "m.engine"
    engine.write_bytes(b"plan bytes")
    sidecar = EngineSidecar(tensorrt_version="10.9.0", gpu_name="NVIDIA H100", compute_capability="9.0",
                            precision="fp16", profiles=(profile,), onnx_sha256="0" * 64, onnx_file=str(dynamic_onnx),
                            tool_version="0", metadata=read_onnx_metadata(dynamic_onnx).to_props())
    sidecar_path(engine).write_text(sidecar.to_json())
    return engine


def test_engine_repository(dynamic_onnx, tmp_path):
    engine = _fake_engine(dynamic_onnx, tmp_path, {"min": [1, 3, 64, 128], "opt": [4, 3, 64, 128],
                                                   "max": [8, 3, 64, 256]})
    result = export_triton(engine, tmp_path / "repo")
    configs = read_repository(result.path)
    assert configs[NET].platform == "tensorrt_plan" and (result.path / NET / "1" / "model.plan").is_file()
    assert list(configs[NET].input[0].dims) == [3, 64, -1]  # the profile fixes the height only
    assert "built with TensorRT 10.9.0" in (result.path / "README.txt").read_text()
    with pytest.raises(InvalidValue) as caught:
        export_triton(engine, tmp_path / "big", max_batch=16)
    assert caught.value.param == "max_batch" and "batches 1..8" in str(caught.value)
    for options, param in (({"fp16": True}, "fp16"), ({"kind": "cpu"}, "kind"), ({"size": (32, 128)}, "size")):
        with pytest.raises(InvalidValue) as caught:
            export_triton(engine, tmp_path / "other", **options)
        assert caught.value.param == param


def test_missing_tritonclient_names_the_install(dynamic_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'stdc-deploy\[triton\]'"):
        export_triton(dynamic_onnx, tmp_path / "repo")


# -- the command ------------------------------------------------------------------------------------
def _one_line_error(result, *fragments):
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def test_cli(dynamic_onnx, tmp_path):
    runner = CliRunner()
    repo = tmp_path / "repo"
    args = ["export", "triton", str(dynamic_onnx), "-o", str(repo), "--kind", "cpu", "--net", "python",
            "--max-batch", "4", "--instances", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"Wrote {repo}: stdc_net (python), stdc_pre (python), stdc_post (python), stdc (ensemble)" in result.stdout
    assert (repo / "stdc" / "config.pbtxt").is_file() and (repo / "stdc_net" / "1" / "model.py").is_file()
    _one_line_error(runner.invoke(app, args), "repo: exists (pass --overwrite to replace it)")
    again = runner.invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0 and "Replaced" in again.stdout
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    _one_line_error(runner.invoke(app, ["export", "triton", str(bad), "-o", str(tmp_path / "r2")]), "bad.onnx")
    _one_line_error(runner.invoke(app, ["export", "triton", str(dynamic_onnx), "-o", str(tmp_path / "r2"),
                                        "--net", "python"]), "--kind: must be cpu")
    assert not (tmp_path / "r2").exists()
