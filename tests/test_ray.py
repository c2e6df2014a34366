"""`stdc infer --executor ray` and the Ray Data entry point, on a local 2-CPU Ray instance.

The same folder through Ray and through the local runner gives byte-identical files; a
corrupt image is named and skipped; videos go one per task with every frame.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from stdc_deploy.cli import app
from stdc_deploy.core.fileio import OutputExistsError
from stdc_deploy.errors import InvalidValue, StdcError
from stdc_deploy.jobs import InferOptions, parse_save, plan_outputs, run_infer
from stdc_deploy.scaleout import BatchSegmenter, ModelSpec
from stdc_deploy.segmenter import Segmenter
from stdc_deploy.sources import VideoReader, resolve_source
from stdc_deploy.synthetic import synthetic_images

ray = pytest.importorskip("ray", reason="the ray executor needs ray: pip install 'stdc-deploy[ray]'")

from stdc_deploy.scaleout.ray import RayOptions, remove_scratch, run_infer_ray, user_error  # noqa: E402

SIZE = (64, 128)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session (starting one takes seconds)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def onnx_model(dynamic_onnx) -> Path:
    return dynamic_onnx


@pytest.fixture
def folder(tmp_path) -> Path:
    """Five images of three sizes, PNG and JPEG."""
    src = tmp_path / "images"
    src.mkdir()
    for i, image in enumerate(synthetic_images(3, *SIZE, seed=3)):
        cv2.imwrite(str(src / f"a{i}.png"), image)
    cv2.imwrite(str(src / "b.jpg"), synthetic_images(1, 50, 90, seed=4)[0])
    cv2.imwrite(str(src / "c.png"), synthetic_images(1, 90, 150, seed=5)[0])
    return src


def write_video(path: Path, frames: int, size=(96, 64)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, size)
    for image in synthetic_images(frames, size[1], size[0], seed=frames):
        writer.write(image)
    writer.release()
    return path


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def frame_count(path: Path) -> int:
    with VideoReader(path) as reader:
        return sum(1 for _ in reader)


def run_local(model: Path, source: str, options: InferOptions):
    with Segmenter(model) as segmenter:
        return run_infer(segmenter, resolve_source(source), options)


# -- the job on Ray -------------------------------------------------------------------------------


def test_ray_gives_the_local_files_byte_for_byte(ray_cluster, onnx_model, folder, tmp_path):
    save = parse_save("mask,color,overlay")
    local = run_local(onnx_model, str(folder), InferOptions(out_dir=tmp_path / "local", save=save, batch=2))
    report = run_infer_ray(ModelSpec(onnx_model), resolve_source(str(folder)),
                           InferOptions(out_dir=tmp_path / "ray", save=save, batch=2), RayOptions())
    expected, produced = files(tmp_path / "local"), files(tmp_path / "ray")
    assert len(expected) == 15 and "b_overlay.jpg" in expected
    assert produced.keys() == expected.keys()
    assert [name for name in expected if produced[name] != expected[name]] == []
    assert report.frames == local.frames == 5 and not report.failed
    assert sorted(report.written) == sorted(tmp_path / "ray" / name for name in expected)
    assert set(report.times.seconds) == {"read", "pre", "infer", "post", "write"} and report.fps > 0
    assert report.notes == [f"workers ran onnxruntime (cpu, fp32, 1 threads) on {onnx_model.name}, input 64x128"]


def test_corrupt_image_is_named_and_skipped(ray_cluster, onnx_model, folder, tmp_path):
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    report = run_infer_ray(ModelSpec(onnx_model), resolve_source(str(folder)),
                           InferOptions(out_dir=out, save=("mask",)), RayOptions())
    assert report.failed == [(str(broken), "not a readable image (corrupt or unsupported encoding)")]
    assert sorted(files(out)) == ["a0_mask.png", "a1_mask.png", "a2_mask.png", "b_mask.png", "c_mask.png"]
    assert report.frames == 5


def test_two_videos_at_once_keep_every_frame(ray_cluster, onnx_model, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "short.mp4", 5)
    write_video(src / "long.mp4", 8)
    out = tmp_path / "out"
    report = run_infer_ray(ModelSpec(onnx_model), resolve_source(str(src)),
                           InferOptions(out_dir=out, save=("overlay", "mask")), RayOptions(workers=2))
    assert not report.failed and report.videos == 2 and report.frames == 13
    assert len(report.notes) == 1 and report.notes[0].startswith("workers ran onnxruntime (cpu, fp32, 1 threads)")
    assert frame_count(out / "short_overlay.mp4") == 5 and frame_count(out / "long_overlay.mp4") == 8
    assert sorted(p.name for p in (out / "long_masks").iterdir()) == [f"{i:06d}.png" for i in range(8)]
    assert out / "short_overlay.mp4" in report.written and out / "long_masks" / "000007.png" in report.written
    with Segmenter(onnx_model) as segmenter:  # the masks are the local fast-protocol labels of the decoded frames
        with VideoReader(src / "long.mp4") as reader:
            first = next(iter(reader))
        expected = segmenter.predict(first, protocol="fast")
    assert np.array_equal(cv2.imread(str(out / "long_masks" / "000000.png"), cv2.IMREAD_UNCHANGED), expected)


def test_a_video_that_cannot_be_opened_is_one_failure_among_several(ray_cluster, onnx_model, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "good.mp4", 4)
    (src / "bad.mp4").write_bytes(b"not a video")
    report = run_infer_ray(ModelSpec(onnx_model), resolve_source(str(src)),
                           InferOptions(out_dir=tmp_path / "out"), RayOptions(workers=2))
    assert [name for name, _ in report.failed] == [str(src / "bad.mp4")] and report.videos == 1
    with pytest.raises(StdcError, match="bad.mp4"):  # alone, it is the run's error, as locally
        run_infer_ray(ModelSpec(onnx_model), resolve_source(str(src / "bad.mp4")),
                      InferOptions(out_dir=tmp_path / "out2"), RayOptions())


def test_planning_refuses_before_any_work(onnx_model, folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a0_mask.png").write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        run_infer_ray(ModelSpec(onnx_model), resolve_source(str(folder)), InferOptions(out_dir=out), RayOptions())
    assert (out / "a0_mask.png").read_bytes() == b"keep"
    with pytest.raises(StdcError, match="camera or stream"):
        run_infer_ray(ModelSpec(onnx_model), resolve_source("0"), InferOptions(out_dir=out), RayOptions())
    with pytest.raises(InvalidValue, match="workers"):
        RayOptions(workers=0)


def test_a_model_the_workers_cannot_open_is_one_error_before_any_work(ray_cluster, onnx_model, folder, tmp_path):
    with pytest.raises(StdcError, match="no installed backend runs ONNX artifacts on cpu at fp16"):
        run_infer_ray(ModelSpec(onnx_model, precision="fp16"), resolve_source(str(folder)),
                      InferOptions(out_dir=tmp_path / "out"), RayOptions())
    assert not (tmp_path / "out").exists()


def test_worker_errors_come_back_as_the_one_line_error(ray_cluster):
    @ray.remote
    def fail():
        raise StdcError("cannot write (No space left on device)", "/shared/out/a_mask.png")

    with pytest.raises(Exception) as caught:
        ray.get(fail.remote())
    error = user_error(caught.value)
    assert isinstance(error, StdcError)
    assert str(error) == "/shared/out/a_mask.png: cannot write (No space left on device)"
    assert user_error(ValueError("not ours")) is None


def test_scratch_of_unfinished_writes_is_removed(folder, tmp_path):
    out = tmp_path / "out"
    images, videos = plan_outputs(resolve_source(str(folder)), InferOptions(out_dir=out, save=("mask",)))
    out.mkdir()
    ours = out / ".a0_mask.png.k3j2x9q1.partial"
    other = out / ".notes.txt.abcdefgh.partial"
    for scratch in (ours, other):
        scratch.mkdir()
        (scratch / "half").write_bytes(b"half")
    remove_scratch(images, videos)
    assert not ours.exists() and other.exists()


# -- the Ray Data entry point ---------------------------------------------------------------------


def test_batch_segmenter_gives_the_segmenter_labels(onnx_model):
    bgr = [synthetic_images(1, *SIZE, seed=6)[0], synthetic_images(1, 50, 90, seed=7)[0]]
    with Segmenter(onnx_model) as segmenter:
        expected = [segmenter.predict(image) for image in bgr]
    rgb = np.empty(2, dtype=object)
    rgb[0], rgb[1] = bgr[0][..., ::-1], bgr[1][..., ::-1]
    out = BatchSegmenter(onnx_model)({"image": rgb, "id": np.array([1, 2])})
    assert list(out["id"]) == [1, 2]
    assert all(np.array_equal(a, b) for a, b in zip(out["labels"], expected))
    with pytest.raises(InvalidValue, match="color_order"):
        BatchSegmenter(onnx_model, color_order="grb")


def test_batch_segmenter_in_map_batches(ray_cluster, onnx_model):
    images = synthetic_images(4, *SIZE, seed=9)
    ds = ray.data.from_items([{"image": image[..., ::-1].copy(), "id": i} for i, image in enumerate(images)])
    ds = ds.map_batches(BatchSegmenter, fn_constructor_kwargs={"model": str(onnx_model)}, batch_size=2,
                        compute=ray.data.ActorPoolStrategy(size=1))
    rows = sorted(ds.take_all(), key=lambda row: row["id"])
    with Segmenter(onnx_model) as segmenter:
        expected = segmenter.predict_batch(images)
    assert [row["labels"].shape for row in rows] == [SIZE] * 4
    assert all(np.array_equal(row["labels"], labels) for row, labels in zip(rows, expected))


# -- the command (needs `--executor` in stdc_deploy/cli/infer.py) -----------------------------------


def test_cli_ray_masks_equal_the_local_run(ray_cluster, onnx_model, folder, tmp_path):
    runner = CliRunner()
    common = [str(folder), "-m", str(onnx_model), "--save", "mask", "--no-progress", "--batch", "2"]
    local = runner.invoke(app, ["infer", *common, "-d", str(tmp_path / "local")])
    result = runner.invoke(app, ["infer", *common, "-d", str(tmp_path / "ray"), "--executor", "ray"])
    assert local.exit_code == 0 and result.exit_code == 0, result.output
    assert "5 frames in" in result.stdout and "frames/s" in result.stdout
    assert files(tmp_path / "ray") == files(tmp_path / "local") and len(files(tmp_path / "local")) == 5


def test_cli_ray_corrupt_image_exits_1(ray_cluster, onnx_model, folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    result = CliRunner().invoke(app, ["infer", str(folder), "-m", str(onnx_model), "-d", str(tmp_path / "out"),
                                      "--save", "mask", "--no-progress", "--executor", "ray"])
    assert result.exit_code == 1
    assert f"{folder / 'broken.png'}: not a readable image" in result.stderr
    assert len(files(tmp_path / "out")) == 5


def test_cli_ray_options_need_the_ray_executor(onnx_model, folder, tmp_path):
    result = CliRunner().invoke(app, ["infer", str(folder), "-m", str(onnx_model), "-d", str(tmp_path / "out"),
                                      "--workers", "2"])
    assert result.exit_code == 1 and "--executor ray" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_ray_without_ray_installed_names_the_extra(onnx_model, folder, tmp_path, monkeypatch):
    import stdc_deploy.optional

    real = stdc_deploy.optional.importlib.import_module

    def no_ray(name, *args):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args)

    monkeypatch.setattr(stdc_deploy.optional.importlib, "import_module", no_ray)
    result = CliRunner().invoke(app, ["infer", str(folder), "-m", str(onnx_model), "-d", str(tmp_path / "out"),
                                      "--executor", "ray", "--no-progress"])
    assert result.exit_code == 1 and "stdc-deploy[ray]" in result.stderr
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_workers_that_leave_no_cpu_for_reading_are_refused_on_a_cluster_started_here():
    from types import SimpleNamespace

    from stdc_deploy.scaleout.ray import _check_room

    two_cpus = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    _check_room(two_cpus, RayOptions(workers=1), started=True)
    with pytest.raises(InvalidValue, match="leaves none to read and write"):
        _check_room(two_cpus, RayOptions(workers=2), started=True)
    _check_room(two_cpus, RayOptions(workers=2), started=False)  # a joined cluster may grow: a warning


# -- a worker that dies ---------------------------------------------------------------------------


def _our_processes(title: str) -> list[int]:
    """Processes started under this test process whose title (Ray names its workers) starts with ``title``."""
    parents, found = {}, []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if (entry / "cmdline").read_bytes().startswith(title.encode()):
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [pid for pid in found if ours(pid)]


def _kill_when(ready, title: str) -> threading.Thread:
    """A thread that SIGKILLs the first worker titled ``title`` once ``ready()`` holds; its
    ``killed`` attribute then names the pid."""
    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = _our_processes(title) if ready() else []
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                thread.killed = pids[0]
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.killed = None
    thread.start()
    return thread


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's worker processes through /proc")
def test_a_killed_video_worker_is_retried_and_leaves_one_whole_video(ray_cluster, onnx_model, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="stdc_deploy.scaleout.ray")
    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "clip.mp4", 24)
    out = tmp_path / "out"
    killer = _kill_when(lambda: len(list((out / "clip_masks").glob("*.png"))) >= 3, "ray::segment_video")
    report = run_infer_ray(ModelSpec(onnx_model), resolve_source(str(src)),
                           InferOptions(out_dir=out, save=("overlay", "mask")), RayOptions())
    killer.join()
    assert killer.killed, "the worker finished before it could be killed"
    assert not report.failed and report.videos == 1 and report.frames == 24
    assert frame_count(out / "clip_overlay.mp4") == 24
    assert "clip_overlay.mp4" in caplog.text and "left by a write that did not finish" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["clip_masks", "clip_overlay.mp4"]  # its scratch is gone


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds Ray's worker processes through /proc")
def test_a_killed_inference_actor_is_replaced_and_every_mask_is_written(ray_cluster, onnx_model, tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    for i, image in enumerate(synthetic_images(40, *SIZE, seed=12)):
        cv2.imwrite(str(src / f"{i:02d}.png"), image)
    local = run_local(onnx_model, str(src), InferOptions(out_dir=tmp_path / "local", save=("mask",)))
    out = tmp_path / "ray"
    killer = _kill_when(lambda: out.is_dir() and len(list(out.glob("*.png"))) >= 2,
                        "ray::MapWorker(MapBatches(InferLogits")
    report = run_infer_ray(ModelSpec(onnx_model), resolve_source(str(src)),
                           InferOptions(out_dir=out, save=("mask",)), RayOptions())
    killer.join()
    assert killer.killed, "the run finished before the actor could be killed"
    assert not report.failed and report.frames == local.frames == 40
    assert files(out) == files(tmp_path / "local")  # every mask, whole, with the local bytes
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
