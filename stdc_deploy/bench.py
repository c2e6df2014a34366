"""`stdc bench`: what a model costs per frame, measured so that anyone can rerun it.

Two modes, always labelled:

``model-only``
    The paper's way: the input batch is already where the runtime wants it (host memory
    for CPU runtimes, the GPU for PyTorch CUDA), outputs stay there, and each step ends
    with the device synchronised.
``end-to-end``
    A host BGR uint8 image in, host label maps out at the image's size: pre-processing,
    copies, inference and post-processing (:meth:`Segmenter.predict_batch`).

Latency statistics use every timed step; percentiles are numpy's default linear
interpolation between order statistics. Throughput is ``batch * 1000 / mean_ms``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .backends import Backend, open_backend
from .errors import StdcError
from .models import PAPER_SETUP, PRESETS, Preset

SCHEMA = "stdc-deploy.bench/1"
MODES = ("model-only", "end-to-end")


# -- statistics ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LatencyStats:
    iters: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        if not samples:
            raise ValueError("no timed samples")
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(len(ms), float(ms.mean()), float(p50), float(p90), float(p99), float(ms.min()), float(ms.max()))


def time_steps(step: Callable[[], object], warmup: int, iters: int | None, seconds: float | None,
               min_iters: int = 3) -> list[float]:
    """Run ``step`` ``warmup`` times untimed, then time it ``iters`` times or for ``seconds``."""
    for _ in range(warmup):
        step()
    samples: list[float] = []
    clock = time.perf_counter
    deadline = None if iters is not None else clock() + (seconds if seconds is not None else 3.0)
    while True:
        start = clock()
        step()
        samples.append(clock() - start)
        if iters is not None:
            if len(samples) >= iters:
                return samples
        elif len(samples) >= min_iters and clock() >= deadline:
            return samples


# -- memory -------------------------------------------------------------------------------------

def _reset_peak_rss() -> bool:
    """Linux: restart the process's peak-RSS counter (VmHWM) so each row gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024 if platform.system() != "Darwin" else usage / 2**20


@contextlib.contextmanager
def _gpu_peak(device: str) -> Iterator[dict]:
    out: dict = {"gpu_peak_mb": None}
    if not device.startswith("cuda"):
        yield out
        return
    import torch

    torch.cuda.reset_peak_memory_stats(device)
    yield out
    out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20


# -- environment ----------------------------------------------------------------------------------

def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(devices: Sequence[str] = ("cpu",)) -> dict:
    import importlib.metadata as md

    import torch

    versions = {"stdc_deploy": __version__, "python": platform.python_version()}
    for package in ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "numpy", "opencv-python-headless"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[package] = md.version(package)
    env = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "platform": platform.platform(), "versions": versions, "gpu": None}
    if any(d.startswith("cuda") for d in devices) and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                      "memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return env


# -- rows ------------------------------------------------------------------------------------------

