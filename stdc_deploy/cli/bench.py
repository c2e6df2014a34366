"""`stdc bench`: honest, reproducible FPS for presets or any artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from ..bench import MODES, BenchReport, BenchRow, BenchSettings, Target, preset_targets, run_bench
from ..bench.report import write_csv, write_json, write_plot
from ..core.artifacts import read_metadata
from ..core.fileio import check_outputs
from ..errors import StdcError
from ..models import DEFAULT_PRESETS, PAPER_SETUP, PRESETS, Preset, get_arch
from ..optional import require
from .common import OverwriteOption, PrecisionOption, ThreadsOption, command, console, parse_size

# (header, cell) of every table column; a column whose cells are the same in every row moves
# to the line above the table, so the common case fits 80 columns
COLUMNS = (
    ("model", lambda r: r.model),
    ("input", lambda r: f"{r.height}x{r.width}"),
    ("backend", lambda r: r.backend),
    ("device", lambda r: r.device),
    ("prec", lambda r: r.precision + (" +graph" if r.cuda_graph else "")),
    ("batch", lambda r: str(r.batch)),
    ("mode", lambda r: r.mode + ("*" if r.logits == "1/8" and r.mode == "model-only" else "")),
    ("mean ms", lambda r: f"{r.latency.mean_ms:.2f}"),
    ("p50 ms", lambda r: f"{r.latency.p50_ms:.2f}"),
    ("p99 ms", lambda r: f"{r.latency.p99_ms:.2f}"),
    ("FPS", lambda r: f"{r.fps:.1f}"),
    ("paper", lambda r: f"{r.paper_fps:.1f}" if r.paper_fps else "-"),
    ("peak MB", lambda r: f"{r.peak_rss_mb:.0f}" + (f"/{r.gpu_peak_mb:.0f}" if r.gpu_peak_mb is not None else "")),
)
SETUP_COLUMNS = ("model", "input", "backend", "device", "prec", "batch", "mode")  # above the table when constant
TEXT_COLUMNS = ("model", "backend", "device", "prec", "mode")


def bench_table(rows: list[BenchRow]) -> tuple[Table, str]:
    """The rows as a compact table, and the line of settings every row shares."""
    cells = {header: [cell(r) for r in rows] for header, cell in COLUMNS}
    if all(r.paper_fps is None for r in rows):
        del cells["paper"]
    shared = [h for h in SETUP_COLUMNS if len(set(cells[h])) == 1]
    notes = [f"{h} {cells[h][0]}" for h in shared]
    if any(r.gpu_peak_mb is not None for r in rows):
        notes.append("peak MB = RSS/GPU")
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    columns = [h for h in cells if h not in shared]
    for header in columns:
        if header in TEXT_COLUMNS:
            table.add_column(header, overflow="fold")
        else:
            table.add_column(header, justify="right", no_wrap=True)
    for i in range(len(rows)):
        table.add_row(*(Text(cells[h][i]) for h in columns))
    return table, ", ".join(notes)


def cpu_paths_table(rows: list[BenchRow]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("path", overflow="fold")
    for header in ("p50 ms", "mean ms", "FPS", "x hand", "agree %"):
        table.add_column(header, justify="right", no_wrap=True)
    for r in rows:
        label = (r.path or r.backend) + (" *" if r.default else "")
        table.add_row(Text(label), f"{r.latency.p50_ms:.1f}", f"{r.latency.mean_ms:.1f}", f"{r.fps:.1f}",
                      f"{r.vs_reference:.2f}", f"{r.label_agreement * 100:.2f}")
    return table


def _bench_cpu_paths(targets: list[Target], settings: BenchSettings, threads: int | None,
                     backend: list[str] | None, device: str | None, precision: str,
                     calib: Path | None = None) -> BenchReport:
    """--cpu-paths: every CPU path of each target against its hand export, round-robin."""
    from ..bench.cpu_paths import run_cpu_paths, target_network

    if backend or (device and device != "cpu") or precision not in ("auto", "fp32"):
        raise StdcError("--cpu-paths times every CPU backend and precision itself; leave out --backend, --device "
                        "and --precision")
    combined = BenchReport()
    for target in targets:
        network = target_network(target)
        console.print(f"{target.name}: exporting by hand and with stdc, quantizing, then timing round-robin "
                      f"({settings.describe('cpu')}, every path once per round)")
        report, skipped = run_cpu_paths(network, name=target.name, size=target.size, settings=settings,
                                        threads=threads, calib=calib)
        combined.rows.extend(report.rows)
        combined.choices.extend(report.choices)
        combined.settings, combined.environment = report.settings, report.environment
        h, w = target.size
        console.print(Text(f"stdc bench --cpu-paths: {target.name} {h}x{w}, batch {settings.batch}, input batch to "
                           f"labels at {h}x{w}, {report.settings.get('threads') or 'all'} threads; "
                           "x hand = hand-export p50 / path p50"))
        console.print(cpu_paths_table(report.rows))
        for line in report.choices:
            console.print(Text(f"* = --precision auto here: {line.removeprefix('CPU path: ')}"))
        for note in skipped:
            console.print(f"left out: {note}")
        env = report.environment
        console.print(f"environment: {env['cpu']} ({env['cpu_count']} logical CPUs); "
                      + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    return combined


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):  # NaN too
        raise typer.BadParameter(f"{text} is not in the range x>0")
    return value


@command
def bench(
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", help="Artifact to time (checkpoint, .onnx, .ts). Default: the paper's four presets.")] = None,
    preset: Annotated[list[str] | None, typer.Option(
        "--preset", help=f"Preset(s) to time: {', '.join(PRESETS)} (default: the paper's four).")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="stdc1 or stdc2, random weights, with --size.")] = None,
    size: Annotated[str | None, typer.Option("--size", "-s", help="Input HxW (or seg50/seg75) for --arch or dynamic models.")] = None,
    backend: Annotated[list[str] | None, typer.Option(
        "--backend", help="Repeat to compare: torch, onnxruntime, openvino (default: the fastest available).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N.")] = None,
    precision: PrecisionOption = "auto",
    threads: ThreadsOption = None,
    cpu_paths: Annotated[bool, typer.Option(
        "--cpu-paths", help="Time every CPU path (ORT/OpenVINO, FP32/BF16/INT8) against a hand torch.onnx export of "
                            "the same weights, round-robin, with speed ratios (default preset: stdc1-seg50).")] = False,
    batch: Annotated[int, typer.Option("--batch", "-b", min=1, help="Frames per step; FPS counts frames.")] = 1,
    warmup: Annotated[int | None, typer.Option("--warmup", min=0, help="Untimed runs first (default 3 on CPU, 20 on GPU).")] = None,
    iters: Annotated[int | None, typer.Option("--iters", min=1, help="Timed runs per row.")] = None,
    seconds: Annotated[float | None, typer.Option(
        "--seconds", parser=_positive_seconds, metavar="FLOAT",
        help="Time per row instead of --iters, > 0 (default 3 s CPU, 10 s GPU).")] = None,
    mode: Annotated[list[str] | None, typer.Option(
        "--mode", help="model-only (the paper's way) and/or end-to-end (BGR image in, labels out). Default: model-only.")] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="PyTorch CUDA: replay a captured CUDA graph.")] = False,
    calib: Annotated[Path | None, typer.Option(
        "--calib", help="--cpu-paths: calibrate the INT8 files on these images (default: synthetic frames).")] = None,
    frame: Annotated[str | None, typer.Option(
        "--frame", help="End-to-end: the image size HxW (default: the network input size), e.g. 1024x2048 "
                        "for Cityscapes frames into a 512x1024 network.")] = None,
    compare_bare: Annotated[bool, typer.Option(
        "--compare-bare", help="Also time a bare onnxruntime session.run loop and print the ratio.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write all rows and the environment as JSON.")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write the rows as CSV.")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Bar chart of FPS (PNG; needs matplotlib).")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Measure latency and FPS. Without --model: the paper's four presets, random weights.

    Speed does not depend on weight values, so the presets need no download. Every row says
    what was timed (model-only or end-to-end), with latency percentiles and peak memory;
    --json/--csv hold every statistic (p90, min, max too).
    """
    modes = tuple(mode or ("model-only",))
    if calib is not None and not cpu_paths:
        raise StdcError("--calib is for --cpu-paths (stdc quantize --calib makes INT8 files)")
    if calib is not None and not calib.is_dir():
        raise StdcError("no such folder", calib)
    if frame is not None and "end-to-end" not in modes:
        raise StdcError("--frame sets the image size of end-to-end rows: add --mode end-to-end")
    settings = BenchSettings(batch=batch, warmup=warmup, iters=iters, seconds=seconds, modes=modes,
                             cuda_graph=cuda_graph, frame=parse_size(frame) if frame else None)
    input_size = parse_size(size) if size else None
    check_outputs([json_path, csv_path, plot], [model], overwrite=overwrite)
    if plot is not None:
        require("matplotlib", "--plot")
    if model is not None:
        if preset or arch:
            raise StdcError("--model cannot be combined with --preset or --arch")
        meta = read_metadata(model)
        if meta.input_height is not None:
            if input_size and input_size != (meta.input_height, meta.input_width):
                raise StdcError(f"this model takes {meta.input_height}x{meta.input_width}, not --size {size}", model)
            input_size = (meta.input_height, meta.input_width)
        targets = [Target(model.name, input_size or (meta.opt_height, meta.opt_width), artifact=model)]
    elif arch is not None:
        cfg = get_arch(arch)
        h, w = input_size or (512, 1024)
        name = f"{cfg.model_name}-{h}x{w}"
        targets = [Target(name, (h, w), preset=Preset(name, cfg.name, h, w, variant=cfg.variant))]
    else:
        targets = preset_targets(preset or (["stdc1-seg50"] if cpu_paths else list(DEFAULT_PRESETS)))
    if cpu_paths:
        report = _bench_cpu_paths(targets, settings, threads, backend, device, precision, calib)
        for path, write in ((json_path, write_json), (csv_path, write_csv), (plot, write_plot)):
            if path is not None:
                write(report, path)
                console.print(f"wrote {path}")
        return
    backends = list(dict.fromkeys(backend)) if backend else [None]

    def on_row(row: BenchRow) -> None:
        console.print(f"  {row.model} {row.backend} {row.device} {row.precision} {row.mode}: "
                      f"{row.latency.mean_ms:.2f} ms mean, {row.fps:.1f} FPS")

    console.print(f"timing {len(targets)} model(s) x {len(backends)} backend(s) on {device or 'the default device'}")
    report = run_bench(targets, backends, settings, device=device, precision=precision,
                       compare_bare=compare_bare, on_row=on_row, threads=threads)
    for line in dict.fromkeys(report.choices):
        console.print(line)
    table, setup = bench_table(report.rows)
    if settings.frame:
        setup += f"{', ' if setup else ''}end-to-end frames {settings.frame[0]}x{settings.frame[1]}"
    console.print(Text(f"stdc bench: {setup}" if setup else "stdc bench"))
    console.print(table)
    if any(r.logits == "1/8" and r.mode == "model-only" for r in report.rows):
        console.print("* without the final 8x upsampling (--precision auto resizes in post-processing)")
    env = report.environment
    gpu = f", GPU {env['gpu']['name']}" if env.get("gpu") else ""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    devices = sorted({r.device for r in report.rows})
    console.print(f"environment: {env['cpu']} ({env['cpu_count']} logical CPUs, torch threads "
                  f"{env['torch_threads']}){gpu}; {versions}")
    console.print("timing: " + "; ".join(f"{d}: {settings.describe(d)}" for d in devices))
    if any(r.paper_fps for r in report.rows):
        console.print(f"paper: FPS in the paper, {PAPER_SETUP} (a different GPU and runtime; compare shapes, "
                      "not values)")
    for ref in report.reference:
        ratio = f" -> stdc bench at {ref['ratio'] * 100:.1f}% of it" if ref["ratio"] else ""
        console.print(f"bare onnxruntime session.run loop on {ref['model']}: {ref['bare_fps']:.1f} FPS{ratio}")
    for path, write in ((json_path, write_json), (csv_path, write_csv), (plot, write_plot)):
        if path is not None:
            write(report, path)
            console.print(f"wrote {path}")


__all__ = ["MODES", "bench"]
