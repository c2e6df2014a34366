"""Run the HTTP and gRPC front ends of one :class:`ModelServer` in one event loop, until a
signal; then drain.

Shutdown on SIGINT / SIGTERM: readiness turns false at once, the listening sockets close,
requests already received are answered (up to ``drain_s``), then the pipeline threads stop.
A second signal stops without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MissingDependencyError, StdcError
from .server import ModelServer

log = logging.getLogger(__name__)
PIPELINE_GRACE_S = 30.0  # after the drain: for batches already in the pipeline to finish


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = 8001  # None: no gRPC
    max_body_bytes: int = 64 * 2**20
    drain_s: float = 10.0


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, or a one-line StdcError saying why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StdcError(f"--host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StdcError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.set_inheritable(True)
    return sock


def run(model_server: ModelServer, options: ServeOptions, on_ready: Callable[[int, int | None], None] | None = None,
        stop: threading.Event | None = None) -> Drain:
    """Serve until SIGINT / SIGTERM (or ``stop`` is set); then drain (:class:`Drain` says how
    it went). ``on_ready(http_port, grpc_port)`` runs once both
    listen (ports resolved when 0 was asked)."""
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError('stdc serve needs the serve extra: pip install "stdc-deploy[serve]"') from None
    from .http import create_app

    app = create_app(model_server, max_body_bytes=options.max_body_bytes)
    create_grpc_server = None
    if options.grpc_port is not None:
        from .grpc import create_grpc_server
    sock = listen(options.host, options.port)
    # uvicorn cancels handlers after its graceful timeout: give the batches already in the
    # pipeline time to finish after the drain refused the waiting requests
    config = uvicorn.Config(app, log_level=logging.getLogger().getEffectiveLevel(), access_log=False,
                            lifespan="off", timeout_graceful_shutdown=options.drain_s + PIPELINE_GRACE_S,
                            timeout_keep_alive=30)
    http = _Server(config, model_server, options.drain_s)

    async def main() -> None:
        grpc_server = None
        if create_grpc_server is not None:  # grpc.aio servers belong to the loop they are made in
            grpc_server = create_grpc_server(model_server, options.host, options.grpc_port,
                                             max_message_bytes=options.max_body_bytes)
            await grpc_server.start()
        watcher = asyncio.ensure_future(_watch(stop, http)) if stop is not None else None
        if on_ready is not None:
            asyncio.get_running_loop().call_later(0.05, on_ready, sock.getsockname()[1], options.grpc_port)
        try:
            await http.serve(sockets=[sock])
        finally:
            if watcher is not None:
                watcher.cancel()
            if grpc_server is not None:
                await grpc_server.stop(0 if http.force_exit else options.drain_s)

    try:
        asyncio.run(main())
    finally:
        sock.close()
        model_server.close(0 if http.force_exit else options.drain_s)
    answered, refused = model_server.drained
    return Drain(http.in_flight_at_stop or 0, answered, refused)


@dataclass(frozen=True)
class Drain:
    """What happened to the requests in flight when shutdown began (and any that arrived on
    open connections during it): answered, or refused with 503 when ``drain_s`` ran out."""

    in_flight: int
    answered: int
    refused: int


async def _watch(stop: threading.Event, server) -> None:
    while not stop.is_set():
        await asyncio.sleep(0.05)
    server.handle_exit(signal.SIGTERM, None)


try:
    import uvicorn as _uvicorn

    _Base = _uvicorn.Server
except ImportError:  # the serve extra is missing: run() says so
    _Base = object


class _Server(_Base):
    """uvicorn's server with shutdown tied to the model server: the first signal turns
    readiness off and drains; signals are not re-raised afterwards (the command exits 0
    after a clean drain)."""

    def __init__(self, config, model_server: ModelServer, drain_s: float):
        super().__init__(config)
        self.model_server, self.drain_s = model_server, drain_s
        self.in_flight_at_stop: int | None = None

    def handle_exit(self, sig, frame) -> None:
        if self.in_flight_at_stop is None:
            self.in_flight_at_stop = self.model_server.in_flight
            self.model_server.stop_accepting()
            timer = threading.Timer(self.drain_s, self.model_server.refuse_waiting)
            timer.daemon = True
            timer.start()
        elif sig == signal.SIGINT or sig == signal.SIGTERM:  # a second signal: stop now
            self.model_server.refuse_waiting()
            self.force_exit = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
