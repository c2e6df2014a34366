"""The gRPC front end: ``inference.GRPCInferenceService`` of the Open Inference Protocol
(KServe v2), as Triton and ``tritonclient.grpc`` speak it.

    server = create_grpc_server(model_server, "0.0.0.0", 8001)   # inside the running event loop
    await server.start()
    ...
    await server.stop(grace=5)

The messages are the protocol's generated code shipped in ``tritonclient`` (the same ones
clients use). Requests are translated into :class:`~.tensors.InferRequest` and answered by
:meth:`ModelServer.infer <.server.ModelServer.infer>` in the same asyncio loop as the HTTP
server. Inputs come from ``raw_input_contents`` (what ``tritonclient`` sends) or the typed
``contents`` fields; outputs go out in ``raw_output_contents``. A refused request ends with
the gRPC status of its :class:`~.tensors.ServeError` (400 INVALID_ARGUMENT, 404 NOT_FOUND,
413 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, else INTERNAL) and a one-line message.
``ModelStreamInfer`` answers each request of a stream as it completes (errors in
``error_message``, the stream goes on). The repository, shared-memory, trace and log RPCs
answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidValue, MissingDependencyError, StdcError
from .models import VERSION
from .server import ModelServer
from .tensors import DATATYPES, InferRequest, InferResponse, ServeError, Tensor, check_shape, from_bytes

if TYPE_CHECKING:
    import grpc.aio

logger = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 2**20  # a 1024x2048 PNG or FP32 tensor fits; grpcio's default is 4 MB

# ServeError.status (HTTP) -> gRPC status code name
STATUS_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}

# protocol datatype -> InferTensorContents field holding it (FP16 has none: raw contents only)
CONTENTS_FIELDS = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}

# RPC -> what it belongs to; these answer UNIMPLEMENTED
UNIMPLEMENTED = {
    "RepositoryIndex": "the model repository extension", "RepositoryModelLoad": "the model repository extension",
    "RepositoryModelUnload": "the model repository extension",
    "SystemSharedMemoryStatus": "system shared memory", "SystemSharedMemoryRegister": "system shared memory",
    "SystemSharedMemoryUnregister": "system shared memory", "CudaSharedMemoryStatus": "CUDA shared memory",
    "CudaSharedMemoryRegister": "CUDA shared memory", "CudaSharedMemoryUnregister": "CUDA shared memory",
    "TraceSetting": "the trace extension", "LogSettings": "the logging extension",
}


def create_grpc_server(model_server: ModelServer, host: str, port: int, *,
                       max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.aio.Server:
    """A ``grpc.aio.Server`` serving ``model_server`` on ``host:port``, bound, not started.

    Call it from the event loop that will run it. StdcError when the address cannot be
    bound; MissingDependencyError without grpcio / tritonclient."""
    grpc, service_pb2, service_pb2_grpc, model_config_pb2 = _import_grpc()
    if max_message_bytes < 1:
        raise InvalidValue("max_message_bytes", f"must be >= 1, got {max_message_bytes}")
    limit = min(max_message_bytes, 2**31 - 1)  # grpcio takes a C int
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),  # else a second server on a busy port binds without error
    ])
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        _Servicer(model_server, service_pb2, model_config_pb2), server)
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    cause = None
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio >= 1.49 raises, older ones return 0
        bound, cause = 0, exc
    if bound == 0:
        raise StdcError(f"cannot serve gRPC on {address}: the port is in use or the address is not this machine's "
                        "(choose another port or host)") from cause
    return server


def _import_grpc():
    try:
        import grpc
        import grpc.aio  # noqa: F401
        from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
    except ImportError as exc:
        raise MissingDependencyError(f'the gRPC server needs grpcio and tritonclient ({exc}): '
                                     'pip install "stdc-deploy[grpc]"') from exc
    return grpc, service_pb2, service_pb2_grpc, model_config_pb2


def _status_code(status: int):
    import grpc

    return grpc.StatusCode[STATUS_CODES.get(status, "INTERNAL")]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_of(exc: Exception) -> ServeError:
    """A ServeError for any failure; unexpected ones are logged with their traceback."""
    if isinstance(exc, ServeError):
        return exc
    logger.error("gRPC request failed", exc_info=exc)
    return ServeError(500, _one_line(f"internal error: {type(exc).__name__}: {exc}"))


def _rpc(method):
    """Ends the call with the mapped gRPC status on any error; the server keeps serving."""

    @functools.wraps(method)
    async def call(self, request, context):
        try:
            return await method(self, request, context)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status, never a crash
            error = _error_of(exc)
        await context.abort(_status_code(error.status), _one_line(str(error)))

    return call


def _unimplemented(rpc: str, what: str):
    async def call(self, request, context):
        import grpc

        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{rpc}: this server does not support {what}")

    call.__name__ = rpc
    return call


class _Servicer:
    """The methods ``add_GRPCInferenceServiceServicer_to_server`` looks up, by RPC name."""

    def __init__(self, model_server: ModelServer, service_pb2, model_config_pb2):
        from google.protobuf import json_format

        self.server, self.pb, self.config_pb, self.json = model_server, service_pb2, model_config_pb2, json_format

    # -- health and metadata ----------------------------------------------------------------------
    @_rpc
    async def ServerLive(self, request, context):
        return self.pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request, context):
        return self.pb.ServerReadyResponse(ready=self.server.ready)

    @_rpc
    async def ModelReady(self, request, context):
        try:
            self.server.model(request.name, request.version)
        except ServeError:  # unknown: not ready (a question, not a failure)
            return self.pb.ModelReadyResponse(ready=False)
        return self.pb.ModelReadyResponse(ready=self.server.ready)

    @_rpc
    async def ServerMetadata(self, request, context):
        return self._parse(self.server.server_metadata(), self.pb.ServerMetadataResponse())

    @_rpc
    async def ModelMetadata(self, request, context):
        return self._parse(self.server.model_metadata(request.name, request.version), self.pb.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request, context):
        config = self._parse(self.server.model_config(request.name, request.version), self.config_pb.ModelConfig())
        return self.pb.ModelConfigResponse(config=config)

    @_rpc
    async def ModelStatistics(self, request, context):
        stats = self.server.statistics(request.name or None, request.version or None)
        return self._parse(stats, self.pb.ModelStatisticsResponse())

    def _parse(self, values: dict, message):
        """The protobuf message of a protocol JSON object (fields it lacks are left out)."""
        return self.json.ParseDict(values, message, ignore_unknown_fields=True)

    # -- inference --------------------------------------------------------------------------------
    @_rpc
    async def ModelInfer(self, request, context):
        return self._response(await self.server.infer(self._request(request)))

    async def ModelStreamInfer(self, request_iterator, context):
        """Each request answered when done (maybe out of order: match by ``id``); at most
        ``max_batch`` of one stream in flight, so a fast sender is slowed, not refused."""
        answers: asyncio.Queue = asyncio.Queue()
        slots = asyncio.Semaphore(self.server.max_batch)
        done = object()

        async def answer(message) -> None:
            try:
                result = self.pb.ModelStreamInferResponse(
                    infer_response=self._response(await self.server.infer(self._request(message))))
            except Exception as exc:  # noqa: BLE001 - reported in the stream, which goes on
                result = self.pb.ModelStreamInferResponse(
                    error_message=_one_line(str(_error_of(exc))),
                    infer_response=self.pb.ModelInferResponse(model_name=message.model_name,
                                                              model_version=message.model_version, id=message.id))
            finally:
                slots.release()
            await answers.put(result)

        async def read() -> None:
            tasks = set()
            try:
                async for message in request_iterator:
                    await slots.acquire()
                    task = asyncio.ensure_future(answer(message))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                await answers.put(done)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await answers.get()) is not done:
                yield item
            await reader  # a failed read (client gone) surfaces here
        finally:
            reader.cancel()

    def _request(self, message) -> InferRequest:
        raw = message.raw_input_contents
        if raw and len(raw) != len(message.inputs):
            raise ServeError(400, f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs "
                                  "(send every input's data there, in the order of inputs, or none)")
        inputs = []
        for i, tensor in enumerate(message.inputs):
            parameters = _parameters(tensor.parameters)
            if "shared_memory_region" in parameters:
                raise ServeError(400, f"input {tensor.name!r}: this server does not support shared memory; "
                                      "send the data in the request")
            if raw:
                if tensor.HasField("contents"):
                    raise ServeError(400, f"input {tensor.name!r}: data both in contents and raw_input_contents")
                item = from_bytes(tensor.name, tensor.datatype, tensor.shape, raw[i])
            else:
                item = _from_contents(tensor)
            item.parameters = parameters
            inputs.append(item)
        outputs = []
        for output in message.outputs:
            parameters = _parameters(output.parameters)
            if "shared_memory_region" in parameters:
                raise ServeError(400, f"output {output.name!r}: this server does not support shared memory")
            if parameters.get("classification"):
                raise ServeError(400, f"output {output.name!r}: this server does not support the classification "
                                      "extension; request the output without class_count")
            outputs.append(output.name)
        return InferRequest(message.model_name, inputs, version=message.model_version or None,
                            id=message.id or None, outputs=outputs or None,
                            parameters=_parameters(message.parameters))

    def _response(self, response: InferResponse):
        message = self.pb.ModelInferResponse(model_name=response.model_name,
                                             model_version=response.model_version or VERSION, id=response.id or "")
        for tensor in response.outputs:
            message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
            message.raw_output_contents.append(tensor.to_bytes())
        return message


def _from_contents(tensor) -> Tensor:
    """A tensor from the typed ``contents`` fields."""
    name, datatype = tensor.name, tensor.datatype
    dims = check_shape(name, tensor.shape)
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    field = CONTENTS_FIELDS.get(datatype)
    if field is None:
        reason = "FP16 data travels only in raw_input_contents" if datatype == "FP16" else "unknown datatype"
        raise ServeError(400, f"input {name!r}: {reason} ({datatype!r})")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise ServeError(400, f"input {name!r}: {len(values)} values in contents.{field} for shape {list(dims)} "
                              f"({count} values; or send the data in raw_input_contents)")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return Tensor(name, datatype, array.reshape(dims))
    try:
        array = np.array(values, dtype=DATATYPES[datatype])
    except (OverflowError, TypeError, ValueError) as exc:
        raise ServeError(400, f"input {name!r}: values do not fit {datatype} ({exc})") from None
    return Tensor(name, datatype, array.reshape(dims))


def _parameters(parameters) -> dict[str, Any]:
    """Protocol parameters (a map of InferParameter) as plain Python values."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


for _rpc_name, _what in UNIMPLEMENTED.items():
    setattr(_Servicer, _rpc_name, _unimplemented(_rpc_name, _what))
