"""The gRPC front end, driven by the unchanged ``tritonclient.grpc`` client."""

import asyncio
import json
import queue
import socket
import sys
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

grpc = pytest.importorskip("grpc", reason="the grpc extra is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the grpc extra is not installed")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from stdc_deploy.errors import MissingDependencyError, StdcError  # noqa: E402
from stdc_deploy.segmenter import Segmenter  # noqa: E402
from stdc_deploy.serve import ModelServer  # noqa: E402
from stdc_deploy.serve.grpc import create_grpc_server  # noqa: E402
from stdc_deploy.synthetic import synthetic_images  # noqa: E402

MAX_BATCH = 4


@dataclass
class Served:
    client: "grpcclient.InferenceServerClient"
    segmenter: Segmenter
    model_server: ModelServer
    address: str
    loop: asyncio.AbstractEventLoop

    def run(self, coroutine, timeout_s: float = 30):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(dynamic_onnx):
    segmenter = Segmenter(dynamic_onnx, protocol="official", threads=1)
    model_server = ModelServer(segmenter, max_batch=MAX_BATCH, max_delay_ms=2, max_queue=16)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-test-loop", daemon=True)
    thread.start()
    address = f"127.0.0.1:{free_port()}"

    async def start():
        server = create_grpc_server(model_server, "127.0.0.1", int(address.split(":")[1]))
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    client = grpcclient.InferenceServerClient(address)
    try:
        yield Served(client, segmenter, model_server, address, loop)
    finally:
        client.close()
        asyncio.run_coroutine_threadsafe(server.stop(1), loop).result(30)
        model_server.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        segmenter.close()


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def image_input(data: bytes, name: str = "image"):
    tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return tensor


def segment(served: Served, image: np.ndarray, **kwargs) -> np.ndarray:
    result = served.client.infer("stdc", [image_input(png(image))], **kwargs)
    return result.as_numpy("labels")


def assert_still_serving(served: Served) -> None:
    image = synthetic_images(1, 48, 80, seed=99)[0]
    np.testing.assert_array_equal(segment(served, image)[0], served.segmenter.predict(image))


def test_health(served):
    client = served.client
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("stdc") and client.is_model_ready("stdc_net")
    assert client.is_model_ready("stdc", "1")
    assert not client.is_model_ready("nope")
    assert not client.is_model_ready("stdc", "7")


def test_metadata(served):
    server = served.client.get_server_metadata()
    assert server.name == "stdc-deploy" and "statistics" in server.extensions
    stdc = served.client.get_model_metadata("stdc", as_json=True)
    assert stdc["versions"] == ["1"]
    assert stdc["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": ["-1", "1"]}]
    assert stdc["outputs"] == [{"name": "labels", "datatype": "UINT8", "shape": ["-1", "-1", "-1"]}]
    net = served.client.get_model_metadata("stdc_net")
    assert net.inputs[0].name == "input" and net.inputs[0].datatype == "FP32"
    assert list(net.inputs[0].shape) == [-1, 3, -1, -1]


def test_model_config(served):
    config = served.client.get_model_config("stdc").config
    assert config.name == "stdc" and config.max_batch_size == MAX_BATCH
    assert [(t.name, model_type(t.data_type), list(t.dims)) for t in config.input] == [("image", "TYPE_STRING", [1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("labels", [-1, -1])]
    assert json.loads(config.parameters["class_names"].string_value) == list(served.segmenter.class_names)
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    net = served.client.get_model_config("stdc_net").config
    classes = served.segmenter.num_classes
    assert [(t.name, list(t.dims)) for t in net.output] == [("logits", [classes, -1, -1])]


def model_type(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(value)


@pytest.mark.parametrize("height, width", [(48, 80), (97, 131), (64, 128)])
def test_labels_equal_predict(served, height, width):
    image = synthetic_images(1, height, width, seed=height)[0]
    result = served.client.infer("stdc", [image_input(png(image))], request_id=f"r{height}",
                                 outputs=[grpcclient.InferRequestedOutput("labels")])
    labels = result.as_numpy("labels")
    assert labels.dtype == np.uint8 and labels.shape == (1, height, width)
    np.testing.assert_array_equal(labels[0], served.segmenter.predict(image))
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == (f"r{height}", "stdc", "1")


def test_concurrent_requests(served):
    images = synthetic_images(10, 56, 88, seed=3) + synthetic_images(2, 40, 72, seed=4)
    answers = queue.Queue()
    for i, image in enumerate(images):
        served.client.async_infer("stdc", [image_input(png(image))], request_id=str(i),
                                  callback=lambda result, error: answers.put((result, error)))
    for _ in images:
        result, error = answers.get(timeout=30)
        assert error is None, error
        i = int(result.get_response().id)
        np.testing.assert_array_equal(result.as_numpy("labels")[0], served.segmenter.predict(images[i]))


def test_stream(served):
    images = synthetic_images(6, 48, 64, seed=5)
    answers = queue.Queue()
    served.client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i, image in enumerate(images):
            served.client.async_stream_infer("stdc", [image_input(png(image))], request_id=str(i))
        served.client.async_stream_infer("stdc", [image_input(b"not an image")], request_id="bad")
        results = [answers.get(timeout=30) for _ in range(len(images) + 1)]
    finally:
        served.client.stop_stream()
    errors = [error for _, error in results if error is not None]
    assert len(errors) == 1 and "not a decodable image" in errors[0].message()
    for result, _ in (r for r in results if r[1] is None):
        i = int(result.get_response().id)
        np.testing.assert_array_equal(result.as_numpy("labels")[0], served.segmenter.predict(images[i]))


def test_net_logits(served):
    image = synthetic_images(1, 64, 128, seed=8)[0]
    batch = served.segmenter.preprocess([image])
    tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    logits = served.client.infer("stdc_net", [tensor]).as_numpy("logits")
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, served.segmenter.infer(batch), rtol=1e-5, atol=1e-5)


def test_typed_contents(served):
    """Clients other than tritonclient may send the typed ``contents`` fields."""
    image = synthetic_images(1, 40, 56, seed=12)[0]
    batch = served.segmenter.preprocess([image])
    with grpc.insecure_channel(served.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="stdc", id="typed")
        request.inputs.add(name="image", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(png(image))
        response = stub.ModelInfer(request)
        assert response.id == "typed" and list(response.outputs[0].shape) == [1, 40, 56]
        labels = np.frombuffer(response.raw_output_contents[0], np.uint8).reshape(40, 56)
        np.testing.assert_array_equal(labels, served.segmenter.predict(image))

        request = service_pb2.ModelInferRequest(model_name="stdc_net")
        request.inputs.add(name="input", datatype="FP32", shape=list(batch.shape)).contents.fp32_contents.extend(
            batch.reshape(-1).tolist())
        response = stub.ModelInfer(request)
        logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(list(response.outputs[0].shape))
        np.testing.assert_allclose(logits, served.segmenter.infer(batch), rtol=1e-5, atol=1e-5)

        request = service_pb2.ModelInferRequest(model_name="stdc_net")
        request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 8, 8]).contents.fp32_contents.extend([0.0] * 5)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "5 values in contents.fp32_contents" in caught.value.details()


def test_statistics(served):
    segment(served, synthetic_images(1, 32, 64, seed=1)[0])
    stats = served.client.get_inference_statistics("stdc").model_stats
    assert [s.name for s in stats] == ["stdc"] and stats[0].version == "1"
    assert stats[0].inference_stats.success.count >= 1 and stats[0].execution_count >= 1
    every = served.client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in every} == {"stdc", "stdc_net"}


