"""`stdc train`: train or fine-tune STDC-Seg with the official recipe."""

from __future__ import annotations

import collections
import os
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..errors import InvalidValue, StdcError
from ..train import Monitor, Run, RunFiles, TrainConfig, read_state, train
from ..train.data import common_size
from ..train.weights import init_network
from .common import OverwriteOption, command, console, err_console, parse_size

CITYSCAPES_SIZE = (512, 1024)  # the official 1024x512 (WxH) crop
CITYSCAPES_SCALES = (0.125, 1.5)  # the official random scales of the full-resolution images
DEFAULT_ITERS = {"cityscapes": 60000, "generic": 2000}
MAX_DEFAULT_SIDE = 1024


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_workers() -> int:
    return min(4, max(0, (os.cpu_count() or 1) - 1))


def _parse_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise InvalidValue("scale_range", f"expected MIN,MAX such as 0.5,1.5, got {text!r}") from None
    return low, high


def _fit_size(size: tuple[int, int]) -> tuple[int, int]:
    scale = min(1.0, MAX_DEFAULT_SIDE / max(size))
    return max(16, int(size[0] * scale)), max(16, int(size[1] * scale))


class _Display(Monitor):
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.best_text = ""
        self.ticks: collections.deque = collections.deque(maxlen=50)  # (time, iteration): the recent rate

    def on_start(self, run: Run) -> None:
        c = run.config
        data = c.data or c.images
        val = f"{run.val_images} val images" if run.val_images else "no validation images"
        console.print(f"training {run.model_name}, {c.num_classes} classes, on {data}: {run.train_images} train / "
                      f"{val}; crop {c.size[0]}x{c.size[1]}, batch {c.batch}, {c.iters} iterations, lr {c.lr:g}, "
                      f"{run.device}")
        if run.init is not None:
            console.print(f"initialised from {run.init.source}: {'; '.join(run.init.lines)}")
        if run.start_iteration:
            console.print(f"resuming at iteration {run.start_iteration} from {run.files.state}")
        self.task = self.progress.add_task("train", total=c.iters, completed=run.start_iteration, status="")

    def on_step(self, iteration: int, loss: float, lr: float) -> None:
        now = time.perf_counter()
        self.ticks.append((now, iteration))
        (t0, i0), rate = self.ticks[0], ""
        if now > t0:
            rate = f"{(iteration - i0) / (now - t0):.2f} it/s "
        self.progress.update(self.task, completed=iteration,
                             status=f"{rate}loss {loss:.3f} lr {lr:.2e}{self.best_text}")

    def on_record(self, record: dict, best: bool) -> None:
        text = f"iteration {record['iteration']}: loss {record.get('loss', float('nan')):.4f}"
        if "val_miou" in record:
            text += f", val mIoU {record['val_miou'] * 100:.2f}%{' (best)' if best else ''}"
            if best:
                self.best_text = f" best {record['val_miou'] * 100:.2f}%"
        self.progress.console.print(text)


