"""A Triton Inference Server model repository for an ONNX export or a TensorRT engine.

Four models, serving the tensors ``stdc serve`` serves:

``stdc_net``
    The network: ``input`` FP32 [3, H, W] -> ``logits`` FP32 [C, H, W] (-1 for dynamic
    sides). ``onnxruntime_onnx`` (with ONNX Runtime's TensorRT accelerator on GPUs),
    ``tensorrt_plan`` for an engine, or ``net="python"``: ONNX Runtime on the CPU inside
    the Python backend, for Triton builds without the onnxruntime backend.
``stdc_pre`` (Python backend)
    ``image`` (an encoded image per batch item, TYPE_STRING [1]) -> ``input`` at the
    network size and ``size`` INT32 [2] (the image's height, width).
``stdc_post`` (Python backend)
    ``logits`` and ``size`` -> ``labels`` UINT8 [-1, -1] at the image's own size.
``stdc`` (ensemble)
    ``image`` -> ``labels``: pre, net, post.

The Python-backend models carry stdc-deploy's own pre- and post-processing as a copied
``stdc_ops`` package beside their ``model.py``, so Triton needs numpy and OpenCV only.
Configurations are built as tritonclient's ``ModelConfig`` protobufs, checked
(:func:`check_repository`), written with ``text_format`` into a hidden folder beside the
repository, parsed back and checked again, and only then renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .._version import __version__
from ..core.artifacts import KIND_NAMES, artifact_kind, check_artifact_file, read_onnx_metadata
from ..core.fileio import OutputExistsError, atomic_output, check_writable_dir
from ..core.metadata import ArtifactMetadata
from ..errors import InvalidValue, MissingDependencyError, StdcError
from .onnx import MAX_BATCH
from .triton_models import TEMPLATE_DIR

NET, PRE, POST, ENSEMBLE = "stdc_net", "stdc_pre", "stdc_post", "stdc"
KINDS = ("gpu", "cpu")
NETS = ("onnx", "python")
PROTOCOL = "official"
MAX_INSTANCES = 64
# ONNX Runtime's TensorRT accelerator: engines are cached at this path inside the
# container (mount a volume there to keep them across restarts)
ORT_TRT_CACHE_PATH = "/tmp/stdc_net_trt_cache"
ORT_TRT_WORKSPACE_BYTES = 4 * 2**30  # as `stdc build-engine`
# each Python-backend model: its model.py (a template in triton_models) and the package
# modules it runs, copied unchanged into the stdc_ops package beside it
PYTHON_MODELS = {PRE: ("pre", ("sampling", "preprocess")), POST: ("post", ("sampling", "postprocess")),
                 NET: ("net", ())}
TRITON_PACKAGES = ("numpy", "opencv-python-headless")  # what the Python backend needs
TRITONCLIENT_HINT = "pip install 'stdc-deploy[triton]'"


@dataclass(frozen=True)
class TritonExportResult:
    """A written repository: ``models`` maps each model to its platform or backend."""

    path: Path
    metadata: ArtifactMetadata
    models: Mapping[str, str]
    input_size: tuple[int, int]
    max_batch: int
    size_bytes: int
    seconds: float


@dataclass(frozen=True)
class Network:
    """What ``stdc_net`` serves: the source file, how Triton runs it, its input dims
    (without the batch) and the network input size pre-processing resizes to."""

    source: Path
    metadata: ArtifactMetadata
    file_name: str  # in the version folder: model.onnx or model.plan
    platform: str  # "" for the Python backend
    input_dims: tuple[int, int, int]
    size: tuple[int, int]
    tensorrt_version: str | None = None  # an engine's, from its sidecar


def model_config_pb2():
    """tritonclient's ``model_config_pb2`` (the ``ModelConfig`` schema), or
    :class:`MissingDependencyError` with the install line."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise MissingDependencyError(f"writing Triton model configurations needs tritonclient: "
                                     f"{TRITONCLIENT_HINT}") from exc
    return model_config_pb2


