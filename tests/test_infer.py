"""Segmenter, the inference pipeline and `stdc infer` on real files."""

import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stdc_deploy.backends import available_backends
from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.errors import StdcError
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.jobs import InferOptions, run_infer
from stdc_deploy.pipeline import StageTimes
from stdc_deploy.segmenter import Frame, Segmenter
from stdc_deploy.sources import VideoReader, resolve_source
from stdc_deploy.synthetic import synthetic_images

SIZE = (64, 128)  # network input: small keeps the suite fast


@pytest.fixture(scope="module")
def onnx_model(dynamic_onnx) -> Path:
    return dynamic_onnx


@pytest.fixture
def runner():
    return CliRunner()


def write_video(path: Path, frames: int = 40, size=(640, 360), fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for image in synthetic_images(frames, size[1], size[0], seed=11):
        writer.write(image)
    writer.release()
    return path


def video_props(path: Path) -> tuple[int, float, int, int]:
    with VideoReader(path) as reader:
        count = sum(1 for _ in reader)
        return count, reader.info.fps, reader.info.width, reader.info.height


# -- Segmenter ------------------------------------------------------------------------------------


def test_predict_gives_labels_at_the_frame_size(onnx_model):
    image = synthetic_images(1, 90, 150, seed=1)[0]
    with Segmenter(onnx_model) as seg:
        assert seg.input_size == SIZE and seg.num_classes == 19
        labels = seg.predict(image)
        batch = seg.predict_batch([image, image[:50, :70].copy()])
    assert labels.shape == (90, 150) and labels.dtype == np.uint8 and labels.max() < 19
    assert np.array_equal(batch[0], labels) and batch[1].shape == (50, 70)
    assert len(np.unique(labels)) > 1  # calibrated random weights give a real label map


def test_predict_rejects_non_images(onnx_model):
    with Segmenter(onnx_model) as seg, pytest.raises(StdcError, match="expected a BGR uint8 HxWx3 image"):
        seg.predict(np.zeros((8, 8), np.float32))


def test_labels_match_pytorch_on_every_backend(onnx_model, official_checkpoints):
    """The contract at the label level: every installed FP32 backend agrees with PyTorch."""
    images = synthetic_images(3, 90, 150, seed=5)
    with Segmenter(official_checkpoints["stdc1"], backend="torch", device="cpu", size=SIZE) as ref:
        reference = ref.predict_batch(images)
    for backend in available_backends("onnx"):
        with Segmenter(onnx_model, backend=backend, device="cpu") as seg:
            labels = seg.predict_batch(images)
        agreement = np.mean([np.mean(a == b) for a, b in zip(labels, reference)])
        assert agreement >= 0.999, (backend, agreement)


def test_stream_keeps_order_and_reports_failures_in_place(onnx_model):
    images = synthetic_images(7, 48, 80, seed=2)
    frames = [Frame(i, im, f"f{i}") for i, im in enumerate(images)]
    frames[3] = Frame(3, None, "f3", error="corrupt")
    failed = []
    with Segmenter(onnx_model) as seg:
        expected = [seg.predict(im) if i != 3 else None for i, im in enumerate(images)]
        times = StageTimes()
        results = list(seg.stream(frames, batch=3, on_error=failed.append, times=times))
    assert [r.frame.index for r in results] == list(range(7))
    assert [f.name for f in failed] == ["f3"] and not results[3].ok
    for i, result in enumerate(results):
        if i != 3:
            assert np.array_equal(result.labels, expected[i])
    assert times.frames == 6 and times.seconds["infer"] > 0


def test_stream_stops_its_threads_when_the_consumer_leaves(onnx_model):
    images = synthetic_images(2, 48, 80, seed=3) * 10
    before = threading.active_count()
    with Segmenter(onnx_model) as seg:
        for i, _ in enumerate(seg.stream(images)):
            if i == 2:
                break
    assert threading.active_count() == before


def test_stream_raises_errors_of_the_source(onnx_model):
    def frames():
        yield synthetic_images(1, 48, 80)[0]
        raise RuntimeError("decoder exploded")

    with Segmenter(onnx_model) as seg, pytest.raises(RuntimeError, match="decoder exploded"):
        list(seg.stream(frames()))


def test_fixed_batch_model_is_padded(official_checkpoints, tmp_path):
    model, info = load_model(official_checkpoints["stdc1"])
    path = export_onnx(model, tmp_path / "b2.onnx", OnnxExportOptions(height=64, width=128, batch=2),
                       checkpoint=info).path
    images = synthetic_images(3, 64, 128, seed=4)
    with Segmenter(path) as seg:
        labels = seg.predict_batch(images)  # 3 frames through a batch-2 model
        single = [seg.predict(im) for im in images]
    assert all(np.array_equal(a, b) for a, b in zip(labels, single))


def test_video_iteration(onnx_model, tmp_path):
    video = write_video(tmp_path / "v.mp4", frames=6, size=(96, 64))
    with Segmenter(onnx_model) as seg:
        pairs = list(seg.video(video, batch=4))
    assert len(pairs) == 6
    assert all(frame.shape == (64, 96, 3) and labels.shape == (64, 96) for frame, labels in pairs)


# -- stdc infer -------------------------------------------------------------------------------------


def test_video_in_video_out(runner, onnx_model, tmp_path):
    """40 frames of 640x360 at 25 fps in -> the same out, overlay by default."""
    video = write_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", str(video), "--model", str(onnx_model), "--out-dir", str(out),
                                 "--no-progress", "--batch", "4"])
    assert result.exit_code == 0, result.output
    produced = out / "clip_overlay.mp4"
    assert video_props(produced) == (40, 25.0, 640, 360)
    assert "40 frames in" in result.stdout and "infer" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["clip_overlay.mp4"]  # no partial files


