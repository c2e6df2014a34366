"""``stdc infer --executor ray``: the local job (:func:`stdc_deploy.jobs.run_infer`) on a Ray cluster.

The driver plans every output with the local rules (:func:`~stdc_deploy.jobs.plan_outputs`:
the same names, the same refusal to replace files), then

* images stream through Ray Data: read + pre-process tasks, an actor pool that opens the
  model once per actor and infers, then post-process + write tasks
  (:mod:`~stdc_deploy.scaleout.stages`). Only the paths are put in the object store up
  front; Ray Data's back-pressure bounds what is in flight, however many images there are;
* videos go one per task, at most ``workers`` at a time, each through the local video
  pipeline (frames in order, one output per kind).

Every worker reads the inputs and the model and writes the outputs under the same
absolute paths as the driver: on a cluster these live on a shared file system. Files are
written under temporary names and renamed when complete; a worker that dies is restarted
and its rows or video redone by Ray, and the scratch files it left are removed at the end,
so no half-written file is ever left under an output's name. Unreadable images are named
and skipped, as locally.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.artifacts import read_metadata
from ..errors import InvalidValue, StdcError
from ..jobs import SAVE_KINDS, ImagePlan, InferOptions, InferReport, ProgressSink, VideoPlan, mark_interrupted, \
    plan_outputs
from ..optional import require
from ..sources import Source
from .stages import InferLogits, ModelSpec, VideoResult, open_and_describe, post_and_write, read_and_prepare, \
    segment_video, worker_note

log = logging.getLogger(__name__)

IMAGES_PER_BLOCK = 32  # rows per input block: small blocks keep every stage busy and the memory per task low
STAGES = ("read", "pre", "infer", "post", "write")
STAGE_CPUS = 0.5  # each read + pre-process and post-process + write task
CANCEL_WAIT_S = 60.0  # after Ctrl-C, how long cancelled videos may take to finish their files


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    ``address``: a running cluster (``auto``, ``HOST:6379``, ``ray://HOST:10001``); None
    joins the cluster this process already belongs to (``RAY_ADDRESS``) or starts a local
    one. ``workers``: inference actors for images, and videos in parallel. Each worker
    holds ``gpus_per_worker`` GPUs (fractions share one) and ``cpus_per_worker`` CPUs,
    which also sets the runtime's CPU threads unless the model spec names ``threads``.
    """

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def __post_init__(self):
        if self.workers < 1:
            raise InvalidValue("workers", f"must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise InvalidValue("gpus_per_worker", f"must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker <= 0:
            raise InvalidValue("cpus_per_worker", f"must be > 0, got {self.cpus_per_worker}")

    def worker_spec(self, spec: ModelSpec) -> ModelSpec:
        return spec if spec.threads is not None else replace(spec, threads=max(1, int(self.cpus_per_worker)))

    def resources(self) -> dict[str, float]:
        return {"num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker or None}

    def stage_cpus(self) -> float:
        """CPUs of each read or write task: light work, and a request unlike the workers' own,
        since Ray Data would otherwise fuse reading into the inference actors (one process
        decoding while the model waits)."""
        return STAGE_CPUS if self.cpus_per_worker != STAGE_CPUS or self.gpus_per_worker else STAGE_CPUS / 2


def run_infer_ray(spec: ModelSpec, source: Source, options: InferOptions, ray_options: RayOptions | None = None,
                  progress: ProgressSink | None = None) -> InferReport:
    """Segment everything in ``source`` on Ray; the outputs and the report are those of
    :func:`~stdc_deploy.jobs.run_infer`. Ctrl-C ends early with ``report.interrupted``."""
    ray_options = ray_options or RayOptions()
    progress = progress or ProgressSink()
    if source.stream is not None:
        raise StdcError(f"{source.description}: a camera or stream is read on this machine only; "
                        "segment it with the local runner")
    images, videos = plan_outputs(source, options)
    size = spec.input_size()  # a bad model or size fails here, before any worker starts
    ray = require("ray", "running on Ray")
    started = _connect(ray, ray_options.address)
    report = InferReport()
    start = time.perf_counter()
    try:
        probe = ray.remote(open_and_describe).options(**ray_options.resources())  # one worker, before all of them
        report.notes.append(worker_note(ray.get(probe.remote(ray_options.worker_spec(spec)))))
        if images:
            _run_images(ray, spec, images, options, ray_options, size, report, progress, started)
        if videos and not report.interrupted:
            _run_videos(ray, spec, videos, options, ray_options, report, progress,
                        single=len(images) + len(videos) == 1)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        mark_interrupted(report, exc)
    except Exception as exc:
        cause = user_error(exc)
        if cause is None or cause is exc:
            raise
        raise cause from exc  # the worker's one-line error; Ray's report stays its cause
    finally:
        report.seconds = time.perf_counter() - start
        progress.finish()
        if started:
            ray.shutdown()
        remove_scratch(images, videos)
    return report


def _connect(ray, address: str | None) -> bool:
    """Join or start a cluster; True if this call started (and so should stop) it."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise StdcError(f"cannot join the Ray cluster at {address or 'RAY_ADDRESS or a new local one'}: {exc}") \
            from exc
    return True


def user_error(exc: BaseException) -> StdcError | None:
    """The :class:`StdcError` a worker raised, out of the exceptions Ray wraps it in."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)  # RayTaskError keeps the worker's exception here
        if isinstance(inner, BaseException):
            exc = inner
            continue
        if isinstance(exc, StdcError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _check_room(ray, ray_options: RayOptions, started: bool) -> None:
    """The inference actors hold their CPUs for the whole run; reading and writing need one more.

    Without it the image stages wait forever. A cluster started here cannot grow, so that is
    an error; a joined cluster may add nodes (an autoscaler), so it is a warning.
    """
    cpus = ray.cluster_resources().get("CPU", 0.0)
    held = ray_options.workers * ray_options.cpus_per_worker
    if cpus >= held + ray_options.stage_cpus():
        return
    message = (f"the Ray cluster has {cpus:g} CPUs and {ray_options.workers} workers hold "
               f"{ray_options.cpus_per_worker:g} each, which leaves none to read and write the images; "
               "use fewer workers or a smaller cpus_per_worker")
    if started:
        raise InvalidValue("workers", message)
    log.warning("%s (unless the cluster adds nodes)", message)


def _run_images(ray, spec: ModelSpec, plans: list[ImagePlan], options: InferOptions, ray_options: RayOptions,
                size: tuple[int, int], report: InferReport, progress: ProgressSink, started: bool) -> None:
    by_key = {str(path.absolute()): (path, outputs) for path, outputs in plans}
    rows = [{"path": key, **{kind: str(outputs[kind].absolute()) if kind in outputs else "" for kind in SAVE_KINDS}}
            for key, (_, outputs) in by_key.items()]
    _check_room(ray, ray_options, started)
    metadata = read_metadata(spec.model)
    protocol = options.protocol_for("image")
    ds = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // IMAGES_PER_BLOCK))
    ds = ds.map_batches(read_and_prepare, batch_size=options.batch, num_cpus=ray_options.stage_cpus(), fn_kwargs=dict(
        mean=metadata.mean, std=metadata.std, size=size, protocol=protocol,
        keep_images=any(row["overlay"] for row in rows)))
    # Ray Data restarts an actor that dies and redoes its batches (max_restarts=-1 by default)
    ds = ds.map_batches(InferLogits, batch_size=options.batch,
                        fn_constructor_kwargs=dict(spec=ray_options.worker_spec(spec), size=size),
                        compute=ray.data.ActorPoolStrategy(size=ray_options.workers), **ray_options.resources())
    ds = ds.map_batches(post_and_write, batch_size=options.batch, num_cpus=ray_options.stage_cpus(), fn_kwargs=dict(
        protocol=protocol, num_classes=metadata.num_classes, alpha=options.alpha, input_size=size))
    progress.start(f"{len(rows)} images", len(rows))
    for batch in _quietly(ray, ds.iter_batches(batch_size=None, batch_format="numpy")):
        for i, key in enumerate(batch["path"]):
            path, outputs = by_key[key]
            for stage in STAGES:
                report.times.add(stage, float(batch[f"{stage}_s"][i]))
            note = worker_note(batch["worker"][i])
            if note not in report.notes:  # one line per kind of worker (machines may choose differently)
                report.notes.append(note)
            error = batch["error"][i]
            if error:
                report.failed.append((str(path), error))
                progress.error(str(path), error)
            else:
                report.frames += 1
                report.times.frames += 1
                report.written += list(outputs.values())
            progress.advance()


def _quietly(ray, batches):
    """The caller's progress sink reports instead of Ray Data's progress bars and INFO lines
    (execution plan, start, finish); Ray Data's warnings and errors still show."""
    context = ray.data.DataContext.get_current()
    data_log = logging.getLogger("ray.data")
    bars, level = context.enable_progress_bars, data_log.level
    context.enable_progress_bars = False
    data_log.setLevel(max(level, logging.WARNING))
    try:
        yield from batches
    finally:
        context.enable_progress_bars = bars
        data_log.setLevel(level)


def _absolute(plan: VideoPlan) -> VideoPlan:
    """The plan as workers see it: absolute paths (their working folder is not ours); same name."""
    def absolute(path):
        return None if path is None else Path(path).absolute()
    return replace(plan, source=absolute(plan.source), overlay=absolute(plan.overlay), color=absolute(plan.color),
                   masks=absolute(plan.masks))


def _as_planned(paths: list[Path], plan: VideoPlan, sent: VideoPlan) -> list[Path]:
    """Written paths under the names the plan gave them (relative where the user's were)."""
    names = {sent.overlay: plan.overlay, sent.color: plan.color}
    return [names.get(p) or (plan.masks / p.name if sent.masks is not None and p.parent == sent.masks else p)
            for p in paths]


def _run_videos(ray, spec: ModelSpec, plans: list[VideoPlan], options: InferOptions, ray_options: RayOptions,
                report: InferReport, progress: ProgressSink, single: bool) -> None:
    task = ray.remote(segment_video).options(max_retries=3, **ray_options.resources())
    worker_spec = ray_options.worker_spec(spec)
    waiting = list(plans)
    running = {}  # ObjectRef -> (plan, the plan as sent)
    progress.start(f"{len(plans)} videos", len(plans))

    def finish(ref) -> None:
        plan, sent = running.pop(ref)
        result: VideoResult = ray.get(ref)
        if result.error is not None:
            message, path = result.error
            if single:
                raise StdcError(message, path)
            report.failed.append((plan.name, message))
            progress.error(plan.name, message)
        else:
            for name, reason in result.report.failed:
                progress.error(name, reason)
            result.report.written = _as_planned(result.report.written, plan, sent)
            report.merge(result.report)
        progress.advance()

    try:
        while waiting or running:
            while waiting and len(running) < ray_options.workers:
                plan = waiting.pop(0)
                sent = _absolute(plan)
                running[task.remote(worker_spec, sent, options)] = (plan, sent)
            done, _ = ray.wait(list(running), num_returns=1)
            finish(done[0])
    except KeyboardInterrupt:
        for ref in running:  # each video keeps its frames done, as a local run does
            ray.cancel(ref)
        done, _ = ray.wait(list(running), num_returns=len(running), timeout=CANCEL_WAIT_S)
        for ref in done:
            try:
                finish(ref)
            except (ray.exceptions.TaskCancelledError, ray.exceptions.RayTaskError):
                running.pop(ref, None)
        raise


def remove_scratch(images: list[ImagePlan], videos: list[VideoPlan]) -> None:
    """Remove the temporary files of writes that never finished (a worker killed mid-write).

    Atomic writes keep them in hidden ``.NAME.XXXXXXXX.partial`` folders beside the output,
    so this looks only at those names in the output folders (all of them in a masks folder).
    """
    names: dict[Path, set[str] | None] = {}
    files = [p for _, outputs in images for p in outputs.values()] + \
        [p for v in videos for p in (v.overlay, v.color) if p is not None]
    for path in files:
        group = names.setdefault(path.parent, set())
        if group is not None:
            group.add(path.name)
    for video in videos:
        if video.masks is not None:
            names[video.masks] = None  # the folder is this job's
    for folder, ours in names.items():
        try:
            entries = [e for e in folder.iterdir() if e.name.startswith(".") and e.name.endswith(".partial")]
        except OSError:
            continue
        for entry in entries:
            name = entry.name[1:-len(".partial")].rsplit(".", 1)[0]
            if entry.is_dir() and (ours is None or name in ours):
                log.info("removing %s, left by a write that did not finish", entry)
                shutil.rmtree(entry, ignore_errors=True)
