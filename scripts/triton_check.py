"""Serve a repository from `stdc export triton` with a real Triton server and check its labels.

    python scripts/triton_check.py [--model M.onnx] [--venv DIR] [--keep DIR]

Triton runs from its own virtual environment holding the nvidia-pytriton wheel (a CPU
``tritonserver`` with the Python backend and no onnxruntime backend, so the repository is
exported with net="python", kind="cpu"). Create it once:

    python -m venv DIR && DIR/bin/pip install nvidia-pytriton "numpy<2" opencv-python-headless onnxruntime

and pass ``--venv DIR`` or set STDC_TRITON_VENV. Without ``--model`` a random-weight dynamic
STDC1 ONNX (verified at 64x128) is exported first. PNG images of three sizes go to the
ensemble ``stdc`` over HTTP and gRPC, one request at a time and all at once (so dynamic
batching mixes sizes in one call of each model), plus a request holding two images of one
size and an undecodable one. Every label map must equal
``Segmenter(model, protocol="official").predict(image)`` exactly; the undecodable image
must fail its own request only. Prints the Triton version, timings and what was checked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

VENV_ENV = "STDC_TRITON_VENV"
IMAGE_SIZES = ((97, 181), (64, 128), (150, 90))


def create_venv_hint(folder: str = "DIR") -> str:
    return (f'python -m venv {folder} && {folder}/bin/pip install nvidia-pytriton "numpy<2" '
            "opencv-python-headless onnxruntime")


def find_venv(path: str | os.PathLike | None = None) -> Path | None:
    """The Triton venv (``path``, else $STDC_TRITON_VENV) if it holds pytriton's tritonserver."""
    path = path or os.environ.get(VENV_ENV)
    if not path:
        return None
    python = Path(path) / "bin" / "python"
    if not python.exists():
        return None
    code = "import importlib.util as u; s = u.find_spec('pytriton'); print(s.submodule_search_locations[0] if s else '')"
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60, check=False)
    return Path(path) if found.returncode == 0 and found.stdout.strip() else None


def missing_venv_reason(path: str | os.PathLike | None = None) -> str:
    where = path or os.environ.get(VENV_ENV)
    told = f"{where} holds no nvidia-pytriton" if where else f"set {VENV_ENV} or pass --venv"
    return f"no Triton venv ({told}); create one with: {create_venv_hint(str(where or 'DIR'))}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class TritonServer:
    """``tritonserver`` from the nvidia-pytriton wheel in ``venv``, serving ``repo``."""

    venv: Path
    repo: Path
    scratch: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    startup_s: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.scratch / "tritonserver.log"

    def _layout(self) -> tuple[Path, str]:
        python = self.venv / "bin" / "python"
        code = ("import importlib.util as u, sys; print(u.find_spec('pytriton').submodule_search_locations[0]); "
                "print('%d.%d' % sys.version_info[:2])")
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                             timeout=60).stdout.split()
        return Path(out[0]), out[1]

    def start(self, timeout_s: float = 180.0) -> None:
        package, python_version = self._layout()
        dist = package / "tritonserver"
        backends = self.scratch / "backends"  # the stub for this Python goes into a copy of the backends
        shutil.copytree(dist / "backends", backends)
        shutil.copy(dist / "python_backend_stubs" / python_version / "triton_python_backend_stub",
                    backends / "python" / "triton_python_backend_stub")
        env = dict(os.environ)
        env["PATH"] = f"{self.venv / 'bin'}:{env.get('PATH', '')}"
        libs = package.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = f"{libs}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else str(libs)
        env.pop("PYTHONPATH", None)
        self.ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        command = [str(dist / "bin" / "tritonserver"), "--model-repository", str(self.repo),
                   "--backend-directory", str(backends), "--http-port", str(self.ports["http"]),
                   "--grpc-port", str(self.ports["grpc"]), "--metrics-port", str(self.ports["metrics"]),
                   "--exit-on-error=true", "--strict-readiness=true"]
        start = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        url = f"http://127.0.0.1:{self.ports['http']}/v2/health/ready"
        while time.perf_counter() - start < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    self.startup_s = time.perf_counter() - start
                    return
            time.sleep(0.5)
        raise RuntimeError(f"tritonserver not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (Triton unloads its models and exits), SIGKILL if it does not within ``timeout_s``."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> TritonServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def encoded_images() -> list[bytes]:
    from stdc_deploy.synthetic import synthetic_images

    images = [synthetic_images(1, h, w, seed=i)[0] for i, (h, w) in enumerate(IMAGE_SIZES)]
    return [cv2.imencode(".png", image)[1].tobytes() for image in images]


def expected_labels(model: Path, encoded: list[bytes]) -> list[np.ndarray]:
    """What stdc-deploy itself predicts, in this process (not Triton's environment)."""
    from stdc_deploy.segmenter import Segmenter

    with Segmenter(model, protocol="official") as seg:
        return [seg.predict(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)) for data in encoded]


