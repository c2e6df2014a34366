"""The transport-free server: validates requests, batches them and runs them through the
same three-stage pipeline as ``stdc infer``.

    server = ModelServer(Segmenter("models/stdc1.onnx"), max_batch=8, max_delay_ms=5, max_queue=32)
    response = await server.infer(InferRequest("stdc", [Tensor.of("image", images)]))
    server.close()

Dynamic batching: requests wait in one FIFO queue. A group is formed when the pipeline can
take one: the first waiting request, then every following request of the same kind (and,
for ``stdc_net``, the same input size) until ``max_batch`` images, waiting up to
``max_delay_ms`` after the first request's arrival for more. While the network is busy
requests pile up, so batches grow with the load by themselves. Decoding + pre-processing,
inference and post-processing (+ PNG encoding for ``/v1/segment``) overlap in three threads
(:func:`~stdc_deploy.pipeline.run_pipeline`). A full queue refuses at once (503) instead of
growing memory; a request that fails (undecodable image) fails alone.

The HTTP and gRPC front ends (:mod:`.http`, :mod:`.grpc`) only translate the wire format.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..pipeline import Stage, run_pipeline
from ..segmenter import Segmenter, check_image
from ..errors import StdcError
from .models import (IMAGE_MODEL, NET_MODEL, VERSION, ModelSpec, model_config, model_metadata, model_parameters,
                     model_specs, server_metadata)
from .stats import ModelStats
from .tensors import InferRequest, InferResponse, ServeError, Tensor

_POLL_S = 0.05


@dataclass
class _Job:
    model: str
    key: tuple  # jobs batch together only with equal keys
    count: int  # images in this request
    payload: Any  # list of encoded images (stdc) or an (n, 3, H, W) float32 array (stdc_net)
    finish: Callable[[list[np.ndarray], list[np.ndarray]], Any] | None  # (images, labels) -> result, post stage
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float = 0.0
    images: list[np.ndarray] | None = None  # decoded (stdc)
    error: ServeError | None = None


class ModelServer:
    """Serves ``stdc`` and ``stdc_net`` from one opened :class:`Segmenter` (borrowed: the
    caller closes it after :meth:`close`)."""

    def __init__(self, segmenter: Segmenter, *, max_batch: int = 8, max_delay_ms: float = 5.0,
                 max_queue: int = 32):
        if max_batch < 1 or max_queue < 1 or max_delay_ms < 0:
            raise StdcError(f"max_batch and max_queue must be >= 1 and max_delay_ms >= 0, got {max_batch}, "
                            f"{max_queue}, {max_delay_ms}")
        self.segmenter = segmenter
        self.max_batch, self.max_delay_s, self.max_queue = max_batch, max_delay_ms / 1e3, max_queue
        metadata = segmenter.metadata
        self.static = metadata.input_height is not None
        self.specs: dict[str, ModelSpec] = model_specs(metadata, segmenter.input_size, self.static,
                                                       segmenter.backend.name)
        self.parameters = model_parameters(metadata, segmenter.input_size, segmenter.protocol)
        self.configs = {name: model_config(spec, self.parameters, max_batch=max_batch, max_delay_ms=max_delay_ms,
                                           max_queue=max_queue) for name, spec in self.specs.items()}
        kind = "KIND_GPU" if segmenter.backend.device.startswith("cuda") else "KIND_CPU"
        for config in self.configs.values():
            config["instance_group"][0]["kind"] = kind
        self.stats = {name: ModelStats(name) for name in self.specs}
        self._pending: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._in_flight = 0  # accepted and not yet answered
        self._closing = False
        self.drained = [0, 0]  # since accepting stopped: [answered, refused with 503]
        self._consumer = threading.Thread(target=self._run, name="stdc-serve", daemon=True)
        self._consumer.start()

    # -- what the protocol asks about -------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return not self._closing and self._consumer.is_alive()

    def server_metadata(self) -> dict:
        return server_metadata()

    def model(self, name: str, version: str | None = None) -> ModelSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise ServeError(404, f"unknown model {name!r}; this server has {', '.join(self.specs)}")
        if version not in (None, "", VERSION):
            raise ServeError(404, f"model {name!r} has no version {version!r}; it has version {VERSION}")
        return spec

    def model_metadata(self, name: str, version: str | None = None) -> dict:
        return model_metadata(self.model(name, version))

    def model_config(self, name: str, version: str | None = None) -> dict:
        return self.configs[self.model(name, version).name]

    def statistics(self, name: str | None = None, version: str | None = None) -> dict:
        """Triton's statistics extension: ``{"model_stats": [...]}``."""
        names = [self.model(name, version).name] if name else list(self.specs)
        return {"model_stats": [self.stats[n].triton(VERSION) for n in names]}

    def metrics(self) -> str:
        """Prometheus text exposition of every model's counters and the queue depth."""
        from .stats import prometheus

        return prometheus(self.stats.values(), queue_depth=len(self._pending), in_flight=self._in_flight)

    # -- requests ---------------------------------------------------------------------------------
    async def infer(self, request: InferRequest) -> InferResponse:
        """Validate, queue, await. ServeError: 400 bad request, 404 unknown model, 503 full/closing."""
        spec = self.model(request.model, request.version)
        stats = self.stats[spec.name]
        try:
            job = self._job(spec, request)
            future = self._submit(job)
        except ServeError as exc:
            stats.fail(exc.status)
            raise
        result = await asyncio.wrap_future(future)
        wanted = request.outputs or [t.name for t in spec.outputs]
        return InferResponse(spec.name, VERSION, [Tensor.of(name, result) for name in wanted], request.id)

    async def segment(self, data: bytes, finish: Callable[[np.ndarray, np.ndarray], Any]) -> Any:
        """One encoded image through ``stdc``; ``finish(image, labels)`` runs in the
        post-processing thread (encode the answer there, off the event loop)."""
        stats = self.stats[IMAGE_MODEL]
        job = _Job(IMAGE_MODEL, (IMAGE_MODEL,), 1, [data], lambda images, labels: finish(images[0], labels[0]))
        try:
            future = self._submit(job)
        except ServeError as exc:
            stats.fail(exc.status)
            raise
        return await asyncio.wrap_future(future)

    def _job(self, spec: ModelSpec, request: InferRequest) -> _Job:
        inputs = {t.name: t for t in request.inputs}
        expected = spec.inputs[0]
        if set(inputs) != {expected.name}:
            given = ", ".join(repr(n) for n in inputs) or "none"
            raise ServeError(400, f"model {spec.name!r} takes one input {expected.name!r}, got {given}")
        for name in request.outputs or ():
            if spec.output(name) is None:
                raise ServeError(400, f"model {spec.name!r} has no output {name!r} (it has {spec.outputs[0].name!r})")
        tensor = inputs[expected.name]
        if tensor.datatype != expected.datatype:
            raise ServeError(400, f"input {tensor.name!r}: datatype {tensor.datatype}, expected {expected.datatype}")
        shape = tensor.shape
        if len(shape) != len(expected.dims) + 1 or any(want not in (-1, got) for want, got in zip(expected.dims, shape[1:])):
            want = ", ".join(str(d) for d in (-1, *expected.dims))
            raise ServeError(400, f"input {tensor.name!r}: shape {list(shape)}, expected [{want}] (-1: any)")
        count = shape[0]
        if count < 1 or count > self.max_batch:
            raise ServeError(400, f"input {tensor.name!r}: batch of {count}; this model takes 1 to {self.max_batch}")
        if spec.name == IMAGE_MODEL:
            return _Job(spec.name, (IMAGE_MODEL,), count, list(tensor.data.reshape(-1)), None)
        batch = np.ascontiguousarray(tensor.data, dtype=np.float32)
        if not np.isfinite(batch).all():
            raise ServeError(400, f"input {tensor.name!r}: contains NaN or infinity")
        return _Job(spec.name, (NET_MODEL, *batch.shape[2:]), count, batch, None)

    def check_capacity(self) -> None:
        """ServeError 503 when a request would be refused now (front ends call this before
        reading a body, so refusals under overload cost nothing)."""
        if self._closing:
            raise ServeError(503, "the server is shutting down")
        if len(self._pending) >= self.max_queue:
            raise ServeError(503, f"queue full ({self.max_queue} requests waiting); retry later")

    def _submit(self, job: _Job) -> concurrent.futures.Future:
        with self._cond:
            if self._closing:
                raise ServeError(503, "the server is shutting down")
            if len(self._pending) >= self.max_queue:
                raise ServeError(503, f"queue full ({self.max_queue} requests waiting); retry later")
            self._pending.append(job)
            self._in_flight += 1
            self._cond.notify_all()
        return job.future

    # -- the pipeline -----------------------------------------------------------------------------
    def _groups(self):
        """Batches of jobs, formed when the pre-processing stage asks for the next one."""
        while True:
            with self._cond:
                while not self._pending:
                    if self._closing:
                        return
                    self._cond.wait(_POLL_S)
                first = self._pending.popleft()
                group, images = [first], first.count
                deadline = first.enqueued + self.max_delay_s
                while images < self.max_batch:
                    if self._pending:
                        head = self._pending[0]
                        if head.key != first.key or images + head.count > self.max_batch:
                            break
                        group.append(self._pending.popleft())
                        images += head.count
                        continue
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0 or self._closing:
                        break
                    self._cond.wait(remaining)
            yield group

    def _prepare(self, group: list[_Job]):
        start = time.perf_counter()
        for job in group:
            job.started = start
        try:
            if group[0].model == NET_MODEL:
                tensor = np.concatenate([job.payload for job in group]) if len(group) > 1 else group[0].payload
                return group, tensor
            for job in group:
                try:
                    job.images = _decode(job.payload)
                except StdcError as exc:  # ServeError or a too-small image: this request only
                    job.error = exc if isinstance(exc, ServeError) else ServeError(400, f"input 'image': {exc}")
                    continue
                if len({im.shape[:2] for im in job.images}) > 1:
                    job.error = ServeError(400, "input 'image': images of one request must share a size "
                                                "(send one image per request)")
            good = [im for job in group if job.error is None for im in job.images]
            return group, (self.segmenter.preprocess(good) if good else None)
        except BaseException as exc:  # noqa: BLE001 - answered per request, the pipeline goes on
            return self._fail(group, exc), None
        finally:
            self._record(group, "compute_input", start, images=0)

    def _infer(self, item):
        group, tensor = item
        start = time.perf_counter()
        try:
            if tensor is None:
                return group, None
            # stdc_net answers logits at the input size (its contract); stdc only needs labels
            infer = self.segmenter.infer if group[0].model == NET_MODEL else self.segmenter.infer_native
            return group, infer(tensor)
        except BaseException as exc:  # noqa: BLE001
            return self._fail(group, exc), None
        finally:
            self._record(group, "compute_infer", start, images=0 if tensor is None else len(tensor))

    def _post(self, item) -> None:
        group, logits = item
        start = time.perf_counter()
        offset = 0
        for job in group:
            if job.error is not None or logits is None:
                self._answer(job, error=job.error or ServeError(500, "inference failed"))
                continue
            part = logits[offset:offset + job.count]
            offset += job.count
            try:
                if job.model == NET_MODEL:
                    self._answer(job, result=part)
                    continue
                labels = self.segmenter.postprocess(part, [im.shape[:2] for im in job.images])
                self._answer(job, result=job.finish(job.images, labels) if job.finish else np.stack(labels))
            except BaseException as exc:  # noqa: BLE001
                self._answer(job, error=ServeError(500, f"post-processing failed: {exc}"))
        self._record(group, "compute_output", start, images=0)

    def _fail(self, group: list[_Job], exc: BaseException) -> list[_Job]:
        for job in group:
            if job.error is None:
                job.error = exc if isinstance(exc, ServeError) else ServeError(500, f"{type(exc).__name__}: {exc}")
        return group

    def _answer(self, job: _Job, *, result=None, error: ServeError | None = None) -> None:
        now = time.perf_counter()
        stats = self.stats[job.model]
        if error is None:
            stats.succeed(job.count, queue_s=job.started - job.enqueued, total_s=now - job.enqueued)
        else:
            stats.fail(error.status)
        with self._cond:
            self._in_flight -= 1
            if self._closing:
                self.drained[error is not None and error.status == 503] += 1
            self._cond.notify_all()
        _set(job.future, result=result, error=error)

    def _record(self, group: list[_Job], phase: str, start: float, images: int) -> None:
        """Time of one phase of a batch; ``images``: how many the network ran (compute_infer)."""
        self.stats[group[0].model].phase(phase, time.perf_counter() - start, images)

    def _run(self) -> None:
        stages = [Stage("pre", self._prepare, background=True), Stage("infer", self._infer),
                  Stage("post", self._post, background=True)]
        for _ in run_pipeline(self._groups(), stages, queue_size=1):
            pass

    # -- lifetime ---------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests accepted and not yet answered."""
        return self._in_flight

    def stop_accepting(self) -> None:
        """Readiness off; new requests get 503; accepted ones are still answered."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self.drained = [0, 0]
            self._cond.notify_all()

    def refuse_waiting(self) -> int:
        """Answer 503 to every request not yet in a batch (a drain that ran out of time)."""
        with self._cond:
            waiting = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in waiting:
            self._answer(job, error=ServeError(503, "the server is shutting down"))
        return len(waiting)

    def close(self, drain_s: float = 10.0) -> int:
        """Refuse new requests, answer the accepted ones (those not in a batch within
        ``drain_s`` get 503), wait for the batches in the pipeline, stop the threads.
        Returns how many requests were answered (not refused) since accepting stopped."""
        self.stop_accepting()
        deadline = time.perf_counter() + drain_s
        with self._cond:
            while self._in_flight and time.perf_counter() < deadline:
                self._cond.wait(_POLL_S)
        self.refuse_waiting()
        self._consumer.join()  # the batches already started finish: the backend is closed only after
        return self.drained[0]


def _decode(data: list) -> list[np.ndarray]:
    images = []
    for i, item in enumerate(data):
        buffer = np.frombuffer(item, np.uint8) if isinstance(item, (bytes, bytearray, memoryview)) else None
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer is not None and buffer.size else None
        if image is None:
            raise ServeError(400, f"input 'image' item {i}: not a decodable image ({len(buffer) if buffer is not None else 0} "
                                  "bytes; send the encoded file: PNG, JPEG, BMP, TIFF, WebP)")
        check_image(image)
        images.append(image)
    return images


def _set(future: concurrent.futures.Future, *, result=None, error: BaseException | None = None) -> None:
    if future.done():  # cancelled: the client went away
        return
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass
