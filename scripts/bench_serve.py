"""Benchmark `stdc serve`: load, overload, bad requests and shutdown, against in-process.

Throughput and latency of the server at several concurrencies and under overload, its
answers to bad requests and its shutdown, next to the same model run in-process.

    python scripts/bench_serve.py --model models/stdc1.onnx [--image street.png]
        [--seconds 20] [--concurrency 1,4,16] [--client http|grpc|both] [--json serve.json]
    python scripts/bench_serve.py --make-model /tmp/bs --size 128x256 --image-size 256x512 --seconds 3

``--make-model DIR`` writes a random-weight STDC1 checkpoint (official key layout) and its
verified static ONNX export at ``--size`` into DIR (reused when already there), so the script
runs without trained weights. Without ``--image`` the request is a synthetic street-like
frame of ``--image-size`` (default 1024x2048), PNG-encoded.

One run, in this order; the server is a subprocess (``python -m stdc_deploy serve``) on a
free port, with the model, ``--precision``, ``--threads`` and ``--size`` given here:

1. in-process reference: ``Segmenter(...).predict`` on the decoded image in a loop for
   ``--seconds`` (frames/s), before the server starts; repeated after it has stopped, and
   the two averaged (the server is never running while the reference runs);
2. load: for each client kind and concurrency C, C threads, each with its own tritonclient,
   send the encoded image as ``image`` BYTES [1, 1] in a closed loop for ``--seconds``:
   requests/s, p50/p90/p99 latency, errors (any is printed), ratio to the in-process rate,
   the server's peak RSS, and the server's own account of the time (differences of
   ``/v2/models/stdc/stats``, ms per answered request): mean batch size, queue (arrival to
   the start of its batch's pre-processing), compute_input / compute_infer /
   compute_output (each batch's time shared among its requests) and total (arrival to
   answer). The stages overlap and a batch may wait between them, so the parts need not
   add up to the total. The first answer's labels must equal the in-process labels;
3. overload: open-loop requests at ``--overload-factor`` (4) x the best closed-loop rate
   for ``--overload-seconds`` (worker threads fire at scheduled times; at most
   ``--max-outstanding`` requests in flight, the rest counted as not sent): answered, 503,
   other errors and timeouts, latency of the answered ones (from their actual send; how
   late sends were is reported apart), server RSS before and at peak; then recovery: the
   queue and in-flight gauges of ``/metrics`` back to 0, and 5 sequential requests
   answered right within 3x the C=1 median;
4. bad requests (plain HTTP), each followed by a good request whose labels must be right;
5. SIGTERM while max(--concurrency) clients are sending: exit code, seconds to exit,
   whether the requests in flight at the signal were answered.

Overload and shutdown use the first --client kind. Client threads run in this process and
share the CPU with the server, as a client on the same host would. At the end: a markdown
table of the figures (for the README), the command line, the CPU model and core count;
``--json OUT`` writes every figure. Exit status 1 when anything above went wrong (each
problem printed on a PROBLEM line), 130 on Ctrl-C (the server is stopped either way).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import queue
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

MiB = 2**20
CLIENT_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 300.0
RECOVERY_REQUESTS = 5
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")  # Triton's statistics names
GRPC_TO_HTTP = {"INVALID_ARGUMENT": "400", "NOT_FOUND": "404", "RESOURCE_EXHAUSTED": "413", "UNAVAILABLE": "503",
                "DEADLINE_EXCEEDED": "timeout"}


# -- inputs -----------------------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def make_model(folder: Path, size: tuple[int, int]) -> Path:
    """A random-weight STDC1 checkpoint and its verified static ONNX export at ``size``."""
    import torch

    from stdc_deploy.checkpoint import load_model
    from stdc_deploy.export import OnnxExportOptions, export_onnx
    from stdc_deploy.synthetic import random_model, to_official_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"stdc1-random-{size[0]}x{size[1]}.onnx"
    if onnx_path.exists():
        print(f"model: {onnx_path} (already there)")
        return onnx_path
    checkpoint = folder / "stdc1-random.pth"
    if not checkpoint.exists():
        torch.save({"state_dict": to_official_state_dict(random_model("stdc1", seed=0))}, checkpoint)
    model, info = load_model(checkpoint)
    result = export_onnx(model, onnx_path, OnnxExportOptions(height=size[0], width=size[1]), checkpoint=info)
    print(f"model: wrote {result.path} ({'; '.join(p.describe() for p in result.parity)})")
    return result.path


def encoded_image(path: Path | None, size: tuple[int, int], seed: int) -> bytes:
    if path is not None:
        return path.read_bytes()
    from stdc_deploy.synthetic import synthetic_images

    ok, png = cv2.imencode(".png", synthetic_images(1, *size, seed=seed)[0])
    if not ok:
        raise SystemExit("PNG encoding of the synthetic frame failed")
    return png.tobytes()


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit("--image: not a decodable image")
    return image


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"p50_ms": math.nan, "p90_ms": math.nan, "p99_ms": math.nan}
    p50, p90, p99 = np.percentile(np.asarray(seconds) * 1e3, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99)}


# -- the in-process reference -----------------------------------------------------------------------
@dataclass
class Reference:
    fps: list[float] = field(default_factory=list)  # one per run
    p50_ms: list[float] = field(default_factory=list)
    decode_ms: float = 0.0  # what the server does first and predict() does not

    @property
    def mean_fps(self) -> float:
        return float(np.mean(self.fps)) if self.fps else math.nan


def reference_run(args, model: Path, data: bytes, reference: Reference) -> np.ndarray:
    """One timed ``Segmenter.predict`` loop; returns the labels."""
    from stdc_deploy.segmenter import Segmenter

    image = decode(data)
    start = time.perf_counter()
    for _ in range(5):
        decode(data)
    reference.decode_ms = (time.perf_counter() - start) / 5 * 1e3
    with Segmenter(model, precision=args.precision, threads=args.threads, size=args.size,
                   protocol="official") as segmenter:
        labels = segmenter.predict(image)  # warm-up
        times = []
        start = time.perf_counter()
        while time.perf_counter() - start < args.seconds or len(times) < 3:
            t = time.perf_counter()
            segmenter.predict(image)
            times.append(time.perf_counter() - t)
        reference.fps.append(len(times) / (time.perf_counter() - start))
        reference.p50_ms.append(float(np.median(times) * 1e3))
    print(f"in-process: {reference.fps[-1]:.2f} frames/s (p50 {reference.p50_ms[-1]:.1f} ms; decoding the image "
          f"takes {reference.decode_ms:.1f} ms more per request in the server)")
    return labels


# -- the server process -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """The server's RSS every ``interval_s``; the peak of each named phase."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        super().__init__(daemon=True, name="rss")
        self.pid, self.interval_s = pid, interval_s
        self.peaks: dict[str, int] = {}
        self.last = rss_bytes(pid) or 0
        self._phase = "start"
        self._lock = threading.Lock()
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval_s):
            rss = rss_bytes(self.pid)
            if rss is None:
                return
            with self._lock:
                self.last = rss
                self.peaks[self._phase] = max(self.peaks.get(self._phase, 0), rss)

    def enter(self, phase: str) -> int:
        """Start attributing samples to ``phase``; returns the RSS now."""
        rss = rss_bytes(self.pid) or self.last
        with self._lock:
            self._phase, self.last = phase, rss
            self.peaks[phase] = max(self.peaks.get(phase, 0), rss)
        return rss

    def peak_mib(self, phase: str) -> float:
        with self._lock:
            return self.peaks.get(phase, 0) / MiB

    def stop(self) -> None:
        self._done.set()