@command
def train_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (OUT.pth); beside it: "
                                         "OUT_best.pth, OUT_state.pt (resume), OUT_log.json / .csv.")],
    data: Annotated[Path | None, typer.Option("--data", help="Cityscapes root (leftImg8bit/, gtFine/; train split, "
                                                             "val split for validation).")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Generic layout: folder of training images.")] = None,
    masks: Annotated[Path | None, typer.Option("--masks", help="Generic layout: masks of class ids, same names (.png).")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", min=1, help="Generic layout: number of classes.")] = None,
    ignore_index: Annotated[int | None, typer.Option("--ignore-index", min=0, max=65535,
                                                     help="Generic layout: mask value to ignore [255].")] = None,
    val_images: Annotated[Path | None, typer.Option("--val-images", help="Validation images (generic layout).")] = None,
    val_masks: Annotated[Path | None, typer.Option("--val-masks", help="Validation masks.")] = None,
    val_split: Annotated[float | None, typer.Option("--val-split", min=0.0, max=0.9,
                                                    help="Hold out this fraction of the training images for "
                                                         "validation (seeded).")] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="stdc1 or stdc2 [stdc1, or the --init file's].")] = None,
    variant: Annotated[str | None, typer.Option("--variant", help="plain, cut or del [plain, or the --init file's].")] = None,
    init: Annotated[Path | None, typer.Option("--init", help="ImageNet backbone (STDCNet813M_73.91.tar / "
                                              "STDCNet1446_76.47.tar) or a segmentation checkpoint to fine-tune.")] = None,
    size: Annotated[str | None, typer.Option("--size", "-s", help="Training crop HxW [Cityscapes 512x1024; generic: "
                                             "the images' size, at most 1024 a side].")] = None,
    iters: Annotated[int | None, typer.Option("--iters", min=1, help="Iterations [Cityscapes 60000, generic 2000].")] = None,
    batch: Annotated[int | None, typer.Option("--batch", "-b", min=2, help="Images per iteration [8].")] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Base learning rate; heads get 10x [0.01].")] = None,
    warmup: Annotated[int | None, typer.Option("--warmup", min=0, help="Warm-up iterations [a tenth of --iters, "
                                                                       "at most 1000].")] = None,
    scale_range: Annotated[str | None, typer.Option("--scale-range", help="Random scale MIN,MAX [Cityscapes 0.125,1.5 as "
                                                  "the paper; generic 0.5,1.5].")] = None,
    jitter: Annotated[float | None, typer.Option("--jitter", min=0.0, max=0.99,
                                                 help="Colour jitter strength [0.5].")] = None,
    flip: Annotated[bool | None, typer.Option("--flip/--no-flip", help="Random horizontal flips [on].")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", min=1, help="Validate and save every N iterations "
                                                   "[a tenth of --iters, at most 2000].")] = None,
    val_scale: Annotated[float | None, typer.Option("--val-scale", min=0.05, max=4.0,
                                                    help="Validation input = scale x image [generic 1.0, "
                                                         "Cityscapes 0.5].")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of weights, sample order and augmentation [0].")] = None,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA [on].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run of --output from OUT_state.pt (same "
                                         "schedule; options given must match it).")] = False,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N [cuda if available].")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Data loading processes [CPU cores - 1, "
                                                                         "at most 4].")] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for PyTorch [all cores]; fewer "
                                               "helps when other work shares the CPU.")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Train or fine-tune STDC-Seg on Cityscapes or your own images and masks, with the
    paper's recipe (OHEM + detail loss, SGD with warm-up and poly decay)."""
    given = {"data": data, "images": images, "masks": masks, "num_classes": num_classes, "ignore_index": ignore_index,
             "val_images": val_images, "val_masks": val_masks, "val_split": val_split, "arch": arch,
             "variant": variant, "init": init, "size": parse_size(size) if size else None, "iters": iters,
             "batch": batch, "lr": lr, "warmup": warmup,
             "scale_range": _parse_range(scale_range) if scale_range else None, "jitter": jitter, "flip": flip,
             "eval_every": eval_every, "val_scale": val_scale, "seed": seed, "amp": amp}
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
    files = RunFiles.beside(output)
    if resume:
        saved = read_state(files.state)["config"]
        for key, value in given.items():
            if TrainConfig.from_dict({**saved, key: value}) != TrainConfig.from_dict(saved):
                flag = "--" + key.replace("_", "-")
                raise StdcError(f"{flag} {value} differs from the run being resumed ({saved.get(key)}); "
                                "resume with the same options, or start a new run", files.state)
        config = TrainConfig.from_dict(saved)
    else:
        config = _new_config(given)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    stop = {"signal": None}

    def request_stop(signum, frame) -> None:
        if stop["signal"] is None:
            stop["signal"] = signum
            err_console.print("stopping after this iteration (the state is saved for --resume) ...")

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"),
                        TimeRemainingColumn(), console=err_console, transient=True)
    try:
        with progress:
            result = train(config, output, device=device or _default_device(),
                           workers=_default_workers() if workers is None else workers, resume=resume,
                           overwrite=overwrite, monitor=_Display(progress), should_stop=lambda: stop["signal"] is not None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result.interrupted:
        err_console.print(f"interrupted at iteration {result.iterations}/{config.iters}: state saved to "
                          f"{files.state}; continue with: stdc train -o {output} --resume")
        raise typer.Exit(143 if stop["signal"] == signal.SIGTERM else 130)
    if result.best_miou is not None:
        console.print(f"best val mIoU {result.best_miou * 100:.2f}% at iteration {result.best_iteration}: {files.best}")
    console.print(f"last weights: {files.last}; log: {files.log_csv}")
    console.print(f"next: stdc export onnx {files.best if result.best_miou is not None else files.last}")


def _new_config(given: dict) -> TrainConfig:
    layout = "cityscapes" if "data" in given else "generic"
    if layout == "generic":
        if "images" not in given or "masks" not in given:
            raise StdcError("give --data (Cityscapes root) or --images and --masks")
        if "num_classes" not in given:
            raise StdcError("--num-classes is needed with --images / --masks")
    elif "images" in given or "masks" in given:
        raise StdcError("give --data or --images / --masks, not both")
    elif given.setdefault("num_classes", 19) != 19:
        raise StdcError("Cityscapes has 19 training classes; --num-classes is for the generic layout")
    if "init" in given and ("arch" not in given or "variant" not in given):
        init_arch, init_variant = init_network(given["init"])
        given.setdefault("arch", init_arch)
        if init_variant is not None:
            given.setdefault("variant", init_variant)
    if "size" not in given:
        if layout == "cityscapes":
            given["size"] = CITYSCAPES_SIZE
        else:
            from ..evaluate import generic_dataset

            samples = generic_dataset(Path(given["images"]), Path(given["masks"]), given["num_classes"],
                                      given.get("ignore_index", 255)).samples
            given["size"] = _fit_size(common_size(samples))
    given.setdefault("iters", DEFAULT_ITERS[layout])
    if layout == "cityscapes":
        given.setdefault("scale_range", CITYSCAPES_SCALES)
    return TrainConfig(**given)