def check_options(*, max_batch: int, instances: int, kind: str, net: str, fp16: bool) -> None:
    if kind not in KINDS:
        raise InvalidValue("kind", f"{kind!r}: choose {' or '.join(KINDS)}")
    if net not in NETS:
        raise InvalidValue("net", f"{net!r}: choose {' or '.join(NETS)}")
    if not 1 <= max_batch <= MAX_BATCH:
        raise InvalidValue("max_batch", f"must be within 1..{MAX_BATCH}, got {max_batch}")
    if not 1 <= instances <= MAX_INSTANCES:
        raise InvalidValue("instances", f"must be within 1..{MAX_INSTANCES}, got {instances}")
    if net == "python" and kind == "gpu":
        raise InvalidValue("kind", "must be cpu for the python network (ONNX Runtime on the CPU); on GPUs serve the "
                                    "onnx network")
    if fp16 and kind == "cpu":
        raise InvalidValue("fp16", "FP16 is a setting of the TensorRT accelerator, which runs on kind gpu only")


def plan_network(model: str | os.PathLike, *, size: tuple[int, int] | None = None, max_batch: int = 8,
                 kind: str = "gpu", net: str = "onnx", fp16: bool = False) -> Network:
    """Read ``model`` (ONNX export or engine with its sidecar) and decide how ``stdc_net``
    serves it; refuse what Triton could not batch or run, saying why."""
    from ..segmenter import network_input_size

    path = check_artifact_file(model)
    source_kind = artifact_kind(path)
    profile = None
    tensorrt_version = None
    if source_kind == "onnx":
        metadata = read_onnx_metadata(path)
        platform, file_name = ("onnxruntime_onnx" if net == "onnx" else ""), "model.onnx"
    elif source_kind == "engine":
        from ..backends.tensorrt.sidecar import read_sidecar

        if net == "python":
            raise InvalidValue("net", "the python network runs an ONNX file; an engine runs in Triton's TensorRT "
                                      "backend", path)
        if kind == "cpu":
            raise InvalidValue("kind", "a TensorRT engine runs on the GPU only", path)
        sidecar = read_sidecar(path)
        metadata, tensorrt_version = sidecar.artifact_metadata, sidecar.tensorrt_version
        if fp16:
            raise InvalidValue("fp16", f"an engine's precision is fixed when it is built (this one is "
                                       f"{sidecar.precision}); build the engine with precision fp16", path)
        profile = sidecar.profiles[0] if sidecar.profiles else None
        platform, file_name = "tensorrt_plan", "model.plan"
    else:
        raise StdcError(f"a Triton repository serves an ONNX export or a TensorRT engine, not a "
                        f"{KIND_NAMES[source_kind]}; export it first (stdc export onnx --dynamic)", path)

    if (metadata.input_name, metadata.output_name) != ("input", "logits"):
        raise StdcError(f"the network's tensors are {metadata.input_name!r} -> {metadata.output_name!r}; the "
                        "repository serves 'input' -> 'logits' (export it with stdc export onnx)", path)
    if metadata.num_classes > 256:
        raise StdcError(f"{metadata.num_classes} classes do not fit the uint8 labels the repository serves "
                        "(at most 256)", path)
    if metadata.batch is not None:
        raise StdcError(f"this model has a fixed batch of {metadata.batch}; Triton batches requests along a "
                        "dynamic batch dimension: export a dynamic model (stdc export onnx --dynamic)", path)
    size = network_input_size(metadata, size, path)
    dims = (3, -1, -1)
    if profile is not None:
        low, high = profile["min"], profile["max"]
        if low[0] > 1 or high[0] < max_batch:
            raise InvalidValue("max_batch", f"this engine takes batches {low[0]}..{high[0]}, Triton sends 1.."
                                            f"{max_batch}: lower max_batch or build the engine for batch 1.."
                                            f"{max_batch}", path)
        if not (low[2] <= size[0] <= high[2] and low[3] <= size[1] <= high[3]):
            raise InvalidValue("size", f"{size[0]}x{size[1]} is outside this engine's profile ({low[2]}x{low[3]} "
                                       f"to {high[2]}x{high[3]}); give a size within it", path)
        dims = (3, -1 if low[2] != high[2] else low[2], -1 if low[3] != high[3] else low[3])
    return Network(path, metadata, file_name, platform, dims, tuple(size), tensorrt_version)


def accelerator_precision(metadata: ArtifactMetadata, fp16: bool) -> str:
    """The TensorRT accelerator's ``precision_mode``: INT8 for a Q/DQ INT8 export (TensorRT
    needs it to run the quantized layers), else FP16 with ``fp16``, else FP32."""
    if metadata.precision == "int8":
        if fp16:
            raise InvalidValue("fp16", "this ONNX is INT8 (Q/DQ); the accelerator runs it in INT8")
        return "INT8"
    return "FP16" if fp16 else "FP32"


