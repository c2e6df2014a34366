"""`stdc bench`: honest, reproducible FPS for presets or any artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..bench import MODES, BenchRow, BenchSettings, Target, preset_targets, run_bench
from ..bench.report import write_csv, write_json, write_plot
from ..errors import StdcError
from ..models import PAPER_SETUP, PRESETS, get_arch
from .common import command, console, parse_size


def _row_cells(row: BenchRow) -> list[str]:
    lat = row.latency
    paper = f"{row.paper_fps:.1f}" if row.paper_fps else "-"
    memory = f"{row.peak_rss_mb:.0f}" + (f" / {row.gpu_peak_mb:.0f}" if row.gpu_peak_mb is not None else "")
    precision = row.precision + (" +graph" if row.cuda_graph else "")
    return [row.model, f"{row.height}x{row.width}", row.backend, row.device, precision, str(row.batch), row.mode,
            f"{lat.mean_ms:.2f}", f"{lat.p50_ms:.2f}", f"{lat.p90_ms:.2f}", f"{lat.p99_ms:.2f}",
            f"{row.fps:.1f}", paper, memory, str(lat.iters)]


HEADERS = ["model", "input", "backend", "device", "precision", "batch", "mode", "mean ms", "p50", "p90", "p99",
           "FPS", "paper FPS", "peak MB (RSS / GPU)", "runs"]


@command
def bench(
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Artifact to time (checkpoint, .onnx, .ts). Default: the paper's four presets.")] = None,
    preset: Annotated[list[str] | None, typer.Option(
        "--preset", help=f"Preset(s) to time: {', '.join(PRESETS)} (default: all four).")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="stdc1 or stdc2, random weights, with --size.")] = None,
    size: Annotated[str | None, typer.Option("--size", "-s", help="Input HxW (or seg50/seg75) for --arch or dynamic models.")] = None,
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", help="Repeat to compare: torch, onnxruntime, openvino (default: the fastest available).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N.")] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16 (PyTorch CUDA) or bf16 (OpenVINO CPU).")] = "fp32",
    batch: Annotated[int, typer.Option("--batch", "-b", help="Frames per step; FPS counts frames.")] = 1,
    warmup: Annotated[int | None, typer.Option("--warmup", help="Untimed runs first (default 3 on CPU, 20 on GPU).")] = None,
    iters: Annotated[int | None, typer.Option("--iters", help="Timed runs per row.")] = None,
    seconds: Annotated[float | None, typer.Option("--seconds", help="Time per row instead of --iters (default 3 s CPU, 10 s GPU).")] = None,
    mode: Annotated[list[str] | None, typer.Option(
        "--mode", help="model-only (the paper's way) and/or end-to-end (BGR image in, labels out). Default: model-only.")] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="PyTorch CUDA: replay a captured CUDA graph.")] = False,
    compare_bare: Annotated[bool, typer.Option(
        "--compare-bare", help="Also time a bare onnxruntime session.run loop and print the ratio.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write all rows and the environment as JSON.")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write the rows as CSV.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Bar chart of FPS (PNG; needs matplotlib).")] = None,
) -> None:
    """Measure latency and FPS. Without --model: the paper's four presets, random weights.

    Speed does not depend on weight values, so the presets need no download. Every row says
    what was timed (model-only or end-to-end), with latency percentiles and peak memory.
    """
    settings = BenchSettings(batch=batch, warmup=warmup, iters=iters, seconds=seconds,
                             modes=tuple(mode or ("model-only",)), cuda_graph=cuda_graph)
    input_size = parse_size(size) if size else None
    if model is not None:
        if preset or arch:
            raise StdcError("--model cannot be combined with --preset or --arch")
        if not model.exists():
            raise StdcError("no such file", model)
        from ..core.artifacts import read_metadata

        meta = read_metadata(model)
        if meta.input_height is not None:
            if input_size and input_size != (meta.input_height, meta.input_width):
                raise StdcError(f"this model takes {meta.input_height}x{meta.input_width}, not --size {size}", model)
            input_size = (meta.input_height, meta.input_width)
        targets = [Target(model.name, input_size or (meta.opt_height, meta.opt_width), artifact=model)]
    elif arch is not None:
        get_arch(arch)
        h, w = input_size or (512, 1024)
        from ..models import Preset

        targets = [Target(f"{arch}-{h}x{w}", (h, w), preset=Preset(f"{arch}-{h}x{w}", arch, h, w))]
    else:
        targets = preset_targets(preset or list(PRESETS))
    backends = list(dict.fromkeys(backend)) if backend else [None]

    table = Table(*HEADERS, title="stdc bench", title_justify="left")
    rows_seen: list[BenchRow] = []

    def on_row(row: BenchRow) -> None:
        rows_seen.append(row)
        console.print(f"  {row.model} {row.backend} {row.device} {row.precision} {row.mode}: "
                      f"{row.latency.mean_ms:.2f} ms mean, {row.fps:.1f} FPS", highlight=False)

    device_hint = device or "the default device"
    console.print(f"timing {len(targets)} model(s) x {len(backends)} backend(s) on {device_hint}", highlight=False)
    report = run_bench(targets, backends, settings, device=device, precision=precision,
                       compare_bare=compare_bare, on_row=on_row)
    for row in report.rows:
        table.add_row(*_row_cells(row))
    console.print(table)
    env = report.environment
    gpu = f", GPU {env['gpu']['name']}" if env.get("gpu") else ""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    devices = sorted({r.device for r in report.rows})
    console.print(f"environment: {env['cpu']} ({env['cpu_count']} logical CPUs, torch threads "
                  f"{env['torch_threads']}){gpu}; {versions}", highlight=False)
    console.print("timing: " + "; ".join(f"{d}: {settings.describe(d)}" for d in devices), highlight=False)
    if any(r.paper_fps for r in report.rows):
        console.print(f"paper FPS: {PAPER_SETUP} (a different GPU and runtime; compare shapes, not values)",
                      highlight=False)
    for ref in report.reference:
        ratio = f" -> stdc bench at {ref['ratio'] * 100:.1f}% of it" if ref["ratio"] else ""
        console.print(f"bare onnxruntime session.run loop on {ref['model']}: {ref['bare_fps']:.1f} FPS{ratio}",
                      highlight=False)
    if json_path:
        write_json(report, json_path)
        console.print(f"wrote {json_path}", highlight=False)
    if csv_path:
        write_csv(report, csv_path)
        console.print(f"wrote {csv_path}", highlight=False)
    if plot:
        write_plot(report, plot)
        console.print(f"wrote {plot}", highlight=False)


__all__ = ["MODES", "bench"]