def test_video_masks_colour_and_exact_output(runner, onnx_model, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=5, size=(96, 64))
    target = tmp_path / "result" / "seg.mp4"
    result = runner.invoke(app, ["infer", str(video), "-m", str(onnx_model), "-o", str(target), "--out-dir",
                                 str(tmp_path / "result"), "--save", "overlay,color,mask", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert video_props(target)[0] == 5 and video_props(tmp_path / "result" / "clip_color.avi")[0] == 5
    masks = sorted((tmp_path / "result" / "clip_masks").iterdir())
    assert [m.name for m in masks] == [f"{i:06d}.png" for i in range(5)]
    mask = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (64, 96) and mask.dtype == np.uint8 and mask.max() < 19


def test_folder_with_a_corrupt_image(runner, onnx_model, tmp_path):
    src = tmp_path / "images"
    (src / "sub").mkdir(parents=True)
    images = synthetic_images(3, 50, 90, seed=8)
    cv2.imwrite(str(src / "a.png"), images[0])
    cv2.imwrite(str(src / "sub" / "b.jpg"), images[1])
    cv2.imwrite(str(src / "c.png"), images[2])
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    result = runner.invoke(app, ["infer", str(src), "-m", str(onnx_model), "-d", str(out), "--recursive",
                                 "--save", "mask,color,overlay", "--no-progress", "--batch", "2", "--precision", "fp32"])
    assert result.exit_code == 1
    assert f"{src / 'broken.png'}: not a readable image" in result.stderr
    produced = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert produced == ["a_color.png", "a_mask.png", "a_overlay.png", "c_color.png", "c_mask.png",
                        "c_overlay.png", "sub/b_color.png", "sub/b_mask.png", "sub/b_overlay.jpg"]
    mask = cv2.imread(str(out / "a_mask.png"), cv2.IMREAD_UNCHANGED)
    with Segmenter(onnx_model) as seg:
        assert np.array_equal(mask, seg.predict(images[0]))


def test_existing_outputs_are_not_replaced(runner, onnx_model, tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), synthetic_images(1, 40, 60)[0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_mask.png").write_bytes(b"keep me")
    args = ["infer", str(image), "-m", str(onnx_model), "-d", str(out), "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "--overwrite" in result.stderr
    assert (out / "x_mask.png").read_bytes() == b"keep me" and not (out / "x_overlay.png").exists()
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert cv2.imread(str(out / "x_mask.png")) is not None


@pytest.mark.parametrize("source, message", [
    ("missing.png", "missing.png: no such file or folder"),
    ("notes.xyz", "unsupported file type '.xyz'"),
    ("fake.mp4", "cannot open this video"),
])
def test_bad_sources_give_one_line_errors(runner, onnx_model, tmp_path, source, message):
    if source != "missing.png":
        (tmp_path / source).write_bytes(b"garbage")
    result = runner.invoke(app, ["infer", str(tmp_path / source), "-m", str(onnx_model), "-d",
                                 str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.output
    assert not any((tmp_path / "out").rglob("*.mp4")) if (tmp_path / "out").exists() else True


def test_list_file_and_glob(runner, onnx_model, tmp_path):
    for name in ("p.png", "q.png"):
        cv2.imwrite(str(tmp_path / name), synthetic_images(1, 40, 60)[0])
    (tmp_path / "list.txt").write_text("# frames\np.png\n\nq.png\n")
    out = tmp_path / "o1"
    assert runner.invoke(app, ["infer", str(tmp_path / "list.txt"), "-m", str(onnx_model), "-d", str(out),
                               "--save", "mask", "--no-progress"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["p_mask.png", "q_mask.png"]
    out = tmp_path / "o2"
    assert runner.invoke(app, ["infer", str(tmp_path / "*.png"), "-m", str(onnx_model), "-d", str(out),
                               "--save", "color", "--no-progress"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["p_color.png", "q_color.png"]


def test_default_model_comes_from_models_folder(runner, onnx_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cv2.imwrite("x.png", synthetic_images(1, 40, 60)[0])
    result = runner.invoke(app, ["infer", "x.png", "--no-progress"])
    assert result.exit_code == 1 and "stdc export onnx" in result.stderr and "stdc demo" in result.stderr
    Path("models").mkdir()
    Path("models/trained.pth").write_bytes(b"")
    result = runner.invoke(app, ["infer", "x.png", "--no-progress"])
    assert result.exit_code == 1 and "stdc export onnx models/trained.pth" in result.stderr
    os.link(onnx_model, "models/stdc1-dynamic.onnx")
    result = runner.invoke(app, ["infer", "x.png", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "model: models/stdc1-dynamic.onnx (newest FP32 ONNX in models/" in result.stdout
    assert Path("outputs/x_mask.png").is_file()


def test_interrupted_video_keeps_the_frames_done(onnx_model, tmp_path, monkeypatch):
    video = write_video(tmp_path / "long.mp4", frames=30, size=(96, 64))
    calls = {"n": 0}
    original = Segmenter.overlay

    def overlay_then_interrupt(self, image, labels, alpha=0.5):
        calls["n"] += 1
        if calls["n"] > 7:
            raise KeyboardInterrupt
        return original(self, image, labels, alpha)

    monkeypatch.setattr(Segmenter, "overlay", overlay_then_interrupt)
    with Segmenter(onnx_model) as seg:
        report = run_infer(seg, resolve_source(str(video)), InferOptions(out_dir=tmp_path / "out"))
    assert report.interrupted and report.frames == 7
    assert video_props(tmp_path / "out" / "long_overlay.mp4")[0] == 7
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["long_overlay.mp4"]


def test_max_frames_and_benchmark_report(runner, onnx_model, tmp_path):
    video = write_video(tmp_path / "v.mp4", frames=12, size=(96, 64))
    result = runner.invoke(app, ["infer", str(video), "-m", str(onnx_model), "-d", str(tmp_path / "o"),
                                 "--max-frames", "5", "--benchmark", "--no-progress", "--protocol", "fast"])
    assert result.exit_code == 0, result.output
    assert video_props(tmp_path / "o" / "v_overlay.mp4")[0] == 5
    assert "model only" in result.stdout and "end to end" in result.stdout


def test_checkpoint_runs_in_pytorch(runner, official_checkpoints, tmp_path):
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), synthetic_images(1, 40, 60)[0])
    result = runner.invoke(app, ["infer", str(image), "-m", str(official_checkpoints["stdc1"]), "-d",
                                 str(tmp_path / "o"), "--size", "64x128", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "torch (cpu, fp32)" in result.stdout
    with Segmenter(official_checkpoints["stdc1"], size=(64, 128)) as seg:
        expected = seg.predict(cv2.imread(str(image)))
    assert np.array_equal(cv2.imread(str(tmp_path / "o" / "x_mask.png"), cv2.IMREAD_UNCHANGED), expected)


torch.set_num_threads(2)


def test_stream_url_source(runner, onnx_model, tmp_path):
    """A URL goes through the live-stream path (FFmpeg reads file:// like rtsp://)."""
    video = write_video(tmp_path / "cam.mp4", frames=8, size=(96, 64))
    out = tmp_path / "o"
    result = runner.invoke(app, ["infer", f"file://{video}", "-m", str(onnx_model), "-d", str(out),
                                 "--max-frames", "6", "--no-progress"])
    assert result.exit_code == 0, result.output
    (produced,) = out.iterdir()
    assert produced.name.endswith("cam_mp4_overlay.mp4") and video_props(produced)[0] == 6
