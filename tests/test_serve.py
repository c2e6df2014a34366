"""`stdc serve`: the Open Inference Protocol over HTTP with tritonclient unchanged, /v1/segment,
dynamic batching, bad requests, the queue limit and shutdown."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from stdc_deploy.segmenter import Segmenter  # noqa: E402
from stdc_deploy.serve import InferRequest, ModelServer, ServeError, Tensor  # noqa: E402
from stdc_deploy.serve.runner import ServeOptions, run  # noqa: E402
from stdc_deploy.serve.tensors import decode_bytes, encode_bytes, from_bytes  # noqa: E402
from stdc_deploy.synthetic import synthetic_images  # noqa: E402
from stdc_deploy.visualize import colorize  # noqa: E402

MAX_BODY = 2 * 2**20


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


class Running:
    def __init__(self, segmenter, **server_options):
        self.model_server = ModelServer(segmenter, **server_options)
        self.stop = threading.Event()
        started = threading.Event()
        ports = {}

        def ready(http_port, grpc_port):
            ports["http"] = http_port
            started.set()

        options = ServeOptions("127.0.0.1", 0, None, MAX_BODY, drain_s=5)
        self.thread = threading.Thread(target=run, args=(self.model_server, options, ready, self.stop), daemon=True)
        self.thread.start()
        assert started.wait(30), "server did not start"
        self.url = f"127.0.0.1:{ports['http']}"

    def close(self):
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def segmenter(dynamic_onnx):
    with Segmenter(dynamic_onnx, protocol="official", threads=1) as seg:
        yield seg


@pytest.fixture(scope="module")
def server(segmenter):
    running = Running(segmenter, max_batch=4, max_delay_ms=40, max_queue=16)
    yield running
    running.close()


@pytest.fixture(scope="module")
def images():
    return synthetic_images(2, 90, 150, seed=11)[:1] + synthetic_images(1, 120, 96, seed=12)


def image_input(data: bytes, name: str = "image") -> "httpclient.InferInput":
    tensor = httpclient.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=object))
    return tensor


def post(url: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(url, timeout=30)
    conn.request("POST", path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


# -- the protocol with tritonclient ------------------------------------------------------------
def test_health_metadata_and_config(server, segmenter):
    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("stdc") and client.is_model_ready("stdc_net", "1")
    assert client.get_server_metadata()["name"] == "stdc-deploy"
    meta = client.get_model_metadata("stdc")
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": "labels", "datatype": "UINT8", "shape": [-1, -1, -1]}]
    net = client.get_model_metadata("stdc_net", "1")
    assert net["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 3, -1, -1]}  # dynamic model
    config = client.get_model_config("stdc")
    assert config["max_batch_size"] == 4
    assert config["input"] == [{"name": "image", "data_type": "TYPE_STRING", "dims": [1]}]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 40000
    params = config["parameters"]
    assert json.loads(params["class_names"]["string_value"]) == list(segmenter.class_names)
    assert params["input_size"]["string_value"] == "64x128"
    assert json.loads(params["metadata"]["string_value"])["protocol"] == "official"
    index = client.get_model_repository_index()
    assert {m["name"] for m in index} == {"stdc", "stdc_net"}
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope")
    assert not client.is_model_ready("stdc", "2")


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_labels_equal_the_segmenter(server, segmenter, images, compression):
    client = httpclient.InferenceServerClient(server.url)
    for image in images:
        result = client.infer("stdc", [image_input(png(image))], request_compression_algorithm=compression,
                              response_compression_algorithm=compression)
        labels = result.as_numpy("labels")
        assert labels.dtype == np.uint8 and labels.shape == (1, *image.shape[:2])
        np.testing.assert_array_equal(labels[0], segmenter.predict(image))


def test_jpeg_and_version_route(server, segmenter, images):
    client = httpclient.InferenceServerClient(server.url)
    jpeg = cv2.imencode(".jpg", images[0], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    labels = client.infer("stdc", [image_input(jpeg)], model_version="1").as_numpy("labels")
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(labels[0], segmenter.predict(decoded))


def test_net_binary_and_json(server, segmenter, images):
    client = httpclient.InferenceServerClient(server.url)
    batch = segmenter.preprocess(images)
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    logits = client.infer("stdc_net", [tensor]).as_numpy("logits")
    np.testing.assert_allclose(logits, segmenter.infer(batch), rtol=1e-5, atol=1e-5)
    small = np.random.default_rng(0).normal(size=(1, 3, 8, 16)).astype(np.float32)
    tensor = httpclient.InferInput("input", list(small.shape), "FP32")
    tensor.set_data_from_numpy(small, binary_data=False)
    out = client.infer("stdc_net", [tensor], outputs=[httpclient.InferRequestedOutput("logits", binary_data=False)])
    np.testing.assert_allclose(out.as_numpy("logits"), segmenter.infer(small), rtol=1e-5, atol=1e-5)


def test_concurrent_requests_are_batched(server, segmenter, images):
    before = {b["batch_size"]: b["compute_infer"]["count"] for b in
              httpclient.InferenceServerClient(server.url).get_inference_statistics("stdc")["model_stats"][0]["batch_stats"]}
    results = [None] * 8

    def send(i):
        client = httpclient.InferenceServerClient(server.url)
        results[i] = client.infer("stdc", [image_input(png(images[i % 2]))]).as_numpy("labels")[0]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, labels in enumerate(results):
        np.testing.assert_array_equal(labels, segmenter.predict(images[i % 2]))
    stats = httpclient.InferenceServerClient(server.url).get_inference_statistics("stdc")["model_stats"][0]
    after = {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]}
    assert any(size > 1 and after[size] > before.get(size, 0) for size in after), after
    assert int(stats["inference_stats"]["queue"]["count"]) >= 8


# -- /v1/segment and /metrics ----------------------------------------------------------------
def test_segment_route(server, segmenter, images):
    image = images[1]
    expected = segmenter.predict(image)
    status, headers, body = post(server.url, "/v1/segment", png(image), {"Content-Type": "image/png"})
    assert status == 200 and headers["content-type"] == "image/png"
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED), expected)
    assert headers["x-image-size"] == f"{image.shape[0]}x{image.shape[1]}"
    status, _, body = post(server.url, "/v1/segment?format=color", png(image))
    color = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(color, colorize(expected, segmenter.num_classes))
    status, _, body = post(server.url, "/v1/segment?format=overlay&alpha=0.3", png(image))
    assert status == 200 and cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == image.shape
    # multipart, as curl -F image=@photo.png sends it
    boundary = "stdcboundary"
    multipart = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                 "Content-Type: image/png\r\n\r\n").encode() + png(image) + f"\r\n--{boundary}--\r\n".encode()
    status, _, body = post(server.url, "/v1/segment", multipart,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED), expected)


def test_metrics(server, images):
    post(server.url, "/v1/segment", png(images[0]))
    text = urllib.request.urlopen(f"http://{server.url}/metrics", timeout=10).read().decode()
    assert re.search(r'^stdc_request_success_total\{model="stdc"\} [1-9]', text, re.M)
    assert re.search(r"^stdc_queue_size 0$", text, re.M)
    assert "# TYPE stdc_compute_infer_duration_seconds_total counter" in text


# -- bad requests: one-line JSON errors, and the server stays ready --------------------------
def _bad_requests(url: str, good: bytes):
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 4 + len(good)}}]}).encode()
    framed = header + len(good).to_bytes(4, "little") + good

    def infer(model, body, length=len(header)):
        return post(url, f"/v2/models/{model}/infer", body, {"Inference-Header-Content-Length": str(length)})

    def with_input(name="image", datatype="BYTES", shape=(1, 1), payload=None):
        payload = payload if payload is not None else len(good).to_bytes(4, "little") + good
        head = json.dumps({"inputs": [{"name": name, "shape": list(shape), "datatype": datatype,
                                       "parameters": {"binary_data_size": len(payload)}}]}).encode()
        return infer("stdc", head + payload, len(head))

    garbage = b"not an image at all"
    return {
        "unknown model": (404, lambda: infer("nope", framed)),
        "wrong input name": (400, lambda: with_input(name="img")),
        "wrong datatype": (400, lambda: with_input(datatype="FP32", payload=np.zeros(4, np.float32).tobytes())),
        "wrong shape": (400, lambda: with_input(shape=(1, 2))),
        "undecodable image": (400, lambda: with_input(payload=len(garbage).to_bytes(4, "little") + garbage)),
        "broken BYTES framing": (400, lambda: with_input(payload=b"\xff\xff\x00\x00abc")),
        "garbage JSON": (400, lambda: infer("stdc", b"{nope" + framed[len(header):], 5)),
        "header length past the body": (400, lambda: infer("stdc", framed, len(framed) + 10)),
        "body over the limit": (413, lambda: infer("stdc", header + b"\0" * (MAX_BODY + 1))),
        "segment: not an image": (400, lambda: post(url, "/v1/segment", garbage)),
        "segment: empty body": (400, lambda: post(url, "/v1/segment", b"")),
        "segment: bad format": (400, lambda: post(url, "/v1/segment?format=jpeg", good)),
        "unknown route": (404, lambda: post(url, "/v2/nothing", b"")),
    }


def test_bad_requests_get_one_line_errors_and_the_server_goes_on(server, segmenter, images):
    good = png(images[0])
    expected = segmenter.predict(images[0])
    client = httpclient.InferenceServerClient(server.url)
    for what, (status, send) in _bad_requests(server.url, good).items():
        got, headers, body = send()
        assert got == status, (what, got, body)
        message = json.loads(body)["error"]
        assert message and "\n" not in message and "Traceback" not in message, (what, message)
        labels = client.infer("stdc", [image_input(good)]).as_numpy("labels")[0]
        np.testing.assert_array_equal(labels, expected)
    assert client.is_server_ready()


# -- the queue limit and shutdown, on the transport-free server -------------------------------
class SlowSegmenter:
    """A Segmenter whose network takes 0.1 s per batch."""

    def __init__(self, segmenter):
        self._seg = segmenter

    def __getattr__(self, name):
        return getattr(self._seg, name)

    def infer(self, batch):
        time.sleep(0.1)
        return self._seg.infer(batch)

    def infer_native(self, batch):
        time.sleep(0.1)
        return self._seg.infer_native(batch)


def test_full_queue_answers_503_at_once_and_recovers(segmenter, images):
    server = ModelServer(SlowSegmenter(segmenter), max_batch=2, max_delay_ms=0, max_queue=3)
    data = np.array([[png(images[0])]], dtype=object)
    expected = segmenter.predict(images[0])

    async def burst(n):
        return await asyncio.gather(*(server.infer(InferRequest("stdc", [Tensor.of("image", data)])) for _ in range(n)),
                                    return_exceptions=True)

    try:
        start = time.perf_counter()
        results = asyncio.run(burst(20))
        refused = [r for r in results if isinstance(r, ServeError)]
        answered = [r for r in results if not isinstance(r, BaseException)]
        assert refused and all(r.status == 503 and "queue full" in r.message for r in refused)
        assert len(answered) + len(refused) == 20 and len(answered) >= 3
        for response in answered:
            np.testing.assert_array_equal(response.outputs[0].data[0], expected)
        assert time.perf_counter() - start < 5
        again = asyncio.run(burst(2))
        assert all(not isinstance(r, BaseException) for r in again)
        assert server.stats["stdc"].failures[503] == len(refused)
    finally:
        server.close()


def test_close_answers_accepted_requests(segmenter, images):
    server = ModelServer(SlowSegmenter(segmenter), max_batch=1, max_delay_ms=0, max_queue=8)
    data = np.array([[png(images[1])]], dtype=object)

    async def main():
        tasks = [asyncio.ensure_future(server.infer(InferRequest("stdc", [Tensor.of("image", data)]))) for _ in range(4)]
        await asyncio.sleep(0.05)
        closing = asyncio.get_running_loop().run_in_executor(None, server.close, 10.0)
        await asyncio.sleep(0.05)
        with pytest.raises(ServeError, match="shutting down"):
            await server.infer(InferRequest("stdc", [Tensor.of("image", data)]))
        results = await asyncio.gather(*tasks)
        return results, await closing

    results, answered = asyncio.run(main())
    assert answered == 4 and len(results) == 4 and not server.ready
    expected = segmenter.predict(images[1])
    for response in results:
        np.testing.assert_array_equal(response.outputs[0].data[0], expected)


def test_drain_that_runs_out_refuses_the_waiting_and_finishes_the_started(segmenter, images):
    server = ModelServer(SlowSegmenter(segmenter), max_batch=1, max_delay_ms=0, max_queue=16)
    data = np.array([[png(images[1])]], dtype=object)
    expected = segmenter.predict(images[1])

    async def main():
        tasks = [asyncio.ensure_future(server.infer(InferRequest("stdc", [Tensor.of("image", data)]))) for _ in range(8)]
        await asyncio.sleep(0.15)
        answered = await asyncio.get_running_loop().run_in_executor(None, server.close, 0.0)
        return await asyncio.gather(*tasks, return_exceptions=True), answered

    results, answered = asyncio.run(main())
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, ServeError)]
    assert len(done) + len(refused) == 8 and refused and all(r.status == 503 for r in refused)
    assert server.drained == [answered, len(refused)] and server.in_flight == 0
    for response in done:  # the batches already started finished before the threads stopped
        np.testing.assert_array_equal(response.outputs[0].data[0], expected)


def test_bytes_codec():
    items = np.array([[b"abc"], [b""], [b"\x00\xff" * 3]], dtype=object)
    raw = encode_bytes(items)
    assert raw[:4] == (3).to_bytes(4, "little")
    np.testing.assert_array_equal(decode_bytes("x", raw, 3), items.reshape(-1))
    with pytest.raises(ServeError, match="left over"):
        decode_bytes("x", raw + b"!", 3)
    with pytest.raises(ServeError, match="claims"):
        decode_bytes("x", raw[:-1], 3)
    with pytest.raises(ServeError, match="bytes do not hold FP32"):
        from_bytes("x", "FP32", [2, 2], b"\0" * 12)


# -- the command ------------------------------------------------------------------------------
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_serve_command_sigterm_drains_and_exits_0(dynamic_onnx, images, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "stdc_deploy", "serve", str(dynamic_onnx), "--port", "0",
                                "--no-grpc", "--precision", "fp32", "--threads", "1", "--max-batch", "2", "--max-delay-ms", "300"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.time() + 60
        while "serving" not in line and time.time() < deadline:
            line = process.stdout.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+)", line).group(1)
        url = f"127.0.0.1:{port}"
        answers = []
        sender = threading.Thread(target=lambda: answers.append(post(url, "/v1/segment", png(images[0]))))
        sender.start()
        time.sleep(0.1)  # the request waits for its batch (300 ms)
        start = time.time()
        process.send_signal(signal.SIGTERM)
        sender.join(30)
        code = process.wait(30)
        assert code == 0 and time.time() - start < 10
        assert answers and answers[0][0] == 200  # answered during the drain
        assert "1 request(s) in flight, 1 answered during the drain" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_command_errors_are_one_line(dynamic_onnx, tmp_path):
    from typer.testing import CliRunner

    from stdc_deploy.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["serve", str(tmp_path / "missing.onnx"), "--no-grpc"])
    assert result.exit_code == 1 and "missing.onnx" in result.output and "Traceback" not in result.output
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", str(dynamic_onnx), "--no-grpc", "--port", str(busy), "--precision", "fp32"])
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{busy}" in result.output
    result = runner.invoke(app, ["serve", str(dynamic_onnx), "--port", "9000", "--grpc-port", "9000"])
    assert result.exit_code == 1 and "--grpc-port 9000" in result.output