def repository_parameters(metadata: ArtifactMetadata, size: tuple[int, int]) -> dict[str, str]:
    """The ``parameters`` of every model: facts as strings, and ``metadata``, all of them as
    one JSON object (what the Python-backend models read)."""
    facts = {"arch": metadata.model_name, "num_classes": metadata.num_classes,
             "class_names": list(metadata.class_names), "mean": list(metadata.mean), "std": list(metadata.std),
             "input_height": size[0], "input_width": size[1], "protocol": PROTOCOL, "precision": metadata.precision,
             "stdc_deploy": __version__}
    params = {key: value if isinstance(value, str) else json.dumps(value) for key, value in facts.items()}
    return {**params, "metadata": json.dumps(facts)}


def build_configs(network: Network, *, max_batch: int = 8, instances: int = 1, kind: str = "gpu",
                  fp16: bool = False) -> dict[str, object]:
    """The four ``ModelConfig`` protobufs, by model name."""
    pb = model_config_pb2()
    height, width = network.size
    logits_dims = (network.metadata.num_classes, *network.input_dims[1:])
    params = repository_parameters(network.metadata, network.size)

    def tensor(cls, name: str, data_type: str, dims) -> object:
        return cls(name=name, data_type=pb.DataType.Value(data_type), dims=list(dims))

    def model(name: str, inputs, outputs, *, platform: str = "", backend: str = "", instance_kind: str = "") -> object:
        config = pb.ModelConfig(name=name, platform=platform, backend=backend, max_batch_size=max_batch,
                                input=[tensor(pb.ModelInput, *t) for t in inputs],
                                output=[tensor(pb.ModelOutput, *t) for t in outputs])
        for key, value in params.items():
            config.parameters[key].string_value = value
        if instance_kind:
            config.dynamic_batching.SetInParent()
            config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(instance_kind))
        return config

    net = model(NET, [("input", "TYPE_FP32", network.input_dims)], [("logits", "TYPE_FP32", logits_dims)],
                platform=network.platform, backend="" if network.platform else "python",
                instance_kind="KIND_GPU" if kind == "gpu" else "KIND_CPU")
    warmup = net.model_warmup.add(name="zeros", batch_size=1)
    warmup.inputs["input"].data_type = pb.TYPE_FP32
    warmup.inputs["input"].dims.extend([3, height, width])
    warmup.inputs["input"].zero_data = True
    if network.platform == "onnxruntime_onnx" and kind == "gpu":
        accelerator = net.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        min_shape, max_shape = (f"input:{batch}x3x{height}x{width}" for batch in (1, max_batch))
        accelerator.parameters.update({
            "precision_mode": accelerator_precision(network.metadata, fp16),
            "max_workspace_size_bytes": str(ORT_TRT_WORKSPACE_BYTES),
            "trt_engine_cache_enable": "true", "trt_engine_cache_path": ORT_TRT_CACHE_PATH,
            "trt_profile_min_shapes": min_shape, "trt_profile_opt_shapes": max_shape,
            "trt_profile_max_shapes": max_shape})

    pre = model(PRE, [("image", "TYPE_STRING", [1])],
                [("input", "TYPE_FP32", (3, height, width)), ("size", "TYPE_INT32", [2])],
                backend="python", instance_kind="KIND_CPU")
    post = model(POST, [("logits", "TYPE_FP32", logits_dims), ("size", "TYPE_INT32", [2])],
                 [("labels", "TYPE_UINT8", [-1, -1])], backend="python", instance_kind="KIND_CPU")
    ensemble = model(ENSEMBLE, [("image", "TYPE_STRING", [1])], [("labels", "TYPE_UINT8", [-1, -1])],
                     platform="ensemble")
    steps = ((PRE, {"image": "image"}, {"input": "input", "size": "size"}),
             (NET, {"input": "input"}, {"logits": "logits"}),
             (POST, {"logits": "logits", "size": "size"}, {"labels": "labels"}))
    for member, inputs, outputs in steps:
        step = ensemble.ensemble_scheduling.step.add(model_name=member, model_version=-1)
        step.input_map.update(inputs)
        step.output_map.update(outputs)
    return {NET: net, PRE: pre, POST: post, ENSEMBLE: ensemble}


