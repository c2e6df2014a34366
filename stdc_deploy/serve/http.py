"""The HTTP front end: Open Inference Protocol REST routes, ``/v1/segment`` and ``/metrics``.

Starlette on uvicorn: an ASGI app is what Ray Serve and most Python hosting wrap, the
routing is explicit, and uvicorn's graceful shutdown drains in-flight requests. The event
loop only parses and frames; decoding, inference, post-processing and PNG encoding run in
the :class:`~stdc_deploy.serve.server.ModelServer` pipeline threads, and compression in a
worker thread.

Routes (``{m}`` a model, each also under ``/versions/{v}``):

- ``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/{m}``,
  ``/v2/models/{m}/ready``, ``/v2/models/{m}/config``, ``/v2/models/{m}/stats``,
  ``/v2/models/stats``, ``POST /v2/repository/index``
- ``POST /v2/models/{m}/infer``: JSON tensors, or the binary tensor extension
  (``Inference-Header-Content-Length``); gzip/deflate request bodies; gzip/deflate
  responses when the client accepts them
- ``POST /v1/segment[?format=labels|color|overlay&alpha=0.5]``: the image as the body
  (or a multipart file) -> ``image/png`` (uint8 train ids for ``labels``)
- ``GET /metrics``: Prometheus text

Errors are ``{"error": "<one line>"}`` with 400 (bad request), 404 (unknown model or
route), 413 (body over the limit), 503 (queue full or shutting down).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import cv2
import numpy as np

from ..errors import MissingDependencyError
from ..visualize import colorize, overlay
from .models import IMAGE_MODEL, VERSION
from .server import ModelServer
from .tensors import InferRequest, InferResponse, ServeError, Tensor, from_bytes, from_list

HEADER_LENGTH = "inference-header-content-length"
SEGMENT_FORMATS = ("labels", "color", "overlay")
COMPRESS_MIN_BYTES = 1024
PNG_LEVEL = 1  # uint8 label maps: ~40 kB for 1024x2048 in ~18 ms (level 9: 3x the time, a few % smaller)


def create_app(server: ModelServer, *, max_body_bytes: int = 64 * 2**20):
    """The ASGI app serving ``server``."""
    try:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.requests import ClientDisconnect, Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route
    except ImportError:
        raise MissingDependencyError('stdc serve needs the serve extra: pip install "stdc-deploy[serve]"') from None

    def error(status: int, message: str) -> Response:
        return JSONResponse({"error": message}, status_code=status)

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            raise ServeError(413, f"request body of {int(length)} bytes is over the limit of {max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise ServeError(413, f"request body is over the limit of {max_body_bytes} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").lower()
        if encoding in ("gzip", "deflate"):
            body = await asyncio.to_thread(_decompress, body, encoding, max_body_bytes)
        elif encoding != "identity":
            raise ServeError(400, f"unsupported Content-Encoding {encoding!r} (use gzip, deflate or none)")
        return body

    async def respond(request: Request, body: bytes, headers: dict[str, str], media_type: str) -> Response:
        accepted = _accepted_encoding(request.headers.get("accept-encoding", ""))
        if accepted and len(body) >= COMPRESS_MIN_BYTES:
            body = await asyncio.to_thread(_compress, body, accepted)
            headers = {**headers, "Content-Encoding": accepted, "Vary": "Accept-Encoding"}
        return Response(body, headers=headers, media_type=media_type)

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ServeError as exc:
                return error(exc.status, exc.message)
            except ClientDisconnect:
                return Response(status_code=499)
        return endpoint

    def model_args(request: Request) -> tuple[str, str | None]:
        return request.path_params["model"], request.path_params.get("version")

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if server.ready else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(server.server_metadata())

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(server.model_metadata(*model_args(request)))

    async def model_ready(request: Request) -> Response:
        server.model(*model_args(request))
        return Response(status_code=200 if server.ready else 503)

    async def model_config(request: Request) -> Response:
        return JSONResponse(server.model_config(*model_args(request)))

    async def model_stats(request: Request) -> Response:
        name, version = request.path_params.get("model"), request.path_params.get("version")
        return JSONResponse(server.statistics(name, version))

    async def repository_index(request: Request) -> Response:
        state = "READY" if server.ready else "UNAVAILABLE"
        return JSONResponse([{"name": name, "version": VERSION, "state": state} for name in server.specs])

    async def infer(request: Request) -> Response:
        name, version = model_args(request)
        server.model(name, version)  # 404 and 503 before reading a body
        try:
            server.check_capacity()
        except ServeError as exc:
            server.stats[name].fail(exc.status)
            raise
        body = await read_body(request)
        infer_request, binary_outputs = _parse_infer(name, version, body, request.headers.get(HEADER_LENGTH))
        response = await server.infer(infer_request)
        body, header_length = await asyncio.to_thread(_encode_infer, response, binary_outputs)
        headers = {} if header_length is None else {"Inference-Header-Content-Length": str(header_length)}
        return await respond(request, body, headers, "application/json" if header_length is None
                             else "application/octet-stream")

    async def segment(request: Request) -> Response:
        what = request.query_params.get("format", "labels")
        if what not in SEGMENT_FORMATS:
            raise ServeError(400, f"format {what!r}: choose one of {', '.join(SEGMENT_FORMATS)}")
        try:
            alpha = float(request.query_params.get("alpha", "0.5"))
        except ValueError:
            alpha = -1.0
        if not 0.0 <= alpha <= 1.0:
            raise ServeError(400, f"alpha {request.query_params.get('alpha')!r}: expected a number from 0 to 1")
        try:
            server.check_capacity()
        except ServeError as exc:
            server.stats[IMAGE_MODEL].fail(exc.status)
            raise
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            data = await _multipart_file(request, max_body_bytes)
        else:
            data = await read_body(request)
        if not data:
            raise ServeError(400, "empty body: send the image file as the body (or as a multipart file)")
        num_classes = server.segmenter.num_classes

        def finish(image: np.ndarray, labels: np.ndarray) -> bytes:
            picture = {"labels": lambda: labels, "color": lambda: colorize(labels, num_classes),
                       "overlay": lambda: overlay(image, labels, num_classes, alpha)}[what]()
            ok, png = cv2.imencode(".png", picture, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
            if not ok:
                raise ServeError(500, "PNG encoding failed")
            return png.tobytes()

        png = await server.segment(data, finish)
        h, w = _png_size(png)
        return Response(png, media_type="image/png",
                        headers={"X-Image-Size": f"{h}x{w}", "X-Num-Classes": str(num_classes),
                                 "X-Model": IMAGE_MODEL})

    async def metrics(request: Request) -> Response:
        return Response(server.metrics(), media_type="text/plain; version=0.0.4")

    async def not_found(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error(404, f"no route {request.method} {request.url.path}")
        if exc.status_code == 405:
            return error(405, f"method {request.method} not allowed on {request.url.path}")
        return error(exc.status_code, str(exc.detail))

    async def internal(request: Request, exc: Exception) -> Response:
        return error(500, f"{type(exc).__name__}: {exc}")

    routes = [
        Route("/v2/health/live", guarded(live)),
        Route("/v2/health/ready", guarded(ready)),
        Route("/v2", guarded(server_metadata)),
        Route("/v2/models/stats", guarded(model_stats)),
        Route("/v2/repository/index", guarded(repository_index), methods=["POST"]),
        Route("/v1/segment", guarded(segment), methods=["POST"]),
        Route("/metrics", guarded(metrics)),
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [
            Route(prefix, guarded(model_metadata)),
            Route(prefix + "/ready", guarded(model_ready)),
            Route(prefix + "/config", guarded(model_config)),
            Route(prefix + "/stats", guarded(model_stats)),
            Route(prefix + "/infer", guarded(infer), methods=["POST"]),
        ]
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found, Exception: internal})


def _parse_infer(model: str, version: str | None, body: bytes,
                 header_length: str | None) -> tuple[InferRequest, dict[str, bool]]:
    """The request, and for each output whether to send it as binary data."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ServeError(400, f"Inference-Header-Content-Length {header_length!r} does not fit a body of "
                                  f"{len(body)} bytes")
        split = int(header_length)
    else:
        split = len(body)
    try:
        header = json.loads(bytes(body[:split]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ServeError(400, f"the request is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise ServeError(400, "the request needs an \"inputs\" list")
    binary = memoryview(body)[split:]
    offset = 0
    inputs = []
    for item in header["inputs"]:
        if not isinstance(item, dict) or not all(k in item for k in ("name", "shape", "datatype")):
            raise ServeError(400, "each input needs \"name\", \"shape\" and \"datatype\"")
        name, datatype, shape = str(item["name"]), str(item["datatype"]), item["shape"]
        size = (item.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ServeError(400, f"input {name!r}: binary_data_size {size!r} runs past the "
                                      f"{len(binary) - offset} binary bytes left")
            inputs.append(from_bytes(name, datatype, shape, binary[offset:offset + size]))
            offset += size
        elif "data" in item:
            inputs.append(from_list(name, datatype, shape, item["data"]))
        else:
            raise ServeError(400, f"input {name!r} has neither \"data\" nor parameters.binary_data_size")
    if offset != len(binary):
        raise ServeError(400, f"{len(binary) - offset} binary bytes after the last input")
    default_binary = bool((header.get("parameters") or {}).get("binary_data_output", False))
    outputs, binary_outputs = None, {}
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list):
            raise ServeError(400, "\"outputs\" must be a list")
        outputs = []
        for item in header["outputs"]:
            if not isinstance(item, dict) or "name" not in item:
                raise ServeError(400, "each requested output needs a \"name\"")
            outputs.append(str(item["name"]))
            binary_outputs[outputs[-1]] = bool((item.get("parameters") or {}).get("binary_data", default_binary))
    request_id = header.get("id")
    return (InferRequest(model, inputs, version=version, id=None if request_id is None else str(request_id),
                         outputs=outputs, parameters=header.get("parameters") or {}),
            _Defaulting(binary_outputs, default_binary))


class _Defaulting(dict):
    def __init__(self, values: dict[str, bool], default: bool):
        super().__init__(values)
        self.default = default

    def __missing__(self, key: str) -> bool:
        return self.default


def _encode_infer(response: InferResponse, binary_outputs: dict[str, bool]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    header = {"model_name": response.model_name, "model_version": response.model_version, "outputs": []}
    if response.id is not None:
        header["id"] = response.id
    blobs = []
    for tensor in response.outputs:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary_outputs[tensor.name]:
            raw = tensor.to_bytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif tensor.datatype == "BYTES":
            try:
                entry["data"] = [item.decode("utf-8") for item in tensor.data.reshape(-1)]
            except UnicodeDecodeError:
                raise ServeError(400, f"output {tensor.name!r} is not UTF-8: request it as binary data") from None
        else:
            entry["data"] = tensor.data.reshape(-1).tolist()
        header["outputs"].append(entry)
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)


def _accepted_encoding(accept: str) -> str | None:
    """gzip or deflate if the client accepts one (q > 0), gzip first."""
    offered = {}
    for part in accept.split(","):
        token, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        offered[token.strip().lower()] = q
    for encoding in ("gzip", "deflate"):
        if offered.get(encoding, 0.0) > 0:
            return encoding
    return None


def _compress(body: bytes, encoding: str) -> bytes:
    return gzip.compress(body, compresslevel=1) if encoding == "gzip" else zlib.compress(body, 1)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    decompressor = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ServeError(400, f"the {encoding} request body is corrupt ({exc})") from None
    if len(out) > limit or decompressor.unconsumed_tail:
        raise ServeError(413, f"the decompressed request body is over the limit of {limit} bytes")
    return out


async def _multipart_file(request, limit: int) -> bytes:
    """The first file of a multipart/form-data body."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ServeError(413, f"request body of {int(length)} bytes is over the limit of {limit} bytes")
    try:
        form = await request.form(max_files=4, max_fields=16, max_part_size=limit)
    except AssertionError:
        raise MissingDependencyError('multipart uploads need python-multipart: pip install "stdc-deploy[serve]"') from None
    except Exception as exc:  # noqa: BLE001 - malformed multipart
        raise ServeError(400, f"cannot read the multipart body ({exc})") from None
    try:
        for _, value in form.multi_items():
            if hasattr(value, "read"):
                return await value.read()
    finally:
        await form.close()
    raise ServeError(400, "the multipart body has no file; send the image as a file field (curl -F image=@photo.png)")


def _png_size(png: bytes) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk."""
    return int.from_bytes(png[20:24], "big"), int.from_bytes(png[16:20], "big")


__all__ = ["create_app", "Tensor"]