@dataclass
class BenchRow:
    model: str  # preset name or artifact file name
    arch: str
    height: int
    width: int
    batch: int
    backend: str
    device: str
    precision: str
    mode: str
    latency: LatencyStats
    fps: float
    peak_rss_mb: float
    gpu_peak_mb: float | None = None
    paper_fps: float | None = None
    cuda_graph: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class BenchSettings:
    batch: int = 1
    warmup: int | None = None  # None: 3 on CPU, 20 on GPU
    iters: int | None = None
    seconds: float | None = None  # None (and no iters): 3 s on CPU, 10 s on GPU
    modes: tuple[str, ...] = ("model-only",)
    cuda_graph: bool = False

    def __post_init__(self):
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise StdcError(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
        if self.batch < 1:
            raise StdcError(f"--batch must be >= 1, got {self.batch}")
        if self.iters is not None and self.iters < 1:
            raise StdcError(f"--iters must be >= 1, got {self.iters}")

    def for_device(self, device: str) -> tuple[int, int | None, float | None]:
        gpu = device.startswith("cuda")
        warmup = self.warmup if self.warmup is not None else (20 if gpu else 3)
        seconds = self.seconds if self.seconds is not None or self.iters is not None else (10.0 if gpu else 3.0)
        return warmup, self.iters, seconds

    def describe(self, device: str) -> str:
        warmup, iters, seconds = self.for_device(device)
        amount = f"{iters} timed runs" if iters is not None else f"{seconds:g} s of timed runs"
        return f"{amount} per row after {warmup} warm-up runs"


def bench_backend(backend: Backend, settings: BenchSettings, *, model_name: str, size: tuple[int, int],
                  paper_fps: float | None = None, image: np.ndarray | None = None) -> list[BenchRow]:
    """Rows for one opened backend: one per requested mode."""
    from .segmenter import Segmenter
    from .synthetic import synthetic_images

    if image is None:
        image = synthetic_images(1, *size, seed=0)[0]
    segmenter = Segmenter(backend, size=size if backend.input_spec.height is None else None)
    warmup, iters, seconds = settings.for_device(backend.device)
    rows = []
    for mode in settings.modes:
        _reset_peak_rss()
        with _gpu_peak(backend.device) as gpu:
            if mode == "model-only":
                step = backend.model_only_runner(segmenter.preprocess([image] * settings.batch),
                                                 cuda_graph=settings.cuda_graph)
            else:
                step = functools.partial(segmenter.predict_batch, [image] * settings.batch)
            samples = time_steps(step, warmup, iters, seconds)
        stats = LatencyStats.from_seconds(samples)
        rows.append(BenchRow(
            model=model_name, arch=backend.metadata.arch, height=segmenter.input_size[0],
            width=segmenter.input_size[1], batch=settings.batch, backend=backend.name, device=backend.device,
            precision=backend.effective_precision, mode=mode, latency=stats, fps=settings.batch * 1e3 / stats.mean_ms,
            peak_rss_mb=_peak_rss_mb(), gpu_peak_mb=gpu["gpu_peak_mb"], paper_fps=paper_fps,
            cuda_graph=settings.cuda_graph and mode == "model-only"))
    return rows


def bare_onnxruntime_fps(onnx_path: Path, batch: np.ndarray, warmup: int, iters: int | None,
                         seconds: float | None) -> LatencyStats:
    """A plain ``InferenceSession.run`` loop with default options: the reference the
    model-only figures are checked against."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return LatencyStats.from_seconds(time_steps(lambda: session.run(None, {name: batch}), warmup, iters, seconds))


# -- preset artifacts ------------------------------------------------------------------------------

def preset_artifact(preset: Preset, kind: str, directory: Path, batch: int = 1) -> Path:
    """A random-weight artifact for ``preset`` (speed does not depend on the weight values).

    The weights get BN statistics measured on images, so activations are in a normal range
    (no denormals or overflow that would distort timings). ONNX is exported at the preset's
    fixed size without the parity check (the export path is verified elsewhere).
    """
    import torch

    from .checkpoint import to_official_state_dict
    from .export import OnnxExportOptions, export_onnx
    from .synthetic import random_model

    model = random_model(preset.arch, seed=0, aux_heads=kind == "checkpoint", calib_size=(64, 128), calib_images=8)
    if kind == "checkpoint":
        path = directory / f"{preset.name}.pth"
        torch.save(to_official_state_dict(model), path)
        return path
    path = directory / f"{preset.name}-b{batch}.onnx"
    export_onnx(model.eval(), path, OnnxExportOptions(height=preset.height, width=preset.width, batch=batch,
                                                      verify=False))
    return path


@dataclass(frozen=True)
class Target:
    """What to time: an artifact, or a preset whose random-weight artifacts are made on demand."""

    name: str
    size: tuple[int, int]
    artifact: Path | None = None
    preset: Preset | None = None

    @property
    def paper_fps(self) -> float | None:
        return self.preset.paper_fps if self.preset else None


@dataclass
class BenchReport:
    rows: list[BenchRow] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    reference: list[dict] = field(default_factory=list)  # bare ONNX Runtime loops, when requested

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "paper_setup": PAPER_SETUP, "environment": self.environment,
                "settings": self.settings, "rows": [r.to_dict() for r in self.rows], "reference": self.reference}


def default_backend(device: str | None) -> tuple[str, str]:
    """(backend, device) for random-weight presets: the fastest runtime installed here."""
    from .backends import _cuda_available, available_backends

    want_cuda = device is None or device.startswith("cuda")
    if want_cuda and _cuda_available():
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "onnxruntime", device or "cuda"
        return "torch", device or "cuda"
    if device is not None and device.startswith("cuda"):
        raise StdcError("device cuda requested but PyTorch sees no CUDA GPU")
    if "onnxruntime" not in available_backends("onnx"):
        return "torch", "cpu"
    return "onnxruntime", "cpu"


def run_bench(targets: Sequence[Target], backends: Sequence[str | None], settings: BenchSettings,
              device: str | None = None, precision: str = "fp32", compare_bare: bool = False,
              on_row: Callable[[BenchRow], None] | None = None) -> BenchReport:
    """Benchmark every target on every backend (None: the automatic choice)."""
    from .backends import BACKENDS_FOR_KIND

    report = BenchReport(settings={**asdict(settings), "precision": precision})
    devices = set()
    with scratch_dir() as scratch:
        made: dict[tuple[str, str], Path] = {}
        for target in targets:
            for requested in backends:
                backend_name, backend_device = requested, device
                if target.artifact is None and requested is None:
                    backend_name, backend_device = default_backend(device)
                artifact = target.artifact
                if artifact is None:
                    kind = "checkpoint" if backend_name == "torch" else "onnx"
                    if backend_name not in BACKENDS_FOR_KIND[kind] and backend_name is not None:
                        raise StdcError(f"backend {backend_name} cannot run preset models "
                                        "(use torch, onnxruntime or openvino)")
                    key = (target.name, kind)
                    if key not in made:
                        made[key] = preset_artifact(target.preset, kind, Path(scratch), settings.batch)
                    artifact = made[key]
                with open_backend(artifact, backend=backend_name, device=backend_device,
                                  precision=precision) as backend:
                    devices.add(backend.device)
                    rows = bench_backend(backend, settings, model_name=target.name, size=target.size,
                                         paper_fps=target.paper_fps)
                    if compare_bare and backend.name == "onnxruntime" and backend.device == "cpu":
                        report.reference.append(_bare_reference(target.name, artifact, backend, rows, settings))
                for row in rows:
                    report.rows.append(row)
                    if on_row:
                        on_row(row)
    report.environment = environment(sorted(devices))
    return report


def _bare_reference(name: str, artifact: Path, backend: Backend, rows: list[BenchRow],
                    settings: BenchSettings) -> dict:
    from .preprocess import normalize
    from .synthetic import synthetic_images

    row = rows[0]
    batch = normalize(synthetic_images(settings.batch, row.height, row.width, seed=0), backend.metadata.mean,
                      backend.metadata.std)
    warmup, iters, seconds = settings.for_device("cpu")
    bare = bare_onnxruntime_fps(artifact, batch, warmup, iters, seconds)
    bare_fps = settings.batch * 1e3 / bare.mean_ms
    ours = next((r for r in rows if r.mode == "model-only"), None)
    return {"model": name, "bare_mean_ms": bare.mean_ms, "bare_fps": bare_fps,
            "model_only_fps": ours.fps if ours else None, "ratio": ours.fps / bare_fps if ours else None}


def write_json(report: BenchReport, path: Path) -> None:
    from .fileio import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(report.to_json(), indent=2) + "\n").encode())


CSV_COLUMNS = ("model", "arch", "height", "width", "batch", "backend", "device", "precision", "mode", "cuda_graph",
               "iters", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "fps", "peak_rss_mb",
               "gpu_peak_mb", "paper_fps")


def write_csv(report: BenchReport, path: Path) -> None:
    import csv
    import io

    from .fileio import atomic_write_bytes

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in report.rows:
        flat = {k: v for k, v in row.to_dict().items() if k != "latency"}
        flat.update(asdict(row.latency))
        writer.writerow({k: ("" if flat.get(k) is None else flat[k]) for k in CSV_COLUMNS})
    atomic_write_bytes(path, buffer.getvalue().encode())


def write_plot(report: BenchReport, path: Path) -> None:
    """Bar chart of FPS per model and backend (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise StdcError("--plot needs matplotlib: pip install matplotlib") from None
    from .fileio import atomic_output

    models = list(dict.fromkeys(r.model for r in report.rows))
    series = list(dict.fromkeys(f"{r.backend} {r.precision} {r.mode}" for r in report.rows))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(models)), 4))
    for i, label in enumerate(series):
        values = [next((r.fps for r in report.rows if r.model == m and f"{r.backend} {r.precision} {r.mode}" == label),
                       0.0) for m in models]
        ax.bar([j + i * width for j in range(len(models))], values, width, label=label)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(models))], models)
    ax.set_ylabel("frames per second")
    ax.set_title(f"stdc bench: {report.environment.get('cpu', '')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)


def preset_targets(names: Sequence[str]) -> list[Target]:
    targets = []
    for name in names:
        if name not in PRESETS:
            raise StdcError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        preset = PRESETS[name]
        targets.append(Target(name, (preset.height, preset.width), preset=preset))
    return targets


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="stdc-bench-")
