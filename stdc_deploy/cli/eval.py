"""`stdc eval`: mIoU of one or more artifacts on Cityscapes-format or generic data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..backends import open_backend
from ..errors import StdcError
from ..evaluate import Scores, cityscapes_dataset, evaluate, generic_dataset
from ..core.fileio import atomic_write_bytes, check_outputs, check_writable_dir
from .common import OverwriteOption, PrecisionOption, ThreadsOption, command, console, err_console, print_error, styled

MIN_SCALE, MAX_SCALE = 0.05, 4.0  # --scale


def check_prediction_dir(folder: Path, overwrite: bool) -> None:
    """--save-predictions: a writable folder that holds no files yet, unless --overwrite."""
    check_writable_dir(folder)
    if not overwrite and folder.is_dir() and any(p.is_file() for p in folder.rglob("*")):
        raise StdcError("this folder already holds files (pass --overwrite to write predictions into it)", folder)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 100:.2f}"


@command
def eval_command(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="Artifact(s); repeat to compare (drops vs the first).")],
    data: Annotated[Path | None, typer.Option("--data", help="Cityscapes root (leftImg8bit/, gtFine/).")] = None,
    split: Annotated[str, typer.Option("--split", help="Cityscapes split.")] = "val",
    images: Annotated[Path | None, typer.Option("--images", help="Generic layout: folder of images.")] = None,
    masks: Annotated[Path | None, typer.Option("--masks", help="Generic layout: masks of train ids, same names (.png).")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", min=1, help="Generic layout: number of classes.")] = None,
    ignore_index: Annotated[int, typer.Option("--ignore-index", min=0, max=65535,
                                              help="Generic layout: label value to ignore.")] = 255,
    scale: Annotated[float | None, typer.Option(
        "--scale", min=MIN_SCALE, max=MAX_SCALE,
        help="Network input = scale x image size (0.5: Seg50, 0.75: Seg75, 1.0: whole image). "
             "Default: the model's own input size.")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="torch, onnxruntime or openvino.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N.")] = None,
    precision: PrecisionOption = "fp32",
    threads: ThreadsOption = None,
    max_images: Annotated[int | None, typer.Option("--max-images", "--limit", min=1,
                                                   help="Only the first N images.")] = None,
    save_predictions: Annotated[Path | None, typer.Option(
        "--save-predictions", "-d",
        help="Folder for the first model's predictions (Cityscapes: label-id PNGs for the official scripts).")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the scores as JSON.")] = None,
    max_drop: Annotated[float | None, typer.Option(
        "--max-drop", min=0.0,
        help="Exit 1 if a model's mIoU is more than this many points below the first's.")] = None,
    overwrite: OverwriteOption = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Evaluate mIoU with the official STDC-Seg protocol (align_corners resizes, one confusion matrix)."""
    check_outputs([json_path], model, overwrite=overwrite)
    if save_predictions is not None:
        check_prediction_dir(save_predictions, overwrite)
    if data is not None and (images or masks):
        raise StdcError("use --data (Cityscapes) or --images/--masks (generic), not both")
    if data is not None:
        dataset = cityscapes_dataset(data, split)
    elif images is not None and masks is not None:
        if num_classes is None:
            raise StdcError("the generic layout needs --num-classes")
        dataset = generic_dataset(images, masks, num_classes, ignore_index)
    else:
        raise StdcError("give --data ROOT (Cityscapes layout) or --images DIR --masks DIR --num-classes N")
    total = min(max_images or len(dataset.samples), len(dataset.samples))
    opened = []
    try:
        for path in model:
            opened.append(open_backend(path, backend=backend, device=device, precision=precision, threads=threads))
            if opened[-1].cpu_path is not None:
                console.print(opened[-1].cpu_path.describe())
        console.print(f"{total} images ({dataset.layout}), {dataset.num_classes} classes; "
                      + "; ".join(b.describe() for b in opened))
        bar = Progress(TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=err_console, disable=not progress)
        with bar:
            task = bar.add_task("eval", total=total)
            results = evaluate(dataset, opened, scale=scale, limit=max_images, save_predictions=save_predictions,
                               on_image=lambda _: bar.advance(task))
    finally:
        for b in opened:
            b.close()

    names = opened[0].metadata.class_names
    scores = [r.scores for r in results]
    table = Table("class", title="IoU %", title_justify="left")
    for r in results:
        table.add_column(Text(f"{r.name} ({r.backend})"), justify="right", overflow="fold")
    for c, name in enumerate(names):
        table.add_row(Text(name), *[_pct(s.iou[c]) for s in scores])
    table.add_row(styled("mIoU", "bold"), *[styled(_pct(s.miou), "bold") for s in scores])
    table.add_row("pixel accuracy", *[_pct(s.pixel_accuracy) for s in scores])
    console.print(table)
    console.print("; ".join(f"{r.name}: input " + ", ".join(f"{h}x{w}" for h, w in sorted(r.input_sizes))
                            for r in results))
    absent = [names[c] for c, v in enumerate(scores[0].iou) if v is None]
    if absent:
        console.print(f"not in labels or predictions (left out of the mean): {', '.join(absent)}")
    drops = [(r.name, (scores[0].miou - s.miou) * 100) for r, s in zip(results[1:], scores[1:])]
    for name, drop in drops:
        console.print(f"{name}: mIoU {drop:+.2f} points below {results[0].name}" if drop >= 0 else
                      f"{name}: mIoU {-drop:.2f} points above {results[0].name}")
    if json_path:
        payload = {"layout": dataset.layout, "images": total, "scale": scale, "class_names": list(names),
                   "models": [_model_json(r.name, r.backend, s, r.confusion) for r, s in zip(results, scores)],
                   "drops": [{"model": n, "miou_drop_points": d} for n, d in drops]}
        atomic_write_bytes(json_path, (json.dumps(payload, indent=2) + "\n").encode())
        console.print(f"wrote {json_path}")
    if save_predictions is not None:
        console.print(f"predictions of {results[0].name} in {save_predictions}")
    if max_drop is not None:
        failed = [(n, d) for n, d in drops if d > max_drop]
        if failed:
            print_error("; ".join(f"{n} loses {d:.2f} mIoU points (> {max_drop:g})" for n, d in failed))
            raise typer.Exit(1)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _model_json(name: str, backend: str, scores: Scores, confusion) -> dict:
    return {"model": name, "backend": backend, "miou": _finite(scores.miou),
            "pixel_accuracy": _finite(scores.pixel_accuracy),
            "iou": list(scores.iou), "pixels": scores.pixels, "confusion": confusion.tolist()}
