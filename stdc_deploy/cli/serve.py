"""`stdc serve`: the model behind the Open Inference Protocol (HTTP + gRPC) and /v1/segment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import StdcError
from ..preprocess import PROTOCOLS
from ..segmenter import Segmenter
from .common import BACKEND_HELP, announce_default_model, PrecisionOption, ThreadsOption, command, console, err_console, parse_size

# On a 2-core CPU (STDC1 512x1024, OpenVINO bf16, 1024x2048 PNGs, 16 HTTP clients, one run):
# batches of up to 8 gave 0.62x the in-process rate, one request per batch 1.01x (the
# pipeline still overlaps decoding, inference and post-processing). GPUs gain from batches.
CPU_MAX_BATCH, GPU_MAX_BATCH = 1, 8


@command
def serve(
    model: Annotated[Path | None, typer.Argument(
        metavar="[MODEL]", help="Checkpoint, .onnx or engine. Default: the best artifact in engines/ or models/.")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="HTTP port (0: any free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", min=1, max=65535, help="gRPC port.")] = 8001,
    grpc: Annotated[bool, typer.Option("--grpc/--no-grpc", help="Serve gRPC too (the grpc extra).")] = True,
    max_batch: Annotated[int | None, typer.Option(
        "--max-batch", min=1, max=256,
        help="Largest batch (images) a request may carry and dynamic batching forms. Default: 8 on a GPU; 1 on a CPU, "
             "where batching requests together measured slower than running them one by one in the pipeline.")] = None,
    max_delay_ms: Annotated[float, typer.Option(
        "--max-delay-ms", min=0.0, max=10000.0,
        help="How long a request may wait for others to join its batch (0, as in Triton: none; under load batches "
             "still form from the requests that arrive while the network is busy).")] = 0.0,
    max_queue: Annotated[int, typer.Option(
        "--max-queue", min=1, help="Requests that may wait; beyond that the server answers 503 at once.")] = 32,
    max_body_mb: Annotated[float, typer.Option(
        "--max-body-mb", min=0.001, help="Largest request body (HTTP 413 beyond) and gRPC message.")] = 64.0,
    drain_s: Annotated[float, typer.Option(
        "--drain-s", min=0.0, help="On SIGTERM / Ctrl-C: how long to wait for requests in flight.")] = 10.0,
    backend: Annotated[str | None, typer.Option("--backend", help=BACKEND_HELP)] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: cuda if usable).")] = None,
    precision: PrecisionOption = "auto",
    threads: ThreadsOption = None,
    size: Annotated[str | None, typer.Option(
        "--size", "-s", help="Network input HxW for dynamic models and checkpoints (default: the export size).")] = None,
    protocol: Annotated[str, typer.Option(
        "--protocol", help="official (default; the labels `stdc infer` writes for images) or fast.")] = "official",
) -> None:
    """Serve MODEL over the Open Inference Protocol (KServe v2: tritonclient works unchanged)
    and POST /v1/segment (image in, PNG label map out), with dynamic batching.

    Models: `stdc` (encoded image -> labels at the image's size) and `stdc_net` (normalised
    FP32 NCHW -> logits). Binds to loopback unless --host says otherwise.
    """
    from ..serve.runner import ServeOptions, run
    from ..serve.server import ModelServer

    if protocol not in PROTOCOLS:
        raise StdcError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if grpc and grpc_port == port:
        raise StdcError(f"--grpc-port {grpc_port} is the HTTP port too; choose another or pass --no-grpc")
    _check_extras(grpc)
    model = model or announce_default_model()
    options = ServeOptions(host, port, grpc_port if grpc else None, int(max_body_mb * 2**20), drain_s)
    with Segmenter(model, backend=backend, device=device, precision=precision, size=parse_size(size) if size else None,
                   protocol=protocol, threads=threads) as segmenter:
        if segmenter.backend.cpu_path is not None:
            console.print(segmenter.backend.cpu_path.describe(), highlight=False)
        if max_batch is None:
            max_batch = CPU_MAX_BATCH if segmenter.backend.device.startswith("cpu") else GPU_MAX_BATCH
        server = ModelServer(segmenter, max_batch=max_batch, max_delay_ms=max_delay_ms, max_queue=max_queue)

        def ready(http_port: int, grpc_port: int | None) -> None:
            shown = "[" + host + "]" if ":" in host else host
            where = f"http://{shown}:{http_port}" + (f" and grpc {shown}:{grpc_port}" if grpc_port else "")
            console.print(f"serving {', '.join(server.specs)} ({segmenter.describe()}, {protocol} protocol) on {where}; "
                          f"batches of up to {max_batch}, {max_delay_ms:g} ms delay, queue {max_queue}", highlight=False)
            console.print(f"try: curl -s --data-binary @image.png http://{shown}:{http_port}/v1/segment -o labels.png",
                          highlight=False)

        try:
            drain = run(server, options, on_ready=ready)
        finally:
            server.close(0)
    refused = f", {drain.refused} refused (503: --drain-s {drain_s:g} ran out)" if drain.refused else ""
    err_console.print(f"stopped: {drain.in_flight} request(s) in flight, {drain.answered} answered during the drain"
                      f"{refused}")


def _check_extras(grpc: bool) -> None:
    """Fail before loading a model when an extra is missing."""
    from ..errors import MissingDependencyError
    from ..optional import is_available

    missing = [m for m in ("starlette", "uvicorn") if not is_available(m)]
    if missing:
        raise MissingDependencyError(f'stdc serve needs {", ".join(missing)}: pip install "stdc-deploy[serve]"')
    if grpc and not (is_available("grpc") and is_available("tritonclient")):
        raise MissingDependencyError('gRPC serving needs grpcio and tritonclient: pip install "stdc-deploy[grpc]" '
                                     "(or pass --no-grpc)")