# -- checks -------------------------------------------------------------------------------------
def _dims_agree(a, b) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b))


def _describe(data_type: int, dims) -> str:
    return f"{model_config_pb2().DataType.Name(data_type)} [{', '.join(map(str, dims))}]"


def check_ensemble(ensemble, configs: Mapping[str, object]) -> None:
    """Refuse an ensemble Triton would refuse or that would feed a model the wrong tensor:
    every step's inputs are ensemble inputs or outputs of earlier steps, its members exist,
    connected tensors agree in datatype and dims, every ensemble output is produced once,
    and the ensemble's max_batch_size does not exceed a member's."""
    name = ensemble.name
    tensors = {t.name: (t.data_type, list(t.dims), f"ensemble input {t.name!r}") for t in ensemble.input}

    def connect(source, target, where: str) -> None:
        data_type, dims, origin = source
        if data_type != target.data_type or not _dims_agree(dims, target.dims):
            raise StdcError(f"ensemble {name!r}: {origin} is {_describe(data_type, dims)} but {where} is "
                            f"{_describe(target.data_type, target.dims)}")

    for number, step in enumerate(ensemble.ensemble_scheduling.step, 1):
        where = f"ensemble {name!r}, step {number} ({step.model_name!r})"
        member = configs.get(step.model_name)
        if member is None:
            raise StdcError(f"{where}: no model {step.model_name!r} in the repository")
        if member.max_batch_size < ensemble.max_batch_size:
            raise StdcError(f"{where}: the ensemble's max_batch_size {ensemble.max_batch_size} exceeds the "
                            f"member's {member.max_batch_size}")
        inputs = {t.name: t for t in member.input}
        outputs = {t.name: t for t in member.output}
        for key, value in step.input_map.items():
            if key not in inputs:
                raise StdcError(f"{where}: the model has no input {key!r}")
            if value not in tensors:
                raise StdcError(f"{where}: input {key!r} reads {value!r}, neither an ensemble input nor an output "
                                "of an earlier step")
            connect(tensors[value], inputs[key], f"{step.model_name} input {key!r}")
        unfed = [n for n, t in inputs.items() if n not in step.input_map and not t.optional]
        if unfed:
            raise StdcError(f"{where}: nothing feeds its input {unfed[0]!r}")
        for key, value in step.output_map.items():
            if key not in outputs:
                raise StdcError(f"{where}: the model has no output {key!r}")
            if value in tensors:
                raise StdcError(f"{where}: output {key!r} writes {value!r}, which is already {tensors[value][2]}")
            out = outputs[key]
            tensors[value] = (out.data_type, list(out.dims), f"{step.model_name} output {key!r}")
    for out in ensemble.output:
        if out.name not in tensors:
            raise StdcError(f"ensemble {name!r}: no step produces its output {out.name!r}")
        connect(tensors[out.name], out, f"ensemble output {out.name!r}")


def check_repository(configs: Mapping[str, object]) -> None:
    """Check ``configs`` (folder name -> ``ModelConfig``): names match folders, and every
    ensemble follows :func:`check_ensemble`. A violation raises :class:`StdcError`."""
    for folder, config in configs.items():
        if config.name != folder:
            raise StdcError(f"model folder {folder!r} holds a configuration named {config.name!r}; Triton needs "
                            "them equal")
    for config in configs.values():
        if config.platform == "ensemble":
            check_ensemble(config, configs)


def read_repository(repo: str | os.PathLike) -> dict[str, object]:
    """Parse every ``<model>/config.pbtxt`` of a repository into ``ModelConfig``, by folder."""
    from google.protobuf import text_format

    pb = model_config_pb2()
    configs = {}
    for path in sorted(Path(repo).glob("*/config.pbtxt")):
        try:
            configs[path.parent.name] = text_format.Parse(path.read_text(), pb.ModelConfig())
        except text_format.ParseError as exc:
            raise StdcError(f"not a valid model configuration: {exc}", path) from None
    return configs