@dataclass(frozen=True)
class Endpoint:
    """The ensemble ``stdc`` over ``protocol`` (http or grpc) at ``url``."""

    protocol: str
    url: str

    def connect(self):
        """(tritonclient module, client): one per thread, as the HTTP client is not thread-safe."""
        if self.protocol == "http":
            import tritonclient.http as module

            return module, module.InferenceServerClient(self.url, network_timeout=120)
        import tritonclient.grpc as module

        return module, module.InferenceServerClient(self.url)

    def infer(self, items: list[bytes], connection=None) -> np.ndarray:
        """One request holding ``items`` (a batch of encoded images) -> its labels."""
        module, client = connection or self.connect()
        data = np.array([[item] for item in items], dtype=object)
        image = module.InferInput("image", list(data.shape), "BYTES")
        binary = {"binary_data": True} if self.protocol == "http" else {}  # gRPC tensors are always binary
        image.set_data_from_numpy(data, **binary)
        outputs = [module.InferRequestedOutput("labels", **binary)]
        try:
            return client.infer("stdc", [image], outputs=outputs).as_numpy("labels")
        finally:
            if connection is None:
                client.close()


@dataclass
class CheckReport:
    triton_version: str
    startup_s: float
    checks: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    batching: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (items, executions)
    stop_code: int | None = None


def check_endpoint(endpoint: Endpoint, encoded: list[bytes], expected: list[np.ndarray], report: CheckReport) -> None:
    """Every image alone, all at once, two in one request, and an undecodable one beside a
    good one; AssertionError on the first difference."""
    name, sizes = endpoint.protocol, ", ".join(f"{h}x{w}" for h, w in IMAGE_SIZES)
    connection = endpoint.connect()
    endpoint.infer(encoded[:1], connection)  # the first call of a batch size is slower (ONNX Runtime allocates)
    start = time.perf_counter()
    for data, want in zip(encoded, expected):
        got = endpoint.infer([data], connection)
        assert got.shape == (1, *want.shape) and got.dtype == np.uint8, f"{name}: {got.shape} {got.dtype}"
        assert np.array_equal(got[0], want), f"{name}: labels differ at {int((got[0] != want).sum())} pixels"
    report.timings_ms[f"{name}, one request at a time (ms per image)"] = (
        (time.perf_counter() - start) * 1e3 / len(encoded))
    report.checks.append(f"{name}: {len(encoded)} images ({sizes}) one per request: labels equal")

    start = time.perf_counter()
    with ThreadPoolExecutor(len(encoded) * 2) as pool:  # concurrent: Triton batches them together
        got = list(pool.map(lambda data: endpoint.infer([data]), encoded * 2))
    for labels, want in zip(got, expected * 2):
        assert np.array_equal(labels[0], want), f"{name}: concurrent labels differ"
    report.timings_ms[f"{name}, {len(got)} concurrent requests (ms in all)"] = (time.perf_counter() - start) * 1e3
    report.checks.append(f"{name}: {len(got)} concurrent requests of mixed sizes: labels equal")

    got = endpoint.infer([encoded[0], encoded[0]], connection)
    assert got.shape[0] == 2 and all(np.array_equal(g, expected[0]) for g in got), f"{name}: batch of two"
    report.checks.append(f"{name}: one request with two images of one size: labels equal")
    connection[1].close()

    with ThreadPoolExecutor(2) as pool:  # the broken image fails alone, its neighbour succeeds
        bad = pool.submit(endpoint.infer, [b"not an image"])
        good = pool.submit(endpoint.infer, [encoded[1]])
        try:
            bad.result()
        except Exception as exc:  # noqa: BLE001 - the client's own exception types
            message = str(exc)
        else:
            raise AssertionError(f"{name}: an undecodable image was answered")
        assert "not a readable image" in message, f"{name}: unexpected error: {message}"
        assert np.array_equal(good.result()[0], expected[1]), f"{name}: the neighbour of a bad image failed"
    report.checks.append(f"{name}: undecodable image -> its own request fails ({message.strip()[:90]!r}); "
                         "a concurrent request succeeds")


