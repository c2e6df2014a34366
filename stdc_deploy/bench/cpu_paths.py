"""Every CPU path against a hand export, timed round-robin in one run (``stdc bench --cpu-paths``).

The reference is what a user of the official code would do: a plain ``torch.onnx.export``
of the same weights with default settings, run in a default ``onnxruntime.InferenceSession``.
Against it: this project's FP32 export in ONNX Runtime, the INT8 file of ``stdc quantize
--target cpu`` in ONNX Runtime and OpenVINO, OpenVINO FP32 and BF16 (on CPUs with native
bf16), and the NNCF-made INT8 file (``--target openvino``, where NNCF is installed); INT8
files in OpenVINO also with the layers left in float computing in bf16 ("+bf16", OpenVINO's
own default on such CPUs). "int8 cpu" is ``--target cpu``'s file, "int8 nncf" ``--target
openvino``'s. Then the fastest of these with the network's final upsampling
left to post-processing ("1/8 logits", what ``--precision auto`` runs).

Every path is timed from the normalised input batch to label maps at the input size, the
work every caller needs: the runtime's ``run`` plus the argmax over the logits (the same
vectorised argmax for every path), or for "1/8 logits" paths the resize-and-argmax of
:func:`~stdc_deploy.postprocess.labels_official`. Paths run interleaved: one run of each per
round, so load from other processes hits all alike; each row carries its speed ratio to the
reference (of median latencies, which a burst of load moves least) and its label agreement
with the FP32 model on the timed frame. INT8 files are calibrated on synthetic frames: their
timings are real, their agreement only says the path works (measure a trained model's with
``stdc quantize`` on real images).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..backends import is_installed, open_backend
from ..core.artifacts import read_metadata
from ..errors import StdcError
from ..optional import is_available
from .environment import _peak_rss_mb, environment
from .run import BenchReport, BenchRow, BenchSettings
from .targets import Target, scratch_dir
from .timing import LatencyStats, time_interleaved

log = logging.getLogger(__name__)
REFERENCE = "hand"
CALIBRATION_IMAGES = 10  # synthetic frames: 8 calibrate, 2 held out


@dataclass(frozen=True)
class CpuPathSpec:
    """One way to run the model on the CPU: a file (by key), a backend and a precision."""

    key: str
    label: str
    artifact: str  # "hand", "fp32", "int8-cpu" or "int8-openvino"
    backend: str | None  # None: a bare default InferenceSession (the reference)
    precision: str = "fp32"
    native: bool = False  # the final upsampling left to post-processing (backends.tail)


PATHS = (
    CpuPathSpec(REFERENCE, "hand export, ORT fp32 (ref)", "hand", None),
    CpuPathSpec("ort-fp32", "stdc export, ORT fp32", "fp32", "onnxruntime"),
    CpuPathSpec("ort-int8", "int8 cpu, ORT", "int8-cpu", "onnxruntime"),
    CpuPathSpec("ov-fp32", "OpenVINO fp32", "fp32", "openvino"),
    CpuPathSpec("ov-bf16", "OpenVINO bf16", "fp32", "openvino", "bf16"),
    CpuPathSpec("ov-int8", "int8 cpu, OV", "int8-cpu", "openvino"),
    CpuPathSpec("ov-int8-bf16", "int8 cpu, OV +bf16", "int8-cpu", "openvino", "bf16"),
    CpuPathSpec("ov-int8-nncf", "int8 nncf, OV", "int8-openvino", "openvino"),
    CpuPathSpec("ov-int8-nncf-bf16", "int8 nncf, OV +bf16", "int8-openvino", "openvino", "bf16"),
    CpuPathSpec("ort-fp32-post", "stdc export, ORT fp32, 1/8 logits", "fp32", "onnxruntime", native=True),
    CpuPathSpec("ort-int8-post", "int8 cpu, ORT, 1/8 logits", "int8-cpu", "onnxruntime", native=True),
    CpuPathSpec("ov-bf16-post", "OpenVINO bf16, 1/8 logits", "fp32", "openvino", "bf16", native=True),
    CpuPathSpec("ov-int8-nncf-bf16-post", "int8 nncf, OV +bf16, 1/8 logits", "int8-openvino", "openvino", "bf16",
                native=True),
)
MODE = "to labels"  # what every path is timed doing: input batch -> label maps at the input size


def available_paths() -> tuple[list[CpuPathSpec], list[str]]:
    """The paths this machine can run, and why the others are left out."""
    from ..backends.cpu import cpu_features

    paths, skipped = [], []
    for spec in PATHS:
        if spec.backend == "openvino" and not is_installed("openvino"):
            skipped.append(f"{spec.key}: OpenVINO is not installed (pip install 'stdc-deploy[openvino]')")
        elif spec.precision == "bf16" and not cpu_features().native_bf16:
            skipped.append(f"{spec.key}: this CPU has no native bf16")
        elif spec.artifact == "int8-openvino" and not is_available("nncf"):
            skipped.append(f"{spec.key}: NNCF is not installed (pip install nncf)")
        else:
            paths.append(spec)
    return paths, skipped


def target_network(target: Target):
    """The PyTorch network behind ``target``: a checkpoint's, or a preset's random weights
    (BN statistics measured on images, as :func:`~.targets.preset_artifact` makes them)."""
    if target.artifact is not None:
        from ..checkpoint import load_model
        from ..core.artifacts import artifact_kind

        if artifact_kind(target.artifact) != "checkpoint":
            raise StdcError("the hand export is made from PyTorch weights: give a checkpoint or a preset",
                            target.artifact)
        return load_model(target.artifact)[0]
    from ..synthetic import random_model

    return random_model(target.preset.arch, seed=0, aux_heads=False, calib_size=(64, 128), calib_images=8,
                        variant=target.preset.variant).eval()


def hand_export(model, path: Path, size: tuple[int, int], batch: int = 1) -> Path:
    """``torch.onnx.export(model, x, path)`` with default settings, as the official code's
    users would write it (the default exporter may write its weights to ``path.data``);
    ``verbose=False`` only keeps its progress lines off the console."""
    import torch

    from ..export.quiet import quiet_exporter

    with quiet_exporter(), torch.no_grad():
        torch.onnx.export(model.eval(), (torch.zeros(batch, 3, *size),), str(path), verbose=False)
    return path


def make_artifacts(model, size: tuple[int, int], batch: int, directory: Path, keys: set[str],
                   calib: Path | None = None) -> dict[str, Path]:
    """The files the paths need, made from the same weights in ``directory``; INT8 files
    calibrated on the images in ``calib`` (default: synthetic frames)."""
    import cv2

    from ..export import OnnxExportOptions, export_onnx
    from ..export.quantize import QuantizeOptions, quantize_onnx
    from ..synthetic import synthetic_images

    files = {"hand": hand_export(model, directory / "hand.onnx", size, batch)}
    files["fp32"] = directory / "stdc.onnx"
    export_onnx(model, files["fp32"], OnnxExportOptions(height=size[0], width=size[1], batch=batch, verify=False))
    synthetic = calib is None  # 8 synthetic frames calibrate, 2 are held out; real images as `stdc quantize`
    if keys & {"int8-cpu", "int8-openvino"} and synthetic:
        calib = directory / "calib"
        calib.mkdir()
        for i, image in enumerate(synthetic_images(CALIBRATION_IMAGES, *size, seed=11)):
            cv2.imwrite(str(calib / f"{i:02d}.png"), image)
    for key in sorted(keys & {"int8-cpu", "int8-openvino"}):
        target = key.split("-", 1)[1]
        files[key] = directory / f"stdc-{key}.onnx"
        log.info("quantizing for %s", target)
        options = QuantizeOptions(target=target, num_images=8, holdout=2) if synthetic else QuantizeOptions(target=target)
        quantize_onnx(files["fp32"], calib, files[key], options)
    return files


def _precision(spec: CpuPathSpec) -> str:
    if not spec.artifact.startswith("int8"):
        return spec.precision
    return "int8" if spec.precision == "fp32" else f"int8+{spec.precision}"


def _bare_session(path: Path, batch: np.ndarray, threads: int | None) -> Callable[[], object]:
    """A default InferenceSession, as users run one; with ``threads`` only its thread count set."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: batch})[0]