class ServerProcess:
    """``python -m stdc_deploy serve`` in its own session (Ctrl-C here reaches only us;
    :meth:`kill` ends it)."""

    def __init__(self, argv: list[str], log_path: Path):
        self.argv, self.log_path = argv, log_path
        self._log = open(log_path, "w")
        env = {**os.environ, "COLUMNS": "240"}  # one line per message in the log
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, port: int, timeout_s: float = READY_TIMEOUT_S) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout_s:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}:\n{self.log()}")
            if "serving " in self.log() and http_get(port, "/v2/health/ready")[0] == 200:
                return time.perf_counter() - start
            time.sleep(0.1)
        raise SystemExit(f"the server was not ready after {timeout_s:.0f} s:\n{self.log()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def server_argv(args, model: Path, port: int, grpc_port: int | None) -> list[str]:
    argv = [sys.executable, "-m", "stdc_deploy", "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--max-queue", str(args.max_queue), "--max-body-mb", str(args.max_body_mb),
            "--drain-s", str(args.drain_s), "--precision", args.precision]
    argv += ["--grpc-port", str(grpc_port)] if grpc_port else ["--no-grpc"]
    if args.max_batch is not None:
        argv += ["--max-batch", str(args.max_batch)]
    if args.max_delay_ms is not None:
        argv += ["--max-delay-ms", str(args.max_delay_ms)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.size:
        argv += ["--size", f"{args.size[0]}x{args.size[1]}"]
    return argv


# -- plain HTTP (for what tritonclient would not send) ----------------------------------------------
def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int | str, bytes]:
    """(status, body); status is the exception's name when no answer came."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT_S)
    try:
        try:
            conn.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (413) before the whole body was read: the answer may still be there
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__, str(exc).encode()
    finally:
        conn.close()


def http_get(port: int, path: str) -> tuple[int | str, bytes]:
    return http_request(port, "GET", path)


def metrics_gauges(port: int) -> dict[str, float]:
    status, body = http_get(port, "/metrics")
    gauges = {}
    if status == 200:
        for line in body.decode().splitlines():
            name, _, value = line.partition(" ")
            if name in ("stdc_queue_size", "stdc_requests_in_flight"):
                gauges[name] = float(value)
    return gauges


def model_stats(port: int) -> dict:
    status, body = http_get(port, "/v2/models/stdc/stats")
    if status != 200:
        raise SystemExit(f"/v2/models/stdc/stats answered {status}: {body[:200]!r}")
    return json.loads(body)["model_stats"][0]


def stats_split(before: dict, after: dict) -> dict[str, float]:
    """Average ms per answered request of each phase between two statistics snapshots, and
    the mean batch size."""
    def delta(key: str, part: str) -> float:
        return after["inference_stats"][key][part] - before["inference_stats"][key][part]

    requests = delta("success", "count")
    executions = after["execution_count"] - before["execution_count"]
    split = {f"{p}_ms": delta(p, "ns") / requests / 1e6 if requests else math.nan for p in PHASES}
    split["total_ms"] = delta("success", "ns") / requests / 1e6 if requests else math.nan  # arrival to answer
    split["batch"] = (after["inference_count"] - before["inference_count"]) / executions if executions else math.nan
    return split


# -- tritonclient ------------------------------------------------------------------------------------
@dataclass
class Sample:
    start: float
    end: float
    outcome: str  # "200", an HTTP status, "timeout" or an exception type


def count_outcomes(samples: list[Sample]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.outcome] = counts.get(s.outcome, 0) + 1
    return counts


class Client:
    """One tritonclient (HTTP or gRPC) sending the image to ``stdc``; one per thread."""

    def __init__(self, kind: str, url: str):
        self.kind = kind
        if kind == "http":
            import tritonclient.http as triton

            self._client = triton.InferenceServerClient(url, connection_timeout=CLIENT_TIMEOUT_S,
                                                        network_timeout=CLIENT_TIMEOUT_S)
        else:
            import tritonclient.grpc as triton
            self._client = triton.InferenceServerClient(url)
        self._triton = triton

    def infer(self, data: bytes) -> np.ndarray:
        """The labels ([1, H, W] uint8); tritonclient's exception when not answered 200."""
        image = self._triton.InferInput("image", [1, 1], "BYTES")
        if self.kind == "http":
            image.set_data_from_numpy(np.array([[data]], dtype=object), binary_data=True)
            output = self._triton.InferRequestedOutput("labels", binary_data=True)
            result = self._client.infer("stdc", [image], outputs=[output])
        else:
            image.set_data_from_numpy(np.array([[data]], dtype=object))
            output = self._triton.InferRequestedOutput("labels")
            result = self._client.infer("stdc", [image], outputs=[output], client_timeout=CLIENT_TIMEOUT_S)
        return result.as_numpy("labels")

    def timed(self, data: bytes) -> tuple[Sample, np.ndarray | None]:
        """One request, never raising: its sample and the labels (None unless 200)."""
        start = time.perf_counter()
        try:
            labels, outcome = self.infer(data), "200"
        except Exception as exc:  # noqa: BLE001 - every failure is an outcome to count
            labels, outcome = None, outcome_of(exc)
        return Sample(start, time.perf_counter(), outcome), labels

    def close(self) -> None:
        self._client.close()


def outcome_of(exc: BaseException) -> str:
    """An HTTP status as text ("503"), "timeout", or the exception's type."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = (exc.status() or "").removeprefix("StatusCode.")
        if "timed out" in (exc.message() or "").lower():
            return "timeout"
        return GRPC_TO_HTTP.get(status, status or "error")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    return type(exc).__name__


def same_labels(labels: np.ndarray | None, expected: np.ndarray) -> str:
    if labels is None:
        return "no answer"
    labels = labels.reshape(labels.shape[-2:]) if labels.ndim == 3 and labels.shape[0] == 1 else labels
    if labels.shape != expected.shape:
        return f"no (shape {labels.shape}, expected {expected.shape})"
    differ = int(np.count_nonzero(labels != expected))
    return "yes" if differ == 0 else f"no ({differ} of {expected.size} pixels differ)"


# -- closed loop ---------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    client: str
    concurrency: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: dict[str, int]
    vs_in_process: float = math.nan
    server_split: dict[str, float] = field(default_factory=dict)
    server_rss_peak_mib: float = 0.0
    labels_equal: str = ""


def closed_loop(kind: str, url: str, data: bytes, concurrency: int, seconds: float, stop: threading.Event,
                on_start=None) -> tuple[list[Sample], float, float, np.ndarray | None]:
    """``concurrency`` threads sending back to back for ``seconds`` after one warm-up request
    each. Returns the samples, the window's start and end, and the first answer's labels.
    ``on_start()`` runs after the warm-ups, just before the window opens."""
    samples: list[list[Sample]] = [[] for _ in range(concurrency)]
    first: list[np.ndarray | None] = [None]
    warmed = threading.Barrier(concurrency + 1)
    go = threading.Event()
    window: list[float] = [0.0, 0.0]

    def worker(i: int) -> None:
        client = Client(kind, url)
        try:
            warm_up, labels = client.timed(data)
            if i == 0:
                first[0] = labels
            if warm_up.outcome != "200":  # an error, outside the window
                samples[i].append(warm_up)
            warmed.wait()
            go.wait()
            while not stop.is_set() and time.perf_counter() < window[1]:
                samples[i].append(client.timed(data)[0])
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    warmed.wait()
    if on_start is not None:
        on_start()
    window[0] = time.perf_counter()
    window[1] = window[0] + seconds
    go.set()
    for t in threads:
        t.join()
    return [s for per in samples for s in per], window[0], window[1], first[0]


def load_level(kind: str, url: str, port: int, data: bytes, concurrency: int, seconds: float,
               stop: threading.Event, rss: RssSampler) -> tuple[LoadResult, np.ndarray | None]:
    phase = f"{kind} C={concurrency}"
    snapshots = []
    samples, start, end, labels = closed_loop(
        kind, url, data, concurrency, seconds, stop,
        on_start=lambda: (snapshots.append(model_stats(port)), rss.enter(phase)))
    split = stats_split(snapshots[0], model_stats(port))
    good = [s.end - s.start for s in samples if s.outcome == "200" and start <= s.start and s.end <= end]
    errors = count_outcomes([s for s in samples if s.outcome != "200"])
    result = LoadResult(kind, concurrency, end - start, len(good) / (end - start), **percentiles_ms(good),
                        errors=errors, server_split=split, server_rss_peak_mib=rss.peak_mib(phase))
    return result, labels


# -- open loop -----------------------------------------------------------------------------------------
@dataclass
class OverloadResult:
    client: str
    target_per_s: float
    sent_per_s: float
    seconds: float
    scheduled: int
    not_sent: int  # --max-outstanding requests were in flight
    answered: int
    refused_503: int
    timeouts: int
    other_errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    send_lag_p99_ms: float  # actual send time minus scheduled time
    server_split: dict[str, float]
    server_rss_before_mib: float
    server_rss_peak_mib: float
    recovery_s: float = math.nan  # end of the schedule -> queue and in-flight gauges at 0
    recovery_ok: int = 0
    recovery_total: int = 0
    recovery_p50_ms: float = math.nan
    recovered: bool = False


def open_loop(kind: str, url: str, port: int, data: bytes, rate: float, seconds: float, max_outstanding: int,
              stop: threading.Event) -> tuple[list[tuple[float, Sample]], int, float, float]:
    """Requests at ``rate``/s on a fixed schedule, by ``max_outstanding`` worker threads.
    Returns (scheduled time, sample) pairs, how many could not be sent, the duration, and
    the seconds from the end of the schedule until the server's queue and in-flight gauges
    read 0 (NaN: not within a minute)."""
    jobs: queue.Queue[float | None] = queue.Queue()
    results: list[tuple[float, Sample]] = []
    lock = threading.Lock()
    outstanding = [0]

    def worker() -> None:
        client = None
        try:
            while (scheduled := jobs.get()) is not None:
                client = client or Client(kind, url)
                sample = client.timed(data)[0]
                with lock:
                    results.append((scheduled, sample))
                    outstanding[0] -= 1
        finally:
            if client is not None:
                client.close()

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(max_outstanding)]
    for t in workers:
        t.start()
    count, not_sent = int(rate * seconds), 0
    start = time.perf_counter() + 0.05
    for i in range(count):
        if stop.is_set():
            break
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with lock:
            if outstanding[0] >= max_outstanding:
                not_sent += 1
                continue
            outstanding[0] += 1
        jobs.put(scheduled)
    end = time.perf_counter()
    drained_s = math.nan
    while time.perf_counter() - end < 60 and not stop.is_set():
        gauges = metrics_gauges(port)
        if gauges.get("stdc_queue_size") == 0 and gauges.get("stdc_requests_in_flight") == 0:
            drained_s = time.perf_counter() - end
            break
        time.sleep(0.02)
    for _ in workers:
        jobs.put(None)
    for t in workers:
        t.join(CLIENT_TIMEOUT_S + 5)
    return results, not_sent, end - start, drained_s


def overload(kind: str, url: str, port: int, data: bytes, rate: float, args, reference_labels: np.ndarray,
             normal_p50_ms: float, stop: threading.Event, rss: RssSampler) -> OverloadResult:
    rss_before = rss.enter("overload")
    stats_before = model_stats(port)
    pairs, not_sent, duration, drained_s = open_loop(kind, url, port, data, rate, args.overload_seconds,
                                                     args.max_outstanding, stop)
    samples = [s for _, s in pairs]
    good = [s.end - s.start for s in samples if s.outcome == "200"]
    others = count_outcomes([s for s in samples if s.outcome not in ("200", "503", "timeout")])
    lag = [s.start - scheduled for scheduled, s in pairs]
    result = OverloadResult(
        kind, rate, len(pairs) / duration, duration, len(pairs) + not_sent, not_sent,
        answered=len(good), refused_503=sum(s.outcome == "503" for s in samples),
        timeouts=sum(s.outcome == "timeout" for s in samples), other_errors=others,
        p50_ms=percentiles_ms(good)["p50_ms"], p99_ms=percentiles_ms(good)["p99_ms"],
        send_lag_p99_ms=percentiles_ms(lag)["p99_ms"], server_split=stats_split(stats_before, model_stats(port)),
        server_rss_before_mib=rss_before / MiB, server_rss_peak_mib=rss.peak_mib("overload"), recovery_s=drained_s)

    rss.enter("recovery")
    client = Client(kind, url)
    times, ok = [], 0
    try:
        for _ in range(RECOVERY_REQUESTS):
            sample, labels = client.timed(data)
            ok += same_labels(labels, reference_labels) == "yes"
            if sample.outcome == "200":
                times.append(sample.end - sample.start)
            else:
                print(f"  recovery request failed: {sample.outcome}")
    finally:
        client.close()
    result.recovery_ok, result.recovery_total = ok, RECOVERY_REQUESTS
    result.recovery_p50_ms = percentiles_ms(times)["p50_ms"]
    queue_empty = metrics_gauges(port).get("stdc_queue_size") == 0
    # "normal latency": within 3x the unloaded (C=1) median, a wide margin for a noisy machine
    result.recovered = (ok == RECOVERY_REQUESTS and queue_empty and not math.isnan(result.recovery_s)
                        and result.recovery_p50_ms <= 3 * normal_p50_ms)
    return result


# -- bad requests --------------------------------------------------------------------------------------
@dataclass
class BadRequest:
    request: str
    expected: int
    got: int | str
    message: str
    next_good: str


def bytes_element(data: bytes) -> bytes:
    """One BYTES tensor element on the wire: 4-byte little-endian length, then the bytes."""
    return struct.pack("<I", len(data)) + data


def infer_body(name: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, dict[str, str]]:
    """A binary-extension infer request with one input."""
    header = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "labels", "parameters": {"binary_data": True}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def error_line(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]).splitlines()[0]
    except (ValueError, KeyError, TypeError, IndexError):
        return body[:120].decode(errors="replace").replace("\n", " ")


def bad_requests(port: int, url: str, data: bytes, reference_labels: np.ndarray,
                 max_body_bytes: int) -> list[BadRequest]:
    image = bytes_element(data)
    over = max_body_bytes + MiB
    cases = [
        ("undecodable image bytes", 400, "/v2/models/stdc/infer",
         infer_body("image", "BYTES", [1, 1], bytes_element(b"this is not an image"))),
        ("wrong input name", 400, "/v2/models/stdc/infer", infer_body("picture", "BYTES", [1, 1], image)),
        ("FP32 input to stdc", 400, "/v2/models/stdc/infer",
         infer_body("image", "FP32", [1, 1], np.zeros(1, np.float32).tobytes())),
        ("shape [1, 1, 1]", 400, "/v2/models/stdc/infer", infer_body("image", "BYTES", [1, 1, 1], image)),
        ("unknown model", 404, "/v2/models/nope/infer", infer_body("image", "BYTES", [1, 1], image)),
        (f"body of {over / MiB:g} MiB (limit {max_body_bytes / MiB:g})", 413, "/v2/models/stdc/infer",
         infer_body("image", "BYTES", [1, 1], bytes_element(os.urandom(over - 200)))),
        ("garbage JSON header", 400, "/v2/models/stdc/infer",
         (b"{garbage" + image, {"Inference-Header-Content-Length": "8"})),
        ("/v1/segment with a non-image", 400, "/v1/segment",
         (b"hello, not an image", {"Content-Type": "application/octet-stream"})),
    ]
    client = Client("http", url)
    rows = []
    try:
        for request, expected, path, (body, headers) in cases:
            status, answer = http_request(port, "POST", path, body, headers)
            if path == "/v1/segment":
                good_status, png = http_request(port, "POST", path, data, {"Content-Type": "application/octet-stream"})
                if good_status == 200:
                    next_good = same_labels(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED),
                                            reference_labels)
                else:
                    next_good = f"failed ({good_status})"
            else:
                sample, labels = client.timed(data)
                next_good = f"failed ({sample.outcome})" if labels is None else same_labels(labels, reference_labels)
            rows.append(BadRequest(request, expected, status, error_line(answer), next_good))
    finally:
        client.close()
    return rows


# -- shutdown ------------------------------------------------------------------------------------------
@dataclass
class ShutdownResult:
    concurrency: int
    exit_code: int | None
    seconds_to_exit: float
    in_flight_at_signal: int
    in_flight_answered: int
    in_flight_outcomes: dict[str, int]
    after_signal: dict[str, int]  # outcomes of requests sent after the signal
    server_says: str


def sigterm_under_load(server: ServerProcess, kind: str, url: str, data: bytes, concurrency: int,
                       drain_s: float, stop: threading.Event) -> ShutdownResult:
    """SIGTERM while ``concurrency`` clients send back to back (each stops at its first
    failure after the signal)."""
    samples: list[Sample] = []
    lock = threading.Lock()
    signalled = threading.Event()
    started = threading.Barrier(concurrency + 1)

    def worker() -> None:
        client = Client(kind, url)
        started.wait()
        try:
            while not stop.is_set():
                sample = client.timed(data)[0]
                with lock:
                    samples.append(sample)
                if sample.outcome != "200" and signalled.is_set():
                    return
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(1.0)
    signal_at = time.perf_counter()
    server.process.send_signal(signal.SIGTERM)
    signalled.set()
    try:
        exit_code = server.process.wait(drain_s + 30)
    except subprocess.TimeoutExpired:
        exit_code = None
    seconds = time.perf_counter() - signal_at
    for t in threads:
        t.join(CLIENT_TIMEOUT_S + 5)
    in_flight = [s for s in samples if s.start < signal_at < s.end]
    says = next((line.strip() for line in server.log().splitlines() if line.startswith("stopped")), "")
    return ShutdownResult(concurrency, exit_code, seconds, len(in_flight), sum(s.outcome == "200" for s in in_flight),
                          count_outcomes(in_flight), count_outcomes([s for s in samples if s.start >= signal_at]), says)



# -- report --------------------------------------------------------------------------------------------
def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    ref = report["reference"]
    lines = [
        "| client | concurrency | req/s | vs in-process | p50 ms | p90 ms | p99 ms | errors | server: batch "
        "| queue ms | input ms | infer ms | output ms | total ms | RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| in-process `predict` | 1 | {fmt(ref['mean_fps'], 2)} | 1.00 | {fmt(float(np.mean(ref['p50_ms'])))} "
        f"| | | | | | | | | | |",
    ]
    for r in report["load"]:
        split = r["server_split"]
        errors = sum(r["errors"].values())
        lines.append(
            f"| {r['client']} | {r['concurrency']} | {fmt(r['requests_per_s'], 2)} | {fmt(r['vs_in_process'], 2)} "
            f"| {fmt(r['p50_ms'])} | {fmt(r['p90_ms'])} | {fmt(r['p99_ms'])} | {errors} | {fmt(split['batch'], 2)} "
            + " ".join(f"| {fmt(split[f'{p}_ms'])}" for p in (*PHASES, "total"))
            + f" | {fmt(r['server_rss_peak_mib'], 0)} |")
    o = report["overload"]
    others = sum(o["other_errors"].values())
    lines += [
        "",
        f"| overload ({o['client']}, {fmt(o['seconds'], 0)} s open loop) | |",
        "|---|---|",
        f"| target / sent | {fmt(o['target_per_s'])} / {fmt(o['sent_per_s'])} req/s "
        f"({o['not_sent']} not sent: {report['options']['max_outstanding']} outstanding; send lag p99 "
        f"{fmt(o['send_lag_p99_ms'])} ms) |",
        f"| answered 200 | {o['answered']} (p50 {fmt(o['p50_ms'])} ms, p99 {fmt(o['p99_ms'])} ms; in the server: "
        f"queue {fmt(o['server_split']['queue_ms'])} ms, total {fmt(o['server_split']['total_ms'])} ms, batch "
        f"{fmt(o['server_split']['batch'], 2)}) |",
        f"| refused 503 | {o['refused_503']} |",
        f"| timeouts / other errors | {o['timeouts']} / {others}"
        + (f" ({', '.join(f'{k}: {v}' for k, v in o['other_errors'].items())})" if others else "") + " |",
        f"| server RSS before / peak | {fmt(o['server_rss_before_mib'], 0)} / {fmt(o['server_rss_peak_mib'], 0)} MiB |",
        f"| recovered | {'yes' if o['recovered'] else 'NO'}: queue empty {fmt(o['recovery_s'], 2)} s after the last "
        "send, "
        f"{o['recovery_ok']}/{o['recovery_total']} requests right, p50 {fmt(o['recovery_p50_ms'])} ms |",
        "",
        "| bad request | expected | got | error message | next good request right |",
        "|---|---:|---:|---|---|",
    ]
    for b in report["bad_requests"]:
        lines.append(f"| {b['request']} | {b['expected']} | {b['got']} | {b['message'].replace('|', '/')} "
                     f"| {b['next_good']} |")
    s = report["shutdown"]
    unanswered = "" if s["in_flight_answered"] == s["in_flight_at_signal"] else f" {s['in_flight_outcomes']}"
    lines += [
        "",
        f"SIGTERM under load ({s['concurrency']} clients): exit code {s['exit_code']} after "
        f"{fmt(s['seconds_to_exit'], 2)} s; {s['in_flight_answered']} of {s['in_flight_at_signal']} requests in "
        f"flight answered{unanswered}"
        f"; sent after the signal: {s['after_signal'] or 'none'}; server: \"{s['server_says']}\"",
    ]
    return "\n".join(lines)


def check(report: dict) -> list[str]:
    """What went wrong, one line each (empty: all as expected)."""
    problems = []
    for r in report["load"]:
        if r["errors"]:
            problems.append(f"{r['client']} C={r['concurrency']}: errors {r['errors']}")
        if r["labels_equal"] not in ("", "yes"):
            problems.append(f"{r['client']}: labels differ from in-process: {r['labels_equal']}")
    if not report["overload"]["recovered"]:
        problems.append("the server did not recover after the overload")
    for b in report["bad_requests"]:
        if b["got"] != b["expected"]:
            problems.append(f"bad request {b['request']!r}: expected {b['expected']}, got {b['got']}")
        if b["next_good"] != "yes":
            problems.append(f"the good request after {b['request']!r}: {b['next_good']}")
    if report["server"]["tracebacks"]:
        problems.append(f"the server logged {report['server']['tracebacks']} traceback(s): {report['server']['log']}")
    s = report["shutdown"]
    if s["exit_code"] != 0 or s["in_flight_answered"] != s["in_flight_at_signal"]:
        problems.append(f"shutdown: exit code {s['exit_code']}, {s['in_flight_answered']} of "
                        f"{s['in_flight_at_signal']} in-flight requests answered")
    return problems


# -- main ----------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="ONNX file (or any model `stdc serve` takes)")
    source.add_argument("--make-model", type=Path, metavar="DIR",
                        help="write (or reuse) a random-weight STDC1 checkpoint and ONNX export at --size in DIR")
    parser.add_argument("--image", type=Path, help="encoded image to send (default: a synthetic frame)")
    parser.add_argument("--image-size", type=parse_size, default=(1024, 2048), help="synthetic frame HxW")
    parser.add_argument("--size", type=parse_size, help="network input HxW (--make-model default: 512x1024)")
    parser.add_argument("--precision", default="auto", help="for the server and the in-process reference")
    parser.add_argument("--threads", type=int, help="runtime CPU threads (server and reference)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per load level and per reference run")
    parser.add_argument("--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16],
                        help="closed-loop client threads per level, comma-separated (default 1,4,16)")
    parser.add_argument("--client", choices=("http", "grpc", "both"), default="http", help="tritonclient kind(s)")
    parser.add_argument("--max-batch", type=int, default=None, help="passed to stdc serve (default: its own)")
    parser.add_argument("--max-delay-ms", type=float, default=None, help="passed to stdc serve (default: its own)")
    parser.add_argument("--max-queue", type=int, default=32, help="passed to stdc serve")
    parser.add_argument("--max-body-mb", type=float, default=8.0,
                        help="server body limit; the 413 test sends 1 MiB more")
    parser.add_argument("--drain-s", type=float, default=10.0, help="passed to stdc serve")
    parser.add_argument("--overload-seconds", type=float, default=10.0, help="open-loop duration")
    parser.add_argument("--overload-factor", type=float, default=4.0, help="x the best closed-loop rate")
    parser.add_argument("--max-outstanding", type=int, default=256, help="open-loop requests in flight at most")
    parser.add_argument("--seed", type=int, default=0, help="of the synthetic frame")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every figure here")
    args = parser.parse_args()
    if min(args.concurrency) < 1:
        parser.error("--concurrency: each level must be >= 1")
    return args


def main() -> int:
    args = parse_args()
    kinds = ["http", "grpc"] if args.client == "both" else [args.client]
    if "grpc" in kinds and not (Path(__file__).resolve().parent.parent / "stdc_deploy/serve/grpc.py").exists():
        raise SystemExit("--client grpc: this checkout has no gRPC front end (stdc_deploy/serve/grpc.py)")
    model = make_model(args.make_model, args.size or (512, 1024)) if args.make_model else args.model
    data = encoded_image(args.image, args.image_size, args.seed)
    if len(data) + 1024 > args.max_body_mb * MiB:
        raise SystemExit(f"the image request ({len(data) / MiB:.1f} MiB) is over --max-body-mb {args.max_body_mb:g}; "
                         "pass a larger --max-body-mb")
    height, width = decode(data).shape[:2]
    print(f"image: {args.image or 'synthetic'} {height}x{width}, {len(data) / MiB:.2f} MiB encoded")

    stop = threading.Event()
    reference = Reference()
    report: dict = {"command": shlex.join([sys.executable, *sys.argv]), "cpu": cpu_model(),
                    "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                    "model": str(model), "image": f"{args.image or 'synthetic'} {height}x{width}",
                    "options": {k: v for k, v in vars(args).items() if k in (
                        "precision", "threads", "size", "seconds", "max_batch", "max_delay_ms", "max_queue",
                        "max_body_mb", "drain_s", "max_outstanding", "overload_factor")}}
    server = None
    try:
        print("in-process reference (no server running)")
        reference_labels = reference_run(args, model, data, reference)

        port = free_port()
        grpc_port = next(p for p in iter(free_port, None) if p != port) if "grpc" in kinds else None
        log_fd, log_path = tempfile.mkstemp(prefix="stdc-serve-", suffix=".log")
        os.close(log_fd)
        server = ServerProcess(server_argv(args, model, port, grpc_port), Path(log_path))
        report["server"] = {"log": log_path}
        print(f"server log: {log_path}")
        ready_s = server.wait_ready(port)
        serving = next(line for line in server.log().splitlines() if line.startswith("serving "))
        print(f"{serving}\n  ready after {ready_s:.1f} s")
        report["server"].update(line=serving, ready_s=ready_s)
        rss = RssSampler(server.pid)
        rss.start()
        report["server"]["idle_rss_mib"] = rss.enter("idle") / MiB
        urls = {"http": f"127.0.0.1:{port}", "grpc": f"127.0.0.1:{grpc_port}"}

        report["load"] = []
        for kind in kinds:
            for level, concurrency in enumerate(args.concurrency):
                result, labels = load_level(kind, urls[kind], port, data, concurrency, args.seconds, stop, rss)
                if level == 0:
                    result.labels_equal = same_labels(labels, reference_labels)
                    print(f"{kind}: labels equal: {result.labels_equal}")
                print(f"{kind} C={concurrency}: {result.requests_per_s:.2f} req/s, p50 {result.p50_ms:.1f} ms, "
                      f"p99 {result.p99_ms:.1f} ms, errors {sum(result.errors.values())}"
                      + (f" {result.errors}" if result.errors else ""))
                report["load"].append(result)

        kind = kinds[0]
        best = max(r.requests_per_s for r in report["load"] if r.client == kind)
        normal_p50 = next(r.p50_ms for r in report["load"] if r.client == kind)
        print(f"overload: {args.overload_factor:g} x {best:.1f} req/s for {args.overload_seconds:g} s ({kind})")
        report["overload"] = overload(kind, urls[kind], port, data, args.overload_factor * best, args,
                                      reference_labels, normal_p50, stop, rss)

        print("bad requests")
        rss.enter("bad requests")
        report["bad_requests"] = bad_requests(port, urls["http"], data, reference_labels, int(args.max_body_mb * MiB))

        print("SIGTERM under load")
        rss.enter("shutdown")
        report["shutdown"] = sigterm_under_load(server, kind, urls[kind], data, max(args.concurrency), args.drain_s,
                                                stop)
        report["server"]["rss_peak_mib"] = {phase: peak / MiB for phase, peak in rss.peaks.items()}
        rss.stop()
        server.kill()

        print("in-process reference again (server stopped)")
        reference_run(args, model, data, reference)
    except KeyboardInterrupt:
        stop.set()
        print("interrupted; stopping the server")
        return 130
    finally:
        if server is not None:
            server.kill()

    for result in report["load"]:
        result.vs_in_process = result.requests_per_s / reference.mean_fps
    report["reference"] = {**asdict(reference), "mean_fps": reference.mean_fps}
    report["server"]["tracebacks"] = Path(report["server"]["log"]).read_text(errors="replace").count("Traceback")
    report = json.loads(json.dumps(report, default=asdict))  # dataclasses -> plain data
    problems = check(report)
    report["problems"] = problems
    print()
    print(markdown(report))
    print()
    print(f"command: {report['command']}")
    print(f"CPU: {report['cpu']}, {report['cores']} cores ({report['usable_cores']} usable); client threads share "
          "them with the server")
    print(f"in-process runs: {', '.join(f'{f:.2f}' for f in reference.fps)} frames/s (before / after the server)")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
        print(f"wrote {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
