"""`stdc train`: the recipe's pieces (losses, schedule, augmentation), the files a run writes,
validation equal to `stdc eval`, exact resumption, fine-tuning and the errors users see."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stdc_deploy.backends import open_backend
from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.errors import CheckpointError, StdcError
from stdc_deploy.evaluate import evaluate, generic_dataset
from stdc_deploy.models import create_model
from stdc_deploy.synthetic import random_model, to_official_state_dict
from stdc_deploy.train import Monitor, TrainConfig, read_state, train
from stdc_deploy.train.data import IGNORE, Augment, BatchSource, augment, check_samples, image_size
from stdc_deploy.train.losses import boundary_targets, dice_loss, ohem_cross_entropy
from stdc_deploy.train.schedule import WARMUP_START_LR, learning_rate, make_optimizer
from stdc_deploy.train.shapes import write_shapes_dataset
from stdc_deploy.train.weights import init_from

SIZE = (64, 64)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, 8, *SIZE, seed=0, split="train")
    write_shapes_dataset(root, 4, *SIZE, seed=1, split="val")
    return root


def tiny_config(root: Path, **overrides) -> TrainConfig:
    values = dict(num_classes=3, size=SIZE, iters=4, batch=2, images=str(root / "images/train"),
                  masks=str(root / "masks/train"), val_images=str(root / "images/val"),
                  val_masks=str(root / "masks/val"), eval_every=2)
    values.update(overrides)
    return TrainConfig(**values)


# -- the recipe's pieces ---------------------------------------------------------------------------------

def test_ohem_keeps_hard_pixels_but_at_least_n_min():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 2, 4, 4)
    logits[0, 0] = 10.0  # every pixel easy: p(true) ~ 1
    logits[0, 0, 0, 0] = -10.0  # one very hard pixel
    per_pixel = torch.nn.functional.cross_entropy(logits, labels, reduction="none").flatten()
    # 1 hard pixel < n_min = 16 / 4 = 4: the 4 largest losses
    assert ohem_cross_entropy(logits, labels, min_fraction=1 / 4) == pytest.approx(per_pixel.topk(4).values.mean())
    logits[0, 0, :2] = -10.0  # 8 hard pixels > n_min: only those
    per_pixel = torch.nn.functional.cross_entropy(logits, labels, reduction="none").flatten()
    assert ohem_cross_entropy(logits, labels, min_fraction=1 / 4) == pytest.approx(per_pixel[per_pixel > 0.357].mean())
    labels[0, :2] = IGNORE  # ignored pixels never count, however wrong
    assert ohem_cross_entropy(logits, labels, min_fraction=1 / 16) < 1e-3


def test_boundary_targets_mark_label_edges_and_ignored_regions():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[0, 8:24, 8:24] = 1
    targets = boundary_targets(labels)[0, 0]
    assert targets.shape == (32, 32) and set(targets.unique().tolist()) == {0.0, 1.0}
    assert targets[16, 16] == 0 and targets[0, 0] == 0  # inside a region, far from edges
    assert targets[8, 16] == 1 and targets[16, 8] == 1  # on the square's edge
    assert targets[:, :4].sum() == 0  # no edge near the left border
    labels[0, :, 28:] = IGNORE  # ignored counts as 255, as in the official code: its edge is a boundary
    assert boundary_targets(labels)[0, 0, 16, 28] == 1


def test_dice_loss_bounds():
    t = torch.zeros(2, 1, 8, 8)
    t[:, :, :4] = 1
    assert dice_loss(t, t, smooth=0) == pytest.approx(0.0)
    assert dice_loss(1 - t, t, smooth=0) == pytest.approx(1.0)


def test_learning_rate_warms_up_then_decays_to_zero():
    lr, iters, warmup = 0.01, 1000, 100
    assert learning_rate(0, lr, iters, warmup) == pytest.approx(WARMUP_START_LR)
    assert learning_rate(50, lr, iters, warmup) == pytest.approx((WARMUP_START_LR * lr) ** 0.5)  # exponential
    assert learning_rate(100, lr, iters, warmup) == pytest.approx(lr)
    assert learning_rate(550, lr, iters, warmup) == pytest.approx(lr * 0.5 ** 0.9)
    assert learning_rate(1000, lr, iters, warmup) == 0.0
    assert learning_rate(0, lr, iters, 0) == lr


def test_optimizer_groups_heads_10x_and_no_decay_on_norms():
    model = create_model("stdc1", 3, aux_heads=True)
    optimizer = make_optimizer(model, 0.01)
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert by_param[id(model.cp.backbone.features[0].conv.weight)]["lr"] == pytest.approx(0.01)
    assert by_param[id(model.cp.backbone.features[0].conv.weight)]["weight_decay"] == 5e-4
    assert by_param[id(model.cp.backbone.features[0].bn.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.conv_out.conv_out.weight)]["lr"] == pytest.approx(0.1)
    assert by_param[id(model.ffm.convblk.conv.weight)]["lr"] == pytest.approx(0.1)
    assert by_param[id(model.cp.arm16.conv.conv.weight)]["lr"] == pytest.approx(0.01)  # context path: 1x
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_augment_crops_pads_with_ignore_and_is_seeded():
    image = np.full((40, 50, 3), 200, np.uint8)
    label = np.ones((40, 50), np.int32)
    aug = Augment((64, 64), scale_range=(1.0, 1.0), flip=False, jitter=0.0)
    x, y = augment(image, label, aug, np.random.default_rng(0))
    assert x.shape == (3, 64, 64) and y.shape == (64, 64) and y.dtype == np.int64
    assert (y == 1).sum() == 40 * 50 and (y == IGNORE).sum() == 64 * 64 - 40 * 50
    assert np.abs(x[:, y == IGNORE]).max() < 0.01  # padding is the mean colour: 0 after normalisation
    big = Augment((32, 32), scale_range=(0.5, 1.5))
    a = augment(image, label, big, np.random.default_rng([1, 2]))
    b = augment(image, label, big, np.random.default_rng([1, 2]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_batches_do_not_depend_on_workers(shapes):
    dataset = generic_dataset(shapes / "images/train", shapes / "masks/train", 3)
    source = BatchSource(dataset, dataset.samples, 3, Augment(SIZE), seed=5)
    from stdc_deploy.train.data import batches

    in_process = [b for b in batches(source, 2, 5, workers=0)]
    in_workers = [b for b in batches(source, 2, 5, workers=2)]
    for (x0, y0), (x1, y1) in zip(in_process, in_workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    # each epoch visits every sample once (8 samples, batch 3: iterations 0-2 cover epoch 0 and a bit of 1)
    seen = [source.sample_index(i, s) for i in range(3) for s in range(3)][:8]
    assert sorted(seen) == list(range(8))


def test_image_size_reads_headers(tmp_path):
    image = np.zeros((37, 53, 3), np.uint8)
    for suffix in (".png", ".jpg", ".bmp"):
        cv2.imwrite(str(tmp_path / f"a{suffix}"), image)
        assert image_size(tmp_path / f"a{suffix}") == (37, 53)


def test_bad_masks_are_named_before_training(shapes, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for name in ("a", "b", "c"):
        cv2.imwrite(str(images / f"{name}.png"), np.zeros((32, 32, 3), np.uint8))
        cv2.imwrite(str(masks / f"{name}.png"), np.zeros((32, 32), np.uint8))
    cv2.imwrite(str(masks / "b.png"), np.full((32, 32), 7, np.uint8))
    cv2.imwrite(str(masks / "c.png"), np.zeros((16, 32), np.uint8))
    dataset = generic_dataset(images, masks, 3)
    with pytest.raises(StdcError, match=r"b\.png: label value 7 out of range.*\(1 more bad masks\)"):
        check_samples(dataset, dataset.samples)
    with pytest.raises(StdcError, match=r"c\.png: mask is 32x16 but its image is 32x32"):
        check_samples(dataset, dataset.samples[2:])


# -- checkpoints and initialisation --------------------------------------------------------------------------

def test_official_layout_flips_negative_head_norms(tmp_path):
    """InPlaceABN cannot hold a negative scale: the channel is flipped, the function is unchanged."""
    model = random_model("stdc1", 3, seed=3)
    with torch.no_grad():
        model.conv_out.conv.bn.weight[:5] *= -1
        model.cp.arm16.bn_atten.weight[:3] *= -1
    sd = to_official_state_dict(model)
    assert not any(k.endswith("num_batches_tracked") and not k.startswith("cp.backbone.") for k in sd)
    torch.save(sd, tmp_path / "m.pth")
    loaded, _ = load_model(tmp_path / "m.pth")
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_init_from_imagenet_backbone(tmp_path):
    donor = create_model("stdc1", 3)
    backbone = {k.removeprefix("cp.backbone."): v for k, v in donor.state_dict().items() if k.startswith("cp.backbone.")}
    backbone.update({"conv_last.conv.weight": torch.zeros(1024, 1024, 1, 1), "fc.weight": torch.zeros(1024, 1024),
                     "linear.weight": torch.zeros(1000, 1024)})
    torch.save({"state_dict": backbone, "epoch": 300}, tmp_path / "STDCNet813M_73.91.tar")
    model = create_model("stdc1", 3, aux_heads=True)
    report = init_from(model, tmp_path / "STDCNet813M_73.91.tar")
    assert "ImageNet stdc1 backbone" in report.source
    for key, value in model.cp.backbone.state_dict().items():
        assert torch.equal(value, backbone[key]), key
    with pytest.raises(CheckpointError, match="ImageNet stdc1 backbone cannot initialise stdc2"):
        init_from(create_model("stdc2", 3, aux_heads=True), tmp_path / "STDCNet813M_73.91.tar")


def test_finetune_from_19_classes_reinitialises_only_classifiers(official_checkpoints):
    model = create_model("stdc1", 3, aux_heads=True)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from(model, official_checkpoints["stdc1"])
    text = " ".join(report.lines)
    assert "classifiers re-initialised for 3 classes (the checkpoint has 19)" in text
    assert "conv_out.conv_out" in text and "conv_out16.conv_out" in text and "conv_out32.conv_out" in text
    source, _ = load_model(official_checkpoints["stdc1"], aux_heads=True)
    ref = source.state_dict()
    for key, value in model.state_dict().items():
        if key.split(".")[0] in ("conv_out", "conv_out16", "conv_out32") and ".conv_out." in key:
            assert torch.equal(value, fresh[key]), key  # classifier: kept fresh
        else:
            assert torch.equal(value, ref[key]), key


# -- runs --------------------------------------------------------------------------------------------------

class Recorder(Monitor):
    def __init__(self):
        self.steps, self.records = [], []

    def on_step(self, iteration, loss, lr):
        self.steps.append((iteration, loss, lr))

    def on_record(self, record, best):
        self.records.append((record, best))


def test_run_writes_checkpoints_and_logs_that_stdc_eval_agrees_with(shapes, tmp_path):
    out = tmp_path / "run" / "m.pth"
    recorder = Recorder()
    result = train(tiny_config(shapes), out, monitor=recorder)
    assert not result.interrupted and result.iterations == 4
    assert [s[0] for s in recorder.steps] == [1, 2, 3, 4]
    files = result.files
    for path in files.all():
        assert path.is_file(), path
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    log = json.loads(files.log_json.read_text())
    assert [r["iteration"] for r in log] == [2, 4]
    assert files.log_csv.read_text().splitlines()[0].startswith("iteration,lr,loss")
    assert result.best_miou == max(r["val_miou"] for r in log)
    # the best checkpoint is in the official layout and scores what training said, by stdc eval's code
    sd = torch.load(files.best, weights_only=True)
    assert "cp.backbone.x8.0.2.conv_list.0.conv.weight" in sd and "conv_out_sp8.conv_out.weight" in sd
    val = generic_dataset(shapes / "images/val", shapes / "masks/val", 3)
    with open_backend(files.best) as backend:
        scores = evaluate(val, [backend], scale=1.0)[0].scores
    assert scores.miou == pytest.approx(result.best_miou, abs=1e-9)
    state = read_state(files.state)
    assert state["iteration"] == 4 and state["config"]["seed"] == 0


def test_resume_gives_the_uninterrupted_result(shapes, tmp_path):
    config = tiny_config(shapes, iters=5, eval_every=3)
    whole = train(config, tmp_path / "a" / "m.pth")
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] > 2

    part = train(config, tmp_path / "b" / "m.pth", should_stop=stop_after_two)
    assert part.interrupted and part.iterations == 2
    resumed = train(config, tmp_path / "b" / "m.pth", resume=True)
    assert resumed.iterations == 5 and not resumed.interrupted
    a, b = read_state(whole.files.state), read_state(resumed.files.state)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [r["val_miou"] for r in a["log"]] == [r["val_miou"] for r in b["log"]]
    assert [r["loss"] for r in a["log"]] == pytest.approx([r["loss"] for r in b["log"]], rel=1e-6)
    with pytest.raises(StdcError, match="configuration differs"):
        train(tiny_config(shapes, iters=6, eval_every=3), tmp_path / "b" / "m.pth", resume=True)


def test_variant_run_writes_the_fork_layout(shapes, tmp_path):
    result = train(tiny_config(shapes, variant="cut", iters=2, eval_every=2), tmp_path / "cut.pth")
    sd = torch.load(result.files.last, weights_only=True)
    assert sd["ffm.convblk.conv.weight"].shape[0] == 128  # cut: 128-channel head
    assert "conv_out.conv.bn.num_batches_tracked" in sd  # plain BatchNorm, as the fork writes
    model, info = load_model(result.files.last)
    assert info.variant == "cut" and info.num_classes == 3


def test_cityscapes_layout_trains_on_train_and_validates_on_val(shapes, tmp_path):
    """labelIds are mapped to the 19 train ids (7 road -> 0, 26 car -> 13, others ignored)."""
    from stdc_deploy.evaluate import TRAIN_TO_LABEL

    root = tmp_path / "cityscapes"
    for split, names in (("train", ["0000", "0001", "0002"]), ("val", ["0000"])):
        for name in names:
            image = cv2.imread(str(shapes / "images" / "train" / f"{name}.png"))
            mask = cv2.imread(str(shapes / "masks" / "train" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
            ids = np.where(mask == 2, 0, TRAIN_TO_LABEL[np.where(mask == 1, 13, 0)]).astype(np.uint8)  # 2: unlabeled
            for folder, suffix, array in (("leftImg8bit", "_leftImg8bit.png", image),
                                          ("gtFine", "_gtFine_labelIds.png", ids)):
                path = root / folder / split / "city" / f"city_{name}_000019{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), array)
    result = run("--data", str(root), "--iters", "2", "--batch", "2", "--size", "64x64", "--workers", "0",
                 "-o", str(tmp_path / "cs.pth"))
    assert result.exit_code == 0, result.output
    assert "19 classes" in result.output and "3 train / 1 val images" in result.output
    record = json.loads((tmp_path / "cs_log.json").read_text())[-1]
    assert len(record["val_iou"]) == 19 and sum(v is not None for v in record["val_iou"]) >= 2
    config = read_state(tmp_path / "cs_state.pt")["config"]
    assert config["scale_range"] == [0.125, 1.5] and config["num_classes"] == 19


# -- the command ---------------------------------------------------------------------------------------------

def run(*args: str):
    return CliRunner().invoke(app, ["train", *args])


def test_cli_trains_and_names_bad_input(shapes, tmp_path):
    common = ["--images", str(shapes / "images/train"), "--masks", str(shapes / "masks/train"), "--num-classes", "3",
              "--val-split", "0.25", "--iters", "2", "--batch", "2", "--workers", "0", "-o", str(tmp_path / "m.pth")]
    result = run(*common)
    assert result.exit_code == 0, result.output
    assert "2 val images" in result.output and "crop 64x64" in result.output
    assert "best val mIoU" in result.output and (tmp_path / "m_best.pth").is_file()
    again = run(*common)  # outputs exist
    assert again.exit_code == 1 and "pass --overwrite" in again.output
    assert "Traceback" not in again.output
    mismatch = run(*common[:-2], "--iters", "3", "-o", str(tmp_path / "m.pth"), "--resume")
    assert mismatch.exit_code == 1 and "--iters 3 differs from the run being resumed (2)" in mismatch.output
    done = run("-o", str(tmp_path / "m.pth"), "--resume")  # finished run: nothing to do, same files
    assert done.exit_code == 0, done.output
    missing = run("--images", str(shapes / "images/train"), "--masks", str(shapes / "masks/train"), "-o",
                  str(tmp_path / "x.pth"))
    assert missing.exit_code == 1 and "--num-classes is needed" in missing.output
    bad = run("--images", str(shapes / "images/train"), "--masks", str(shapes / "masks/train"), "--num-classes", "2",
              "-o", str(tmp_path / "y.pth"))
    assert bad.exit_code == 1 and "label value 2 out of range (classes 0-1" in bad.output
    assert not (tmp_path / "y.pth").exists()


def test_cli_finetunes_a_19_class_checkpoint(shapes, official_checkpoints, tmp_path):
    result = run("--images", str(shapes / "images/train"), "--masks", str(shapes / "masks/train"), "--num-classes", "3",
                 "--init", str(official_checkpoints["stdc1"]), "--iters", "2", "--batch", "2", "--workers", "0",
                 "-o", str(tmp_path / "ft.pth"))
    assert result.exit_code == 0, result.output
    assert "initialised from stdc1 checkpoint stdc1_official.pth (19 classes)" in result.output
    assert "classifiers re-initialised for 3 classes (the checkpoint has 19)" in result.output
    assert "no validation images" in result.output and not (tmp_path / "ft_best.pth").exists()
    model, info = load_model(tmp_path / "ft.pth")
    assert info.num_classes == 3 and info.source_format == "official"
    wrong = run("--images", str(shapes / "images/train"), "--masks", str(shapes / "masks/train"), "--num-classes", "3",
                "--init", str(official_checkpoints["stdc1"]), "--arch", "stdc2", "--iters", "2", "-o",
                str(tmp_path / "w.pth"))
    assert wrong.exit_code == 1 and "checkpoint is stdc1; it cannot initialise stdc2 (--arch)" in wrong.output


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_a_resumable_state(shapes, tmp_path):
    out = tmp_path / "m.pth"
    command = [sys.executable, "-m", "stdc_deploy", "train", "--images", str(shapes / "images/train"), "--masks",
               str(shapes / "masks/train"), "--num-classes", "3", "--iters", "100000", "--batch", "2",
               "--eval-every", "100000", "--workers", "1", "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout.readline().startswith("training stdc1")
    time.sleep(3.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "continue with: stdc train -o" in stderr and "Traceback" not in stderr
    state = read_state(tmp_path / "m_state.pt")
    assert 0 <= state["iteration"] < 100000
    assert (tmp_path / "m.pth").is_file()


@pytest.mark.slow
def test_defaults_learn_the_shapes_set(tmp_path):
    """The acceptance run: 64 images of 128x128, 3 classes, 300 iterations of batch 8 from
    scratch reach >= 0.85 mIoU on 32 images training never saw (a few minutes on 2 cores)."""
    write_shapes_dataset(tmp_path, 64, 128, 128, seed=0, split="train")
    write_shapes_dataset(tmp_path, 32, 128, 128, seed=1, split="val")
    config = TrainConfig(num_classes=3, size=(128, 128), iters=300, images=str(tmp_path / "images/train"),
                         masks=str(tmp_path / "masks/train"), val_images=str(tmp_path / "images/val"),
                         val_masks=str(tmp_path / "masks/val"))
    result = train(config, tmp_path / "shapes.pth")
    assert result.best_miou >= 0.85, result.records
