"""`stdc infer`: segment images, folders, globs, path lists, videos, cameras and streams."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..bench import model_only_fps
from ..errors import StdcError
from ..jobs import InferOptions, InferReport, ProgressSink, parse_save, run_infer
from ..preprocess import PROTOCOLS
from ..scaleout import ModelSpec
from ..scaleout.ray import RayOptions, run_infer_ray
from ..segmenter import Segmenter
from ..sources import resolve_source
from .common import BACKEND_HELP, announce_default_model, PrecisionOption, ThreadsOption, command, console, err_console, parse_size

ModelOption = Annotated[Path | None, typer.Option(
    "--model", "-m", help="Checkpoint, .onnx or engine. Default: the best artifact in engines/ or models/.")]
BackendOption = Annotated[str | None, typer.Option("--backend", help=BACKEND_HELP)]
DeviceOption = Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: cuda if usable).")]
EXECUTORS = ("local", "ray")


class _RichProgress(ProgressSink):
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None

    def start(self, description: str, total: int | None) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                      console=err_console, transient=False)
            self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="")

    def advance(self, count: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[-1]
            speed = task.speed
            self._progress.update(self._task, advance=count, rate=f"{speed:.1f} frames/s" if speed else "")

    def error(self, name: str, reason: str) -> None:
        (self._progress.console if self._progress else err_console).print(
            Text.assemble(("error:", "bold red"), f" {name}: {reason}"), highlight=False, soft_wrap=True)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _report_precision(segmenter: Segmenter, model: Path, size: tuple[int, int] | None, device: str | None) -> None:
    """Reduced precision: label agreement against FP32 on a reference frame, stated up front."""
    from ..synthetic import synthetic_images

    frame = synthetic_images(1, *segmenter.input_size, seed=7)[0]
    reduced = segmenter.predict(frame)
    with Segmenter(model, backend=segmenter.backend.name, device=device, size=size,
                   protocol=segmenter.protocol) as reference:
        agreement = float((reference.predict(frame) == reduced).mean())
    console.print(f"{segmenter.backend.effective_precision} vs fp32 label agreement on a synthetic reference frame "
                  f"(not your data; `stdc eval --max-drop` measures it on yours): {agreement * 100:.2f}%", highlight=False)


def _infer_on_ray(spec: ModelSpec, source, options: InferOptions, ray_options: RayOptions,
                  progress: bool) -> InferReport:
    gpus = f", {ray_options.gpus_per_worker:g} GPU" if ray_options.gpus_per_worker else ""
    console.print(f"{source.description}: {spec.model} on Ray, {ray_options.workers} worker(s) of "
                  f"{ray_options.cpus_per_worker:g} CPU{gpus}", highlight=False)
    report = run_infer_ray(spec, source, options, ray_options, progress=_RichProgress(progress))
    _summary(report)
    if report.videos:
        console.print(f"{report.videos} video(s) done", highlight=False)
    return report


def _summary(report: InferReport) -> None:
    times = report.times
    if report.frames:
        console.print(f"{report.frames} frames in {report.seconds:.1f} s ({report.fps:.1f} frames/s end to end); "
                      f"{times.describe()}", highlight=False)
    if report.failed:
        err_console.print(f"{len(report.failed)} input(s) failed: "
                          + ", ".join(name for name, _ in report.failed[:5])
                          + (" ..." if len(report.failed) > 5 else ""), highlight=False)


@command
def infer(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE",
        help="Image, folder, glob ('data/*.png'), .txt list of paths, video file, camera index (0) or stream URL.")],
    model: ModelOption = None,
    out_dir: Annotated[Path, typer.Option("--out-dir", "-d", help="Folder for the outputs.")] = Path("outputs"),
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output video file, for one video or stream (default: OUT_DIR/NAME_overlay.mp4).")] = None,
    save: Annotated[str | None, typer.Option(
        "--save", help="Comma-separated: mask (uint8 train-id PNG), color (palette), overlay. "
                       "Default: mask,overlay for images; overlay video for videos.")] = None,
    alpha: Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Weight of the colours in overlays, 0-1.")] = 0.5,
    batch: Annotated[int, typer.Option("--batch", "-b", min=1, help="Frames per inference call.")] = 1,
    backend: BackendOption = None,
    device: DeviceOption = None,
    precision: PrecisionOption = "auto",
    threads: ThreadsOption = None,
    size: Annotated[str | None, typer.Option(
        "--size", "-s", help="Network input HxW for dynamic models and checkpoints (default: the export size).")] = None,
    protocol: Annotated[str | None, typer.Option(
        "--protocol", help="official: the evaluation pipeline (align_corners resize of the normalised image, then of the "
                           "logits, argmax); fast: OpenCV resize of the 8-bit image, argmax, then nearest (differs along "
                           "boundaries). Default: official for images, fast for videos and streams.")] = None,
    codec: Annotated[str | None, typer.Option(
        "--codec", help="Output video codec: h264 (default; .mp4/.m4v/.mov/.mkv), mpeg4, mjpeg (default for .avi), "
                        "ffv1 (lossless; .mkv/.avi).")] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Search folders recursively.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    max_frames: Annotated[int | None, typer.Option(
        "--max-frames", min=1, help="Stop after N frames of a video, camera or stream.")] = None,
    benchmark: Annotated[bool, typer.Option(
        "--benchmark", help="Also time the model alone on this backend and report end-to-end vs model-only FPS.")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
    executor: Annotated[str, typer.Option(
        "--executor", help="local: this process; ray: a Ray cluster (the ray extra). With ray, the inputs, the model "
                           "and --out-dir must be at the same paths on every node (a shared file system).")] = "local",
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="With --executor ray: the cluster to join (auto, HOST:6379, ray://HOST:10001). "
                              "Default: RAY_ADDRESS, else a Ray started on this machine for the run.")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="With --executor ray: inference workers for images, and videos at a time "
                                 "(default 1).")] = None,
    gpus_per_worker: Annotated[float | None, typer.Option(
        "--gpus-per-worker", min=0.0, help="With --executor ray: GPUs per worker; fractions share one "
                                           "(default 0).")] = None,
    cpus_per_worker: Annotated[float | None, typer.Option(
        "--cpus-per-worker", min=0.01, help="With --executor ray: CPUs per worker, also its runtime threads unless "
                                            "--threads (default 1).")] = None,
) -> None:
    """Segment SOURCE and write label masks, colour masks, overlays or videos.

    Unreadable images are named and skipped (exit code 1 at the end); existing outputs are
    never replaced without --overwrite; Ctrl-C leaves a playable video of the frames done.
    """
    if protocol is not None and protocol not in PROTOCOLS:
        raise StdcError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    if executor not in EXECUTORS:
        raise StdcError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    ray_flags = {"--ray-address": ray_address, "--workers": workers, "--gpus-per-worker": gpus_per_worker,
                 "--cpus-per-worker": cpus_per_worker}
    given = [flag for flag, value in ray_flags.items() if value is not None]
    if executor == "local" and given:
        raise StdcError(f"{', '.join(given)}: only with --executor ray")
    if executor == "ray" and benchmark:
        raise StdcError("--benchmark times the model on this machine; run it without --executor ray")
    options = InferOptions(out_dir=out_dir, output=output, save=parse_save(save), alpha=alpha, batch=batch,
                           overwrite=overwrite, max_frames=max_frames, protocol=protocol,
                           codec=codec)
    resolved = resolve_source(source, recursive=recursive)
    model = model or announce_default_model()
    input_size = parse_size(size) if size else None
    if executor == "ray":
        ray_options = RayOptions(ray_address, workers or 1, gpus_per_worker or 0.0, cpus_per_worker or 1.0)
        spec = ModelSpec(model, backend, device, precision, input_size, threads)
        return _finish(_infer_on_ray(spec, resolved, options, ray_options, progress))
    with Segmenter(model, backend=backend, device=device, precision=precision, size=input_size,
                   protocol=protocol or "official", threads=threads) as segmenter:
        if segmenter.backend.cpu_path is not None:
            console.print(segmenter.backend.cpu_path.describe(), highlight=False)
        kinds = [k for k, present in (("image", resolved.images), ("video", resolved.videos or resolved.stream is not None))
                 if present]
        post = ", ".join(f"{options.protocol_for(k)} protocol for {k}s" for k in kinds)
        console.print(f"{resolved.description}: {segmenter.describe()}, {post}", highlight=False)
        choice = segmenter.backend.cpu_path
        if choice is not None and segmenter.backend.artifact != model:
            pass  # auto picked an INT8 file: its agreement, measured on held-out images, is in the line above
        elif segmenter.backend.precision != "fp32":
            _report_precision(segmenter, model, input_size, device)
        model_only_before = model_only_fps(segmenter, batch) if benchmark else None
        report = run_infer(segmenter, resolved, options, progress=_RichProgress(progress))
        _summary(report)
        if benchmark and report.frames and not report.interrupted:
            model_only = (model_only_before + model_only_fps(segmenter, batch)) / 2
            console.print(f"benchmark ({segmenter.backend.describe()}, batch {batch}): end to end "
                          f"{report.fps:.2f} FPS, model only {model_only:.2f} FPS (mean of before and after) "
                          f"-> {report.fps / model_only * 100:.1f}%", highlight=False)
    _finish(report)


def _finish(report: InferReport) -> None:
    """What was written, notes, and the exit code: 128 + signal when interrupted, 1 when inputs failed."""
    if report.written:
        shown = [str(p) for p in report.written if not p.parent.name.endswith("_masks")][:3]
        more = len(report.written) - len(shown)
        console.print(f"wrote {', '.join(shown)}" + (f" and {more} more" if more else ""), highlight=False)
    for note in report.notes:
        err_console.print(f"note: {note}")
    if report.interrupted:
        what = "terminated" if report.signal == signal.SIGTERM else "interrupted"
        err_console.print(f"{what}: outputs so far are complete files")
        raise typer.Exit(128 + (report.signal or signal.SIGINT))
    if report.failed:
        raise typer.Exit(1)