def check_server(server: TritonServer, encoded: list[bytes], expected: list[np.ndarray],
                 class_names: tuple[str, ...]) -> CheckReport:
    """Check over HTTP, then gRPC; note how often dynamic batching put requests together."""
    http = Endpoint("http", f"127.0.0.1:{server.ports['http']}")
    _, client = http.connect()
    report = CheckReport(client.get_server_metadata()["version"], server.startup_s)
    served = json.loads(client.get_model_config("stdc")["parameters"]["class_names"]["string_value"])
    assert served == list(class_names), f"class names: {served}"
    report.checks.append(f"http: the ensemble's configuration lists the model's {len(served)} class names")
    client.close()  # an open connection holds up the server's exit
    for endpoint in (http, Endpoint("grpc", f"127.0.0.1:{server.ports['grpc']}")):
        check_endpoint(endpoint, encoded, expected, report)
    _, client = http.connect()
    for model in ("stdc_pre", "stdc_net", "stdc_post"):
        stats = client.get_inference_statistics(model)["model_stats"][0]
        report.batching[model] = (int(stats["inference_count"]), int(stats["execution_count"]))
    client.close()
    return report


def run_check(model: Path, venv: Path, scratch: Path) -> CheckReport:
    from stdc_deploy.export.triton import export_triton

    exported = export_triton(model, scratch / "repository", kind="cpu", net="python", max_batch=4)
    encoded = encoded_images()
    expected = expected_labels(model, encoded)
    server = TritonServer(venv, exported.path, scratch)
    with server:
        report = check_server(server, encoded, expected, exported.metadata.class_names)
    report.stop_code = server.process.returncode
    return report


def random_onnx(folder: Path) -> Path:
    from stdc_deploy.checkpoint import load_model
    import torch

    from stdc_deploy.export import OnnxExportOptions, export_onnx
    from stdc_deploy.synthetic import random_model, to_official_state_dict

    checkpoint = folder / "stdc1-random.pth"
    torch.save(to_official_state_dict(random_model("stdc1", seed=0)), checkpoint)
    model, info = load_model(checkpoint)
    return export_onnx(model, folder / "stdc1-dynamic.onnx", OnnxExportOptions(height=64, width=128, dynamic=True),
                       checkpoint=info).path


@contextlib.contextmanager
def scratch_folder(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="stdc-triton-") as folder:
        yield Path(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a dynamic ONNX export (default: a random-weight STDC1)")
    parser.add_argument("--venv", help=f"the Triton venv (default: ${VENV_ENV})")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep the repository and server log")
    args = parser.parse_args()
    venv = find_venv(args.venv)
    if venv is None:
        print(missing_venv_reason(args.venv), file=sys.stderr)
        return 2
    with scratch_folder(args.keep) as scratch:
        model = args.model or random_onnx(scratch)
        start = time.perf_counter()
        report = run_check(model, venv, scratch)
        total_s = time.perf_counter() - start
    print(f"Triton {report.triton_version} (nvidia-pytriton in {venv}), model {model.name}")
    print(f"  server ready in {report.startup_s:.1f} s; stopped with exit code {report.stop_code}")
    for line in report.checks:
        print(f"  ok  {line}")
    for what, ms in report.timings_ms.items():
        print(f"  {what}: {ms:.0f}")
    print("  dynamic batching: " + ", ".join(f"{model} ran {items} images in {runs} executions"
                                            for model, (items, runs) in report.batching.items()))
    print(f"  all in {total_s:.1f} s (export, reference labels, server start, requests, stop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
