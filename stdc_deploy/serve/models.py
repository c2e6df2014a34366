"""The two served models and their Open Inference Protocol descriptions.

``stdc``
    input ``image`` (BYTES, one encoded image per batch item, shape [N, 1]) -> output
    ``labels`` (UINT8, [N, H, W] at the images' own size): what ``stdc infer`` writes as a
    mask for that image (same decoding, pre-processing and protocol).
``stdc_net``
    input ``input`` (FP32 NCHW, normalised: the ONNX contract) -> output ``logits``
    (FP32 NCHW at the input resolution), for clients that pre-process themselves.

Both are Triton-style ``max_batch_size > 0`` models: shapes in the metadata carry a
leading -1 batch dimension, dims in the config leave it out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .._version import __version__
from ..core.metadata import ArtifactMetadata

IMAGE_MODEL, NET_MODEL = "stdc", "stdc_net"
VERSION = "1"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    dims: tuple[int, ...]  # without the batch dimension; -1 = variable

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *self.dims]}

    def config(self) -> dict:
        return {"name": self.name, "data_type": "TYPE_STRING" if self.datatype == "BYTES" else f"TYPE_{self.datatype}",
                "dims": list(self.dims)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


def model_specs(metadata: ArtifactMetadata, input_size: tuple[int, int], static: bool, backend: str) -> dict[str, ModelSpec]:
    height, width = input_size if static else (-1, -1)
    platform = f"stdc-deploy/{backend}"
    return {
        IMAGE_MODEL: ModelSpec(IMAGE_MODEL, (TensorSpec("image", "BYTES", (1,)),),
                               (TensorSpec("labels", "UINT8", (-1, -1)),), platform),
        NET_MODEL: ModelSpec(NET_MODEL, (TensorSpec(metadata.input_name, "FP32", (3, height, width)),),
                             (TensorSpec(metadata.output_name, "FP32", (metadata.num_classes, height, width)),),
                             platform),
    }


def model_parameters(metadata: ArtifactMetadata, input_size: tuple[int, int], protocol: str) -> dict[str, str]:
    """What a client needs to use the models: classes, normalisation, input size, protocol."""
    values = {
        "class_names": list(metadata.class_names), "num_classes": metadata.num_classes,
        "mean": list(metadata.mean), "std": list(metadata.std), "color_order": metadata.color_order,
        "input_size": f"{input_size[0]}x{input_size[1]}", "protocol": protocol, "arch": metadata.arch,
        "variant": metadata.variant, "precision": metadata.precision,
    }
    params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}
    params["metadata"] = json.dumps(values)  # all of it in one string (what Ultralytics' Triton client reads)
    return params


def model_metadata(spec: ModelSpec) -> dict:
    return {"name": spec.name, "versions": [VERSION], "platform": spec.platform,
            "inputs": [t.metadata() for t in spec.inputs], "outputs": [t.metadata() for t in spec.outputs]}


def model_config(spec: ModelSpec, parameters: dict[str, str], *, max_batch: int, max_delay_ms: float,
                 max_queue: int) -> dict:
    """Triton's JSON form of ``ModelConfig`` (what ``/v2/models/{m}/config`` returns)."""
    return {
        "name": spec.name, "platform": spec.platform, "backend": "stdc-deploy", "max_batch_size": max_batch,
        "input": [t.config() for t in spec.inputs], "output": [t.config() for t in spec.outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": int(max_delay_ms * 1000),
                             "default_queue_policy": {"max_queue_size": max_queue}},
        "instance_group": [{"name": spec.name, "count": 1, "kind": "KIND_CPU"}],
        "parameters": {k: {"string_value": v} for k, v in parameters.items()},
    }


def server_metadata() -> dict:
    return {"name": "stdc-deploy", "version": __version__,
            "extensions": ["binary_tensor_data", "model_configuration", "statistics"]}