# -- writing ------------------------------------------------------------------------------------
def check_repository_output(repo: str | os.PathLike, model: Path, *, overwrite: bool) -> Path:
    """The output policy for a repository folder: a non-empty existing folder is replaced
    only with ``overwrite``, and only if it is a repository this module wrote (never a
    folder holding ``model``, never any other folder)."""
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise StdcError("is a file; give a folder for the model repository", repo)
    check_writable_dir(repo.parent)
    if repo.is_dir() and any(repo.iterdir()):
        if model.resolve().is_relative_to(repo.resolve()):
            raise StdcError("holds the model file itself; choose another folder for the repository", repo)
        if not overwrite:
            raise OutputExistsError("exists (overwrite=True replaces it)", repo)
        if not (repo / ENSEMBLE / "config.pbtxt").is_file():
            raise StdcError("is not a model repository written by stdc export triton, so it is not replaced; "
                            "choose another folder", repo)
    return repo


def write_ops(folder: Path, modules: tuple[str, ...]) -> None:
    """``folder/stdc_ops``: the package modules a model.py runs, copied as they are, and
    the helpers every model.py shares."""
    ops = folder / "stdc_ops"
    ops.mkdir()
    text = "The helpers every model.py shares."
    if modules:
        text = (f"stdc-deploy {__version__}'s {', '.join(modules)} (copied unchanged; numpy and OpenCV only) and "
                "the helpers every model.py shares.")
    (ops / "__init__.py").write_text(f'"""{text}"""\n')
    package = Path(__file__).resolve().parent.parent
    for module in modules:
        shutil.copyfile(package / f"{module}.py", ops / f"{module}.py")
    shutil.copyfile(TEMPLATE_DIR / "shared.py", ops / "shared.py")


def write_repository(root: Path, configs: Mapping[str, object], network: Network, readme: str) -> None:
    from google.protobuf import text_format

    for name, config in configs.items():
        version = root / name / "1"
        version.mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(text_format.MessageToString(config))
        if name == NET:
            shutil.copyfile(network.source, version / network.file_name)
        if config.backend == "python":
            template, modules = PYTHON_MODELS[name]
            shutil.copyfile(TEMPLATE_DIR / f"{template}.py", version / "model.py")
            write_ops(version, modules)
    (root / "README.txt").write_text(readme)


def readme_text(network: Network, repo_name: str, *, max_batch: int, kind: str, fp16: bool) -> str:
    """The repository's README.txt: the models, what Triton needs, how to run and call it."""
    meta, (height, width) = network.metadata, network.size
    packages = " ".join(TRITON_PACKAGES + (("onnxruntime",) if not network.platform else ()))
    accelerated = network.platform == "onnxruntime_onnx" and kind == "gpu"
    runtime = {"onnxruntime_onnx": "Triton's onnxruntime backend" + (
                   f" with ONNX Runtime's TensorRT accelerator ({accelerator_precision(meta, fp16)})" if accelerated
                   else " on the CPU"),
               "tensorrt_plan": "Triton's TensorRT backend (model.plan)",
               "": "ONNX Runtime on the CPU inside the Python backend (model.onnx beside model.py)"}[network.platform]
    notes = []
    if network.platform == "tensorrt_plan":
        notes.append(f"model.plan is a TensorRT engine built with TensorRT {network.tensorrt_version}. Triton loads a "
                     "plan only with the TensorRT version it was built with, on the GPU model it was built for: use "
                     f"the Triton release that ships TensorRT {network.tensorrt_version} (NVIDIA's Frameworks Support "
                     "Matrix lists them), or rebuild the engine inside that release's container.")
    if accelerated:
        notes.append("TensorRT builds its engine when stdc_net loads (the warmup; minutes) and caches it at "
                     f"{ORT_TRT_CACHE_PATH} inside the container: mount a volume there to keep it across restarts.")
    notes = "".join(textwrap.fill(note, 100) + "\n\n" for note in notes)
    docker = [f"docker run --rm{' --gpus all' if kind == 'gpu' else ''} -p 8000:8000 -p 8001:8001 -p 8002:8002",
              f'-v "$PWD/{repo_name}:/models"']
    if accelerated:
        docker.append(f'-v "$PWD/trt-cache:{ORT_TRT_CACHE_PATH}"')
    docker.append("stdc-triton tritonserver --model-repository=/models")
    docker = " \\\n        ".join(docker)
    net_line = textwrap.fill(f"the network, input -> logits FP32 [{meta.num_classes}, H, W]: {runtime}.", 100,
                             initial_indent=f"  {NET:<10} ", subsequent_indent=" " * 13)
    return f"""\
Triton Inference Server model repository: {meta.model_name}, {meta.num_classes} classes, network input {height}x{width},
written by stdc-deploy {__version__} from {network.source.name}.

Models
  {ENSEMBLE:<10} ensemble: image -> labels. Each batch item is one encoded image (PNG, JPEG, ...),
             TYPE_STRING [1]; its labels are a UINT8 [-1, -1] map of train ids at the image's own size.
             The images of one request must share a size (their label maps form one tensor).
  {PRE:<10} Python backend: image -> input FP32 [3, {height}, {width}] and size INT32 [2] (height, width).
             Decoding (OpenCV) and normalisation are stdc-deploy's own ({PROTOCOL} protocol), copied
             into {PRE}/1/stdc_ops; an image that cannot be decoded fails its own request only.
{net_line}
  {POST:<10} Python backend: logits + size -> labels ({PROTOCOL} protocol: bilinear align_corners
             resize to the image's size, then argmax), stdc-deploy's own code in {POST}/1/stdc_ops.
Every config.pbtxt lists the class names, mean, std, network input size and protocol in its
parameters; the parameter "metadata" holds them all as one JSON object. Every model has
max_batch_size {max_batch} (an ensemble's may not exceed its members').

Python packages
The Python-backend models need these packages in Triton's Python environment (not stdc-deploy,
not PyTorch):
    pip install {packages}
As a Docker image (<yy.mm>: the Triton release, e.g. 25.01):
    FROM nvcr.io/nvidia/tritonserver:<yy.mm>-py3
    RUN pip install --no-cache-dir {packages}

{notes}Run
    docker build -t stdc-triton .   # with the Dockerfile above
    {docker}
    curl -sf localhost:8000/v2/health/ready && echo ready

Client (pip install 'tritonclient[http]'; tritonclient.grpc works alike on port 8001)
    import numpy as np
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient("localhost:8000")
    with open("frame.png", "rb") as f:
        images = np.array([[f.read()]], dtype=object)  # a batch of one encoded image
    image = httpclient.InferInput("image", list(images.shape), "BYTES")
    image.set_data_from_numpy(images, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("labels", binary_data=True)]
    labels = client.infer("{ENSEMBLE}", [image], outputs=wanted).as_numpy("labels")[0]  # HxW uint8 train ids
    names = client.get_model_config("{ENSEMBLE}")["parameters"]["class_names"]["string_value"]  # JSON list
"""


