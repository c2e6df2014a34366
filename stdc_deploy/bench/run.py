"""Running benchmarks: rows per target, backend and mode, with the bare ONNX Runtime reference.

Two modes, always labelled:

``model-only``
    The paper's way (:func:`~stdc_deploy.bench.timing.model_only_stats`): the input batch
    is already where the runtime wants it (host memory for CPU runtimes, the GPU for
    PyTorch CUDA), outputs stay there, and each step ends with the device synchronised.
``end-to-end``
    A host BGR uint8 image in, host label maps out at the image's size: pre-processing,
    copies, inference and post-processing (:meth:`Segmenter.predict_batch`).

Latency statistics use every timed step; percentiles are numpy's default linear
interpolation between order statistics. Throughput is ``batch * 1000 / mean_ms``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..backends import Backend, open_backend
from ..errors import InvalidValue, StdcError
from ..models.config import PAPER_SETUP
from .environment import _gpu_peak, _peak_rss_mb, _reset_peak_rss, environment
from .targets import Target, default_backend, preset_artifact, scratch_dir
from .timing import LatencyStats, model_only_stats, time_steps

SCHEMA = "stdc-deploy.bench/1"
MODES = ("model-only", "end-to-end")


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
    path: str | None = None  # --cpu-paths: which path (the reference is the hand export)
    vs_reference: float | None = None  # --cpu-paths: reference p50 latency / this row's
    label_agreement: float | None = None  # --cpu-paths: labels equal to the FP32 export's, 0-1
    default: bool = False  # --cpu-paths: the path `--precision auto` runs for these files on this CPU
    # "1/8": the backend skipped the network's final upsampling (precision auto), so a
    # model-only row times the network without it; end-to-end rows include the resize
    logits: str = "input"

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
    frame: tuple[int, int] | None = None  # end-to-end: the image size (None: the network input size)

    def __post_init__(self):
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise StdcError(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
        if self.batch < 1:
            raise InvalidValue("batch", f"must be >= 1, got {self.batch}")
        if self.warmup is not None and self.warmup < 0:
            raise InvalidValue("warmup", f"must be >= 0, got {self.warmup}")
        if self.iters is not None and self.iters < 1:
            raise InvalidValue("iters", f"must be >= 1, got {self.iters}")
        if self.seconds is not None and not 0 < self.seconds < float("inf"):
            raise InvalidValue("seconds", f"must be > 0 and finite, got {self.seconds}")

    def for_device(self, device: str) -> tuple[int, int | None, float | None]:
        gpu = device.startswith("cuda")
        warmup = self.warmup if self.warmup is not None else (20 if gpu else 3)
        seconds = self.seconds if self.seconds is not None or self.iters is not None else (10.0 if gpu else 3.0)
        return warmup, self.iters, seconds

    def describe(self, device: str) -> str:
        warmup, iters, seconds = self.for_device(device)
        amount = f"{iters} timed runs" if iters is not None else f"{seconds:g} s of timed runs"
        return f"{amount} per row after {warmup} warm-up runs"


@dataclass
class BenchReport:
    rows: list[BenchRow] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    reference: list[dict] = field(default_factory=list)  # bare ONNX Runtime loops, when requested
    choices: list[str] = field(default_factory=list)  # what `precision="auto"` chose, one line per backend

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "paper_setup": PAPER_SETUP, "environment": self.environment,
                "settings": self.settings, "rows": [r.to_dict() for r in self.rows], "reference": self.reference,
                "choices": self.choices}


def bench_backend(backend: Backend, settings: BenchSettings, *, model_name: str, size: tuple[int, int],
                  paper_fps: float | None = None, image: np.ndarray | None = None) -> list[BenchRow]:
    """Rows for one opened backend: one per requested mode."""
    from ..segmenter import Segmenter
    from ..synthetic import synthetic_images

    if image is None:
        image = synthetic_images(1, *(settings.frame or size), seed=0)[0]
    segmenter = Segmenter(backend, size=size if backend.input_spec.height is None else None)
    warmup, iters, seconds = settings.for_device(backend.device)
    rows = []
    for mode in settings.modes:
        _reset_peak_rss()
        with _gpu_peak(backend.device) as gpu:
            if mode == "model-only":
                stats = model_only_stats(backend, segmenter.preprocess([image] * settings.batch), warmup=warmup,
                                         iters=iters, seconds=seconds, cuda_graph=settings.cuda_graph)
            else:
                step = functools.partial(segmenter.predict_batch, [image] * settings.batch)
                stats = LatencyStats.from_seconds(time_steps(step, warmup, iters, seconds))
        rows.append(BenchRow(
            model=model_name, arch=backend.metadata.model_name, height=segmenter.input_size[0],
            width=segmenter.input_size[1], batch=settings.batch, backend=backend.name, device=backend.device,
            precision=backend.effective_precision, mode=mode, latency=stats, fps=settings.batch * 1e3 / stats.mean_ms,
            peak_rss_mb=_peak_rss_mb(), gpu_peak_mb=gpu["gpu_peak_mb"], paper_fps=paper_fps,
            cuda_graph=settings.cuda_graph and mode == "model-only", logits="1/8" if backend.final_resize_dropped else "input"))
    return rows


def model_only_fps(segmenter, batch: int = 1, seconds: float = 3.0) -> float:
    """Model-only frames per second of a :class:`Segmenter`'s backend at its input size, on a
    synthetic frame: the figure ``stdc bench --mode model-only`` reports. A model exported
    with a fixed batch is timed at that batch."""
    from ..synthetic import synthetic_images

    batch = segmenter.backend.input_spec.batch or batch
    image = synthetic_images(1, *segmenter.input_size, seed=0)[0]
    stats = model_only_stats(segmenter.backend, segmenter.preprocess([image] * batch), warmup=1, seconds=seconds)
    return batch * 1e3 / stats.mean_ms


def bare_onnxruntime_fps(onnx_path: Path | bytes, batch: np.ndarray, warmup: int, iters: int | None,
                         seconds: float | None) -> LatencyStats:
    """A plain ``InferenceSession.run`` loop with default options: the reference the
    model-only figures are checked against (a file, or a serialized model)."""
    import onnxruntime as ort

    source = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return LatencyStats.from_seconds(time_steps(lambda: session.run(None, {name: batch}), warmup, iters, seconds))


def run_bench(targets: Sequence[Target], backends: Sequence[str | None], settings: BenchSettings,
              device: str | None = None, precision: str = "fp32", compare_bare: bool = False,
              on_row: Callable[[BenchRow], None] | None = None, threads: int | None = None) -> BenchReport:
    """Benchmark every target on every backend (None: the automatic choice). ``threads``:
    CPU threads per runtime (None: every usable core)."""
    from ..backends import BACKENDS_FOR_KIND

    report = BenchReport(settings={**asdict(settings), "precision": precision, "threads": threads})
    devices = set()
    with scratch_dir() as scratch:
        made: dict[tuple[str, str], Path] = {}
        for target in targets:
            for requested in backends:
                backend_name, backend_device = requested, device
                if target.artifact is None and requested is None:
                    backend_name, backend_device = default_backend(device)
                    if precision == "auto" and backend_name == "onnxruntime":
                        backend_name = None  # auto chooses the ONNX runtime itself
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
                                  precision=precision, threads=threads) as backend:
                    if backend.cpu_path is not None:
                        report.choices.append(backend.cpu_path.describe())
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
    from ..preprocess import normalize
    from ..synthetic import synthetic_images

    row = rows[0]
    batch = normalize(synthetic_images(settings.batch, row.height, row.width, seed=0), backend.metadata.mean,
                      backend.metadata.std)
    warmup, iters, seconds = settings.for_device("cpu")
    source = artifact
    if backend.final_resize_dropped:  # the same graph as the row: without the final upsampling
        from ..backends.tail import load_without_final_resize

        source = load_without_final_resize(artifact)[0]
    bare = bare_onnxruntime_fps(source, batch, warmup, iters, seconds)
    bare_fps = settings.batch * 1e3 / bare.mean_ms
    ours = next((r for r in rows if r.mode == "model-only"), None)
    return {"model": name, "bare_mean_ms": bare.mean_ms, "bare_fps": bare_fps,
            "model_only_fps": ours.fps if ours else None, "ratio": ours.fps / bare_fps if ours else None}