def _to_labels(run: Callable[[], np.ndarray], size: tuple[int, int]) -> Callable[[], list[np.ndarray]]:
    """One timed step: run the model, then labels at the input size from its logits."""
    from ..postprocess import labels_official

    return lambda: [labels_official(logits, size) for logits in run()]


def default_path_key(paths: list[CpuPathSpec], files: dict[str, Path]) -> tuple[str | None, str]:
    """The row ``--precision auto`` runs for these files on this CPU, and its one-line reason."""
    from ..backends.cpu import choose_cpu_path

    choice = choose_cpu_path(files["fp32"])
    artifact = next((k for k, f in files.items() if f == choice.artifact and k != "hand"), None)
    backend = choice.backend or "onnxruntime"
    for spec in paths:
        if (spec.artifact, spec.backend, spec.precision, spec.native) == (artifact, backend, choice.precision, True):
            return spec.key, choice.describe()
    return None, choice.describe()


def run_cpu_paths(model, *, name: str, size: tuple[int, int], settings: BenchSettings, threads: int | None = None,
                  on_row: Callable[[BenchRow], None] | None = None,
                  calib: Path | None = None) -> tuple[BenchReport, list[str]]:
    """Time every available CPU path of ``model`` (an eval-mode STDCSeg) round-robin; rows
    in :data:`PATHS` order, and the paths left out with why. ``threads`` applies to every
    path, the reference included (None: each runtime's default, all cores). The report's
    ``choices`` holds what ``--precision auto`` picks here; its row has ``default`` set.
    ``calib``: real images to calibrate the INT8 files on (and measure their agreement, which
    decides whether auto takes them), as ``stdc quantize --calib`` does."""
    from ..preprocess import normalize
    from ..synthetic import synthetic_images

    if "model-only" not in settings.modes or len(settings.modes) > 1 or settings.cuda_graph:
        raise StdcError("the CPU paths are timed from input batch to labels (leave out --mode and --cuda-graph)")
    paths, skipped = available_paths()
    warmup, iters, seconds = settings.for_device("cpu")
    report = BenchReport(settings={**settings.__dict__, "modes": list(settings.modes), "cpu_paths": True,
                                   "threads": threads, "interleaved": True})
    frames = synthetic_images(settings.batch, *size, seed=0)
    with scratch_dir() as scratch:
        files = make_artifacts(model, size, settings.batch, Path(scratch), {p.artifact for p in paths}, calib)
        meta = read_metadata(files["fp32"])
        batch = normalize(frames, meta.mean, meta.std)
        backends, steps, outputs = [], {}, {}
        try:
            for spec in paths:
                if spec.backend is None:
                    run = _bare_session(files["hand"], batch, threads)
                else:
                    backends.append(open_backend(files[spec.artifact], spec.backend, "cpu", spec.precision, threads,
                                                 native_logits=spec.native))
                    if spec.native and not backends[-1].final_resize_dropped:
                        raise StdcError(f"{spec.label}: the model does not end in a resize to leave out",
                                        files[spec.artifact])
                    run = backends[-1].model_only_runner(batch)
                steps[spec.key] = _to_labels(run, size)
                outputs[spec.key] = np.stack(steps[spec.key]())
            default, why = default_path_key(paths, files)
            samples = time_interleaved(steps, warmup, iters, seconds)
        finally:
            for backend in backends:
                backend.close()
    report.choices.append(why)
    reference = LatencyStats.from_seconds(samples[REFERENCE])
    arch = model.cfg.model_name
    for spec in paths:
        stats = LatencyStats.from_seconds(samples[spec.key])
        row = BenchRow(model=name, arch=arch, height=size[0], width=size[1], batch=settings.batch,
                       backend=spec.backend or "onnxruntime (bare)", device="cpu",
                       precision=_precision(spec), mode=MODE,
                       latency=stats, fps=settings.batch * 1e3 / stats.mean_ms, peak_rss_mb=_peak_rss_mb(),
                       path=spec.label, vs_reference=reference.p50_ms / stats.p50_ms,
                       label_agreement=float((outputs[spec.key] == outputs["ort-fp32"]).mean()),
                       default=spec.key == default)
        report.rows.append(row)
        if on_row:
            on_row(row)
    report.environment = environment(["cpu"])
    return report, skipped


__all__ = ["PATHS", "REFERENCE", "CpuPathSpec", "available_paths", "hand_export", "make_artifacts", "run_cpu_paths",
           "target_network"]
