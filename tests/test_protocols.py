"""One pipeline for infer, eval and verify: the same image gives the same labels everywhere
for the same protocol, and the official protocol is the whole official evaluation pipeline."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.preprocess import normalize
from stdc_deploy.segmenter import Segmenter
from stdc_deploy.synthetic import synthetic_images

from official_pipeline import official_prediction

NET = (64, 128)
IMAGE = (128, 256)


@pytest.fixture(scope="module")
def exported(official_checkpoints, tmp_path_factory):
    model, info = load_model(official_checkpoints["stdc1"])
    root = tmp_path_factory.mktemp("protocols")
    static = export_onnx(model, root / "static.onnx", OnnxExportOptions(height=NET[0], width=NET[1]),
                         checkpoint=info).path
    batch2 = export_onnx(model, root / "batch2.onnx", OnnxExportOptions(height=NET[0], width=NET[1], batch=2),
                         checkpoint=info).path
    return model, static, batch2


def torch_official(model, image_bgr: np.ndarray, size=NET) -> np.ndarray:
    return official_prediction(model, image_bgr, size)


@pytest.mark.parametrize("shape, size", [((1024, 2048), (512, 1024)), ((37, 53), (64, 128)), ((90, 150), (64, 128))])
def test_official_preprocessing_is_the_torch_resize(shape, size):
    image = synthetic_images(1, *shape, seed=4)[0]
    full = torch.from_numpy(normalize(image))
    expected = F.interpolate(full, size=size, mode="bilinear", align_corners=True).numpy()
    got = normalize(image, size=size, protocol="official")
    assert np.abs(got - expected).max() < 1e-5


def test_fast_preprocessing_samples_at_half_pixel_centres():
    image = synthetic_images(1, 128, 256, seed=4)[0]
    fast = normalize(image, size=NET, protocol="fast")
    reference = normalize(cv2.resize(image, (NET[1], NET[0]), interpolation=cv2.INTER_LINEAR))
    assert np.array_equal(fast, reference)
    assert np.abs(fast - normalize(image, size=NET, protocol="official")).max() > 0.1  # they do differ


def test_segmenter_official_matches_an_independent_implementation(exported):
    model, static, _ = exported
    images = synthetic_images(3, *IMAGE, seed=31)
    with Segmenter(static) as seg:
        for image in images:
            agreement = np.mean(seg.predict(image) == torch_official(model, image))
            assert agreement >= 0.999
            fast = np.mean(seg.predict(image, protocol="fast") == torch_official(model, image))
            assert fast < agreement  # the fast protocol is the approximation


def test_protocol_is_per_call_and_not_state(exported):
    _, static, _ = exported
    image = synthetic_images(1, *IMAGE, seed=2)[0]
    with Segmenter(static, protocol="official") as seg:
        fast = seg.predict(image, protocol="fast")
        official = seg.predict(image)
        assert seg.protocol == "official"
        assert np.array_equal(official, seg.predict(image))
        assert np.array_equal(fast, seg.predict(image, protocol="fast"))
        assert not np.array_equal(fast, official)


def write_generic_dataset(root: Path, count: int = 3) -> tuple[Path, Path, list[Path]]:
    images_dir, masks_dir = root / "images", root / "masks"
    images_dir.mkdir(parents=True)
    masks_dir.mkdir()
    paths = []
    for i, image in enumerate(synthetic_images(count, *IMAGE, seed=50)):
        path = images_dir / f"img{i}.png"
        cv2.imwrite(str(path), image)
        cv2.imwrite(str(masks_dir / f"img{i}.png"), np.full(IMAGE, i, np.uint8))
        paths.append(path)
    return images_dir, masks_dir, paths


def test_infer_and_eval_write_identical_labels(exported, tmp_path):
    model, static, _ = exported
    images_dir, masks_dir, paths = write_generic_dataset(tmp_path)
    runner = CliRunner()
    infer = runner.invoke(app, ["infer", str(images_dir), "-m", str(static), "-d", str(tmp_path / "infer"),
                                "--save", "mask", "--no-progress", "--precision", "fp32"])
    assert infer.exit_code == 0, infer.output
    evaluated = runner.invoke(app, ["eval", "-m", str(static), "--images", str(images_dir), "--masks", str(masks_dir),
                                    "--num-classes", "19", "--save-predictions", str(tmp_path / "eval"),
                                    "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output
    for path in paths:
        ours = cv2.imread(str(tmp_path / "infer" / f"{path.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        theirs = cv2.imread(str(tmp_path / "eval" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert ours.shape == IMAGE and np.array_equal(ours, theirs)
        assert np.mean(ours == torch_official(model, cv2.imread(str(path)))) >= 0.999


def test_static_batch_export_runs_everywhere(exported, tmp_path):
    """A static batch-2 export: the backend contract pads, so verify and eval accept it."""
    _, static, batch2 = exported
    images_dir, masks_dir, _ = write_generic_dataset(tmp_path)
    runner = CliRunner()
    verified = runner.invoke(app, ["verify", str(static), str(batch2), "--num-images", "3", "--images",
                                   str(images_dir)])
    assert verified.exit_code == 0, verified.output
    evaluated = runner.invoke(app, ["eval", "-m", str(batch2), "-m", str(static), "--images", str(images_dir),
                                    "--masks", str(masks_dir), "--num-classes", "19", "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "0.00 points" in evaluated.stdout  # identical models score identically
    with Segmenter(batch2) as seg:
        images = synthetic_images(3, *IMAGE, seed=9)
        assert [lab.shape for lab in seg.predict_batch(images)] == [IMAGE] * 3


def test_video_max_frames_stops_decoding(exported, monkeypatch):
    """Segmenter.video(max_frames=N) reads about N frames, not the whole (here endless) source."""
    from stdc_deploy import segmenter as segmenter_module

    _, static, _ = exported
    frame = synthetic_images(1, *IMAGE, seed=3)[0]
    read = []

    class EndlessReader:
        name = "camera"

        def __init__(self, source):
            pass

        def __iter__(self):
            while True:
                read.append(1)
                yield frame

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(segmenter_module, "VideoReader", EndlessReader)
    with Segmenter(static) as seg:
        results = list(seg.video(0, max_frames=5))
    assert len(results) == 5
    assert len(read) <= 6


def test_onnx_path_does_not_import_torch(exported):
    import subprocess
    import sys

    _, static, _ = exported
    code = ("import sys, numpy as np\n"
            "from stdc_deploy import Segmenter\n"
            f"seg = Segmenter({str(static)!r}, protocol='official')\n"
            "labels = seg.predict(np.zeros((40, 60, 3), np.uint8))\n"
            "assert labels.shape == (40, 60)\n"
            "print('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