def test_message_over_grpc_default_limit(served):
    """A random-noise 1500x1500 PNG is over grpcio's 4 MB default."""
    image = np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8)
    data = png(image)
    assert len(data) > 4 * 2**20
    result = served.client.infer("stdc", [image_input(data)])
    labels = result.as_numpy("labels")  # 2.25 MB back
    np.testing.assert_array_equal(labels[0], served.segmenter.predict(image))


def test_message_limit_is_resource_exhausted(served):
    port = free_port()

    async def start():
        server = create_grpc_server(served.model_server, "127.0.0.1", port, max_message_bytes=1024)
        await server.start()
        return server

    server = served.run(start())
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("stdc", [image_input(b"x" * 2048)])
        assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        client.close()
        served.run(server.stop(0))


def fp32_input(name: str, shape: list[int]):
    tensor = grpcclient.InferInput(name, shape, "FP32")
    tensor.set_data_from_numpy(np.zeros(shape, np.float32))
    return tensor


BAD_REQUESTS = {
    "unknown model": ("nope", lambda: [image_input(png(synthetic_images(1, 32, 32)[0]))], "NOT_FOUND", "unknown model"),
    "wrong input name": ("stdc", lambda: [image_input(png(synthetic_images(1, 32, 32)[0]), name="img")],
                         "INVALID_ARGUMENT", "takes one input 'image'"),
    "wrong datatype": ("stdc", lambda: [fp32_input("image", [1, 1])], "INVALID_ARGUMENT", "datatype FP32"),
    "wrong shape": ("stdc_net", lambda: [fp32_input("input", [1, 4, 8, 8])], "INVALID_ARGUMENT", "shape [1, 4, 8, 8]"),
    "batch too large": ("stdc_net", lambda: [fp32_input("input", [MAX_BATCH + 1, 3, 8, 8])], "INVALID_ARGUMENT",
                        "batch of 5"),
    "undecodable image": ("stdc", lambda: [image_input(b"\x89PNG garbage")], "INVALID_ARGUMENT",
                          "not a decodable image"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_status(served, case):
    model, inputs, status, message = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException) as caught:
        served.client.infer(model, inputs())
    assert caught.value.status() == f"StatusCode.{status}"
    assert message in caught.value.message() and "\n" not in caught.value.message()
    assert_still_serving(served)


def test_bad_bytes_shape_and_output(served):
    data = png(synthetic_images(1, 32, 32)[0])
    tensor = grpcclient.InferInput("image", [1, 2], "BYTES")
    tensor.set_data_from_numpy(np.array([[data, data]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as caught:
        served.client.infer("stdc", [tensor])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "shape [1, 2]" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        served.client.infer("stdc", [image_input(data)], outputs=[grpcclient.InferRequestedOutput("probs")])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "no output 'probs'" in caught.value.message()
    assert_still_serving(served)


def test_unimplemented_rpcs(served):
    with pytest.raises(InferenceServerException) as caught:
        served.client.get_model_repository_index()
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "model repository" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        served.client.get_system_shared_memory_status()
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"


def test_unexpected_error_is_internal(served, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("statistics broke\nsecond line")

    monkeypatch.setattr(served.model_server, "statistics", broken)
    with pytest.raises(InferenceServerException) as caught:
        served.client.get_inference_statistics("stdc")
    assert caught.value.status() == "StatusCode.INTERNAL"
    assert caught.value.message() == "internal error: RuntimeError: statistics broke second line"
    monkeypatch.undo()
    assert served.client.is_server_live()


def test_busy_port_is_one_line_error(served):
    port = int(served.address.split(":")[1])

    async def second():
        return create_grpc_server(served.model_server, "127.0.0.1", port)

    with pytest.raises(StdcError, match=f"cannot serve gRPC on 127.0.0.1:{port}"):
        served.run(second())


def test_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "stdc-deploy\[grpc\]"'):
        create_grpc_server(None, "127.0.0.1", 0)