def export_triton(model: str | os.PathLike, repo: str | os.PathLike, *, size: tuple[int, int] | None = None,
                  max_batch: int = 8, instances: int = 1, kind: str = "gpu", net: str = "onnx", fp16: bool = False,
                  overwrite: bool = False) -> TritonExportResult:
    """Write a Triton model repository at ``repo`` serving ``model`` (see the module docstring).

    ``size``: the network input (height, width) of a dynamic model (default: the size it was
    verified at); ``max_batch``: every model's ``max_batch_size``; ``instances``: instances
    of each model; ``kind``: where ``stdc_net`` runs (``gpu`` or ``cpu``); ``net``:
    ``onnx`` (Triton's onnxruntime backend) or ``python`` (ONNX Runtime in the Python
    backend, CPU only); ``fp16``: the TensorRT accelerator's precision. The repository is
    written atomically; ``overwrite`` replaces one this function wrote before.
    """
    start = time.perf_counter()
    check_options(max_batch=max_batch, instances=instances, kind=kind, net=net, fp16=fp16)
    model_config_pb2()  # before any work
    network = plan_network(model, size=size, max_batch=max_batch, kind=kind, net=net, fp16=fp16)
    repo = check_repository_output(repo, network.source, overwrite=overwrite)
    configs = build_configs(network, max_batch=max_batch, instances=instances, kind=kind, fp16=fp16)
    check_repository(configs)
    with atomic_output(repo) as tmp:
        readme = readme_text(network, repo.name, max_batch=max_batch, kind=kind, fp16=fp16)
        write_repository(tmp, configs, network, readme)
        written = read_repository(tmp)
        if written != configs:
            raise StdcError("the written model configurations do not parse back as built", repo)
        check_repository(written)
        if repo.exists():  # moved into the hidden folder, which is removed with it
            os.replace(repo, Path(tempfile.mkdtemp(dir=tmp.parent)) / "replaced")
    size_bytes = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())
    return TritonExportResult(repo, network.metadata, {name: c.platform or c.backend for name, c in configs.items()},
                              network.size, max_batch, size_bytes, time.perf_counter() - start)
