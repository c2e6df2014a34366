"""The training loop: the official recipe, validation by the same code as ``stdc eval``,
checkpoints users can trust, and exact resumption.

Files beside ``output`` (``model.pth``): ``model.pth`` (last weights), ``model_best.pth``
(best validation mIoU), ``model_state.pt`` (everything needed to resume: weights in this
package's layout, optimiser, loss sums, log, configuration), ``model_log.json`` and
``model_log.csv`` (one record per evaluation). Every file is written atomically.

Resuming is exact: batches depend only on ``(seed, iteration)`` (see
:mod:`stdc_deploy.train.data`) and the state holds everything else, so a run stopped at any
iteration and resumed ends with the weights an uninterrupted run ends with.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..backends.base import Backend
from ..core.fileio import atomic_output, atomic_write_bytes, check_outputs
from ..core.metadata import ArtifactMetadata
from ..errors import InvalidValue, StdcError
from ..evaluate import Dataset, Sample, cityscapes_dataset, evaluate, generic_dataset
from ..models import create_model, get_arch
from .data import Augment, BatchSource, batches, check_samples, iterate, split_samples
from .losses import recipe_losses
from .schedule import default_warmup, learning_rate, make_optimizer, set_learning_rate
from .weights import InitReport, checkpoint_state_dict, init_from, official_init

STATE_FORMAT = "stdc-deploy-train-state"
STATE_VERSION = 1


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the result of a run (device and workers do not)."""

    num_classes: int
    size: tuple[int, int]  # training crop, HxW
    iters: int
    data: str | None = None  # Cityscapes root ...
    images: str | None = None  # ... or the generic layout
    masks: str | None = None
    ignore_index: int = 255
    val_images: str | None = None
    val_masks: str | None = None
    val_split: float = 0.0  # generic layout without val folders: the held-out fraction
    arch: str = "stdc1"
    variant: str = "plain"
    init: str | None = None
    batch: int = 8
    lr: float = 0.01
    warmup: int | None = None  # None: default_warmup(iters)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    head_lr_mult: float = 10.0
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    jitter: float = 0.5
    eval_every: int | None = None  # None: a tenth of the run, at most 2000
    val_scale: float | None = None  # None: whole images (generic), 0.5 (Cityscapes, the paper's Seg50)
    seed: int = 0
    amp: bool = True  # mixed precision on CUDA; the CPU always trains in float32

    def __post_init__(self):
        if (self.data is None) == (self.images is None):
            raise InvalidValue("data", "give a Cityscapes root (data) or an images / masks pair, not both")
        if self.images is not None and self.masks is None:
            raise InvalidValue("masks", "the generic layout needs masks beside images")
        if (self.val_images is None) != (self.val_masks is None):
            raise InvalidValue("val_masks", "give val_images and val_masks together")
        if not 0 <= self.val_split < 1:
            raise InvalidValue("val_split", f"must be within 0..1, got {self.val_split:g}")
        if self.val_split and self.val_images is not None:
            raise InvalidValue("val_split", "choose val_images/val_masks or val_split, not both")
        if self.batch < 2:
            raise InvalidValue("batch", f"must be >= 2 (BatchNorm statistics of one image are degenerate), got {self.batch}")
        if self.iters < 1:
            raise InvalidValue("iters", f"must be >= 1, got {self.iters}")
        if not self.lr > 0:
            raise InvalidValue("lr", f"must be > 0, got {self.lr:g}")
        if min(self.size) < 16:
            raise InvalidValue("size", f"training crops must be at least 16x16, got {self.size[0]}x{self.size[1]}")
        low, high = self.scale_range
        if not 0 < low <= high <= 8:
            raise InvalidValue("scale_range", f"needs 0 < min <= max <= 8, got {low:g},{high:g}")
        if not 0 <= self.jitter < 1:
            raise InvalidValue("jitter", f"must be within 0..1, got {self.jitter:g}")
        if self.eval_every is not None and self.eval_every < 1:
            raise InvalidValue("eval_every", f"must be >= 1, got {self.eval_every}")
        get_arch(self.arch, self.variant)  # refuses unknown names and impossible combinations

    @property
    def warmup_iters(self) -> int:
        return default_warmup(self.iters) if self.warmup is None else self.warmup

    @property
    def eval_interval(self) -> int:
        return self.eval_every or max(1, min(2000, self.iters // 10))

    @property
    def validation_scale(self) -> float:
        return self.val_scale if self.val_scale is not None else (0.5 if self.data is not None else 1.0)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class RunFiles:
    last: Path
    best: Path
    state: Path
    log_json: Path
    log_csv: Path

    @classmethod
    def beside(cls, output: str | Path) -> RunFiles:
        output = Path(output)
        if output.suffix.lower() not in (".pth", ".pt"):
            raise InvalidValue("output", f"a checkpoint name ends in .pth, got {output.name}")
        stem = output.with_suffix("")
        return cls(output, Path(f"{stem}_best{output.suffix}"), Path(f"{stem}_state.pt"),
                   Path(f"{stem}_log.json"), Path(f"{stem}_log.csv"))

    def all(self) -> tuple[Path, ...]:
        return (self.last, self.best, self.state, self.log_json, self.log_csv)


@dataclass
class Run:
    """What a starting run tells its monitor."""

    config: TrainConfig
    files: RunFiles
    device: str
    train_images: int
    val_images: int
    start_iteration: int
    init: InitReport | None
    model_name: str


@dataclass
class TrainResult:
    files: RunFiles
    iterations: int  # completed
    interrupted: bool
    best_miou: float | None
    best_iteration: int | None
    records: list[dict] = field(default_factory=list)


class Monitor:
    """Progress callbacks; the CLI draws them, the library ignores them by default."""

    def on_start(self, run: Run) -> None: ...

    def on_step(self, iteration: int, loss: float, lr: float) -> None: ...

    def on_eval_image(self) -> None: ...

    def on_record(self, record: dict, best: bool) -> None: ...


class _Stopped(Exception):
    pass


# -- data ---------------------------------------------------------------------------------------------

def datasets(config: TrainConfig) -> tuple[Dataset, tuple[Sample, ...], Dataset | None, tuple[Sample, ...]]:
    """(train dataset, train samples, val dataset or None, val samples) for ``config``."""
    if config.data is not None:
        train = cityscapes_dataset(Path(config.data), "train")
        val = cityscapes_dataset(Path(config.data), "val") if (Path(config.data) / "leftImg8bit" / "val").is_dir() else None
        return train, train.samples, val, val.samples if val else ()
    train = generic_dataset(Path(config.images), Path(config.masks), config.num_classes, config.ignore_index)
    if config.val_images is not None:
        val = generic_dataset(Path(config.val_images), Path(config.val_masks), config.num_classes, config.ignore_index)
        return train, train.samples, val, val.samples
    if config.val_split:
        train_samples, val_samples = split_samples(train.samples, config.val_split, config.seed)
        return train, train_samples, train, val_samples
    return train, train.samples, None, ()


# -- validation ------------------------------------------------------------------------------------------

class ModuleBackend(Backend):
    """The network being trained behind the backend contract, so validation runs through
    :func:`stdc_deploy.evaluate.evaluate` exactly as ``stdc eval`` does on a saved checkpoint."""

    name = "torch"
    devices = ("cpu", "cuda")

    def __init__(self, model, device: str, label: str):
        metadata = ArtifactMetadata(arch=model.cfg.name, num_classes=model.num_classes, variant=model.variant,
                                    batch=None, dynamic=True)
        super().__init__(Path(label), metadata, device=device)
        self.model = model

    def _open(self) -> None:
        pass

    @torch.no_grad()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device)
        return self.model(x).float().cpu().numpy()


def validate(model, dataset: Dataset, samples: tuple[Sample, ...], scale: float, device: str,
             on_image: Callable[[], None]) -> dict:
    was_training = model.training
    model.eval()
    try:
        view = replace(dataset, samples=samples)
        with ModuleBackend(model, device, "training") as backend:
            result = evaluate(view, [backend], scale=scale, on_image=lambda _: on_image())[0]
    finally:
        model.train(was_training)
    scores = result.scores
    return {"val_miou": scores.miou, "val_pixel_accuracy": scores.pixel_accuracy,
            "val_iou": [None if v is None else round(v, 6) for v in scores.iou]}


# -- files ------------------------------------------------------------------------------------------------

def _save_torch(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _write_logs(files: RunFiles, records: list[dict]) -> None:
    atomic_write_bytes(files.log_json, (json.dumps(records, indent=1) + "\n").encode())
    columns = ["iteration", "lr", "loss", "main", "aux16", "aux32", "detail_bce", "detail_dice", "val_miou",
               "val_pixel_accuracy", "seconds"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    for r in records:
        writer.writerow(["" if r.get(c) is None else r[c] for c in columns])
    atomic_write_bytes(files.log_csv, text.getvalue().encode())


def read_state(path: str | Path) -> dict:
    """A state file written by :func:`train` (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise StdcError("no training state to resume from (it is written at every evaluation and on Ctrl-C)", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StdcError(f"not a readable training state ({str(exc).splitlines()[0][:120]})", path) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise StdcError("not a training state written by stdc train", path)
    if state.get("version") != STATE_VERSION:
        raise StdcError(f"training state version {state.get('version')} is not supported (this is {STATE_VERSION})",
                        path)
    return state


# -- the loop ---------------------------------------------------------------------------------------------

def _resolve_device(device: str) -> str:
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidValue("device", "cuda requested but PyTorch sees no CUDA GPU")
    elif device != "cpu":
        raise InvalidValue("device", f"cpu, cuda or cuda:N, got {device!r}")
    return device


def train(config: TrainConfig, output: str | Path, *, device: str = "cpu", workers: int = 0, resume: bool = False,
          overwrite: bool = False, monitor: Monitor | None = None,
          should_stop: Callable[[], bool] = lambda: False) -> TrainResult:
    """Train (or, with ``resume``, continue) a run writing the files beside ``output``.

    ``should_stop`` is polled between iterations (and between validation images): when it
    returns True the run saves a resumable state and returns with ``interrupted`` set.
    """
    monitor = monitor or Monitor()
    device = _resolve_device(device)
    files = RunFiles.beside(output)
    state = read_state(files.state) if resume else None
    if state is not None and TrainConfig.from_dict(state["config"]) != config:
        raise StdcError("the configuration differs from the run being resumed", files.state)
    if not resume:
        inputs = [p for p in (config.init,) if p]
        check_outputs(files.all(), inputs, overwrite=overwrite)

    dataset, train_samples, val_dataset, val_samples = datasets(config)
    check_samples(dataset, train_samples)
    if val_dataset is not None:
        check_samples(val_dataset, val_samples)
    if len(train_samples) < 1:
        raise StdcError("no training images")
    if not resume and not val_samples:
        files.best.unlink(missing_ok=True)  # a replaced run's best file would outlive it unchanged

    torch.manual_seed(config.seed)
    model = official_init(create_model(config.arch, config.num_classes, variant=config.variant, aux_heads=True))
    init_report = None
    if config.init and state is None:
        init_report = init_from(model, config.init)
    model.to(device).train()
    optimizer = make_optimizer(model, config.lr, config.momentum, config.weight_decay, config.head_lr_mult)
    use_amp = config.amp and device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    records: list[dict] = []
    best: dict = {"miou": None, "iteration": None}
    sums: dict[str, float] = {}
    start = 0
    elapsed = 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        records, best, sums = list(state["log"]), dict(state["best"]), dict(state["sums"])
        start, elapsed = int(state["iteration"]), float(state["seconds"])

    monitor.on_start(Run(config, files, device, len(train_samples), len(val_samples), start, init_report,
                         model.cfg.name if model.variant == "plain" else f"{model.cfg.name}-{model.variant}"))

    started = time.perf_counter()

    def clock() -> float:
        """Seconds this run has trained, over all its sessions."""
        return elapsed + time.perf_counter() - started

    def save_state(iteration: int) -> None:
        _save_torch({"format": STATE_FORMAT, "version": STATE_VERSION, "iteration": iteration,
                     "config": config.to_dict(), "model": {k: v.cpu() for k, v in model.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if use_amp else {},
                     "best": best, "log": records, "sums": sums, "seconds": clock()}, files.state)

    def evaluation_due(iteration: int) -> bool:
        done = any(r["iteration"] == iteration for r in records)
        return not done and iteration > 0 and (iteration % config.eval_interval == 0 or iteration == config.iters)

    def checkpoint(iteration: int) -> None:
        """Evaluate, log, write the last / best weights and the state."""
        count = sums.get("count", 0)
        record = {"iteration": iteration, "lr": learning_rate(iteration - 1, config.lr, config.iters,
                                                               config.warmup_iters)}
        record.update({k: v / count for k, v in sums.items() if k != "count"} if count else {})
        is_best = False
        if val_samples:
            def on_image() -> None:
                if should_stop():
                    raise _Stopped
                monitor.on_eval_image()
            record.update(validate(model, val_dataset, val_samples, config.validation_scale, device, on_image))
            if best["miou"] is None or record["val_miou"] > best["miou"]:
                best.update(miou=record["val_miou"], iteration=iteration)
                is_best = True
        record["seconds"] = round(clock(), 2)
        weights = checkpoint_state_dict(model)
        _save_torch(weights, files.last)
        if is_best:
            _save_torch(weights, files.best)
        records.append(record)
        sums.clear()
        _write_logs(files, records)
        save_state(iteration)
        monitor.on_record(record, is_best)

    source = BatchSource(dataset, train_samples, config.batch, Augment(config.size, config.scale_range, config.flip,
                                                                       config.jitter), config.seed)
    iteration = start
    interrupted = False
    try:
        if evaluation_due(iteration):  # stopped during that evaluation
            checkpoint(iteration)
        if iteration < config.iters and not should_stop():
            loader = batches(source, iteration, config.iters, workers)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
                for images, labels in iterate(loader):
                    lr = learning_rate(iteration, config.lr, config.iters, config.warmup_iters)
                    set_learning_rate(optimizer, lr)
                    images = images.to(device, non_blocking=True)
                    labels = labels.to(device, non_blocking=True)
                    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                        losses = recipe_losses(model.forward_aux(images), labels)
                    loss = sum(losses.values())
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise StdcError(f"the loss became {value} at iteration {iteration + 1}: lower --lr "
                                        f"(now {config.lr:g}) or check the data")
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach())
                    sums["loss"] = sums.get("loss", 0.0) + value
                    sums["count"] = sums.get("count", 0) + 1
                    iteration += 1
                    monitor.on_step(iteration, value, lr)
                    if evaluation_due(iteration):
                        checkpoint(iteration)
                    if should_stop():
                        break
        if iteration < config.iters:
            interrupted = True
    except _Stopped:
        interrupted = True
    if interrupted:
        _save_torch(checkpoint_state_dict(model), files.last)
        save_state(iteration)
    elif not records or records[-1]["iteration"] != iteration:
        checkpoint(iteration)  # the schedule's end without an evaluation (e.g. resumed after the last)
    return TrainResult(files, iteration, interrupted, best["miou"], best["iteration"], records)
