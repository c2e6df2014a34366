"""`stdc eval`: the official protocol, exact scores on data built with known answers."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from stdc_deploy.checkpoint import load_model
from stdc_deploy.cli import app
from stdc_deploy.errors import StdcError
from stdc_deploy.evaluate import (
    LABEL_TO_TRAIN,
    TRAIN_TO_LABEL,
    Dataset,
    Sample,
    Scores,
    cityscapes_dataset,
    generic_dataset,
    update_confusion,
)
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.synthetic import random_model, synthetic_images

from official_pipeline import official_prediction as reference_prediction

IMAGE = (128, 256)  # "full resolution" of the synthetic dataset
NET = (64, 128)  # scale 0.5
CITIES = {"aachen": 2, "bonn": 1}


@pytest.fixture(scope="module")
def model_and_onnx(official_checkpoints, tmp_path_factory):
    model, info = load_model(official_checkpoints["stdc1"])
    path = tmp_path_factory.mktemp("eval") / "stdc1-64x128.onnx"
    export_onnx(model, path, OnnxExportOptions(height=NET[0], width=NET[1]), checkpoint=info)
    return model, path


def _official_prediction(model, image_bgr: np.ndarray, size=NET) -> np.ndarray:
    return reference_prediction(model, image_bgr, size)


def make_cityscapes(root: Path, model, *, corrupt: bool) -> dict:
    """A Cityscapes-layout split. Labels are the model's own official predictions (so the
    right answer is known), with an ignored band; with ``corrupt`` a block of each label is
    replaced by other classes, giving errors whose exact effect the test computes."""
    truth = {}
    rng = np.random.default_rng(0)
    images = iter(synthetic_images(sum(CITIES.values()), *IMAGE, seed=21))
    for city, count in CITIES.items():
        for i in range(count):
            name = f"{city}_000000_{i:06d}"
            image = next(images)
            train = _official_prediction(model, image)
            if corrupt:
                train[10:60, 20:120] = rng.integers(0, 19, (50, 100))
            label_ids = TRAIN_TO_LABEL[train]
            label_ids[:8] = 0  # "unlabeled": ignored
            label_ids[8:12] = 4  # "static": ignored
            img_dir = root / "leftImg8bit" / "val" / city
            gt_dir = root / "gtFine" / "val" / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(img_dir / f"{name}_leftImg8bit.png"), image)
            cv2.imwrite(str(gt_dir / f"{name}_gtFine_labelIds.png"), label_ids)
            truth[name] = (image, LABEL_TO_TRAIN[label_ids])
    return truth


def independent_scores(pairs) -> tuple[list, float, float]:
    """IoU per class from set counts (no confusion matrix): |P&G| / |P|G| over valid pixels."""
    inter = np.zeros(19)
    union = np.zeros(19)
    correct = total = 0
    for prediction, truth in pairs:
        valid = truth != 255
        p, g = prediction[valid], truth[valid]
        for c in range(19):
            inter[c] += np.sum((p == c) & (g == c))
            union[c] += np.sum((p == c) | (g == c))
        correct += np.sum(p == g)
        total += p.size
    iou = [inter[c] / union[c] if union[c] else None for c in range(19)]
    present = [v for v in iou if v is not None]
    return iou, float(np.mean(present)), correct / total


def run_eval(args):
    return CliRunner().invoke(app, ["eval", "--no-progress", *args])


def test_labels_equal_to_the_model_score_100(model_and_onnx, tmp_path):
    model, onnx_path = model_and_onnx
    make_cityscapes(tmp_path / "cs", model, corrupt=False)
    out = tmp_path / "s.json"
    result = run_eval(["--model", str(onnx_path), "--data", str(tmp_path / "cs"), "--scale", "0.5",
                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    (scores,) = data["models"]
    assert data["images"] == 3
    # the ONNX export and PyTorch agree on >= 99.95% of labels, so near-ties may flip a few pixels
    assert scores["pixel_accuracy"] > 0.999 and scores["miou"] > 0.99
    assert "mIoU" in result.stdout and "input 64x128" in result.stdout


def test_corrupted_labels_match_an_independent_computation(model_and_onnx, tmp_path):
    model, _ = model_and_onnx
    truth = make_cityscapes(tmp_path / "cs", model, corrupt=True)
    out = tmp_path / "s.json"
    preds = tmp_path / "preds"
    result = run_eval(["--model", str(model_and_onnx[1]), "--data", str(tmp_path / "cs"), "--scale", "0.5",
                       "--json", str(out), "--save-predictions", str(preds)])
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())["models"][0]
    # independent: the saved predictions (label ids) against the labels, by set counting
    pairs = []
    for name, (_, train) in truth.items():
        city = name.split("_")[0]
        saved = cv2.imread(str(preds / city / f"{name}_pred_labelIds.png"), cv2.IMREAD_UNCHANGED)
        assert saved.shape == IMAGE and set(np.unique(saved)) <= set(TRAIN_TO_LABEL[:19].tolist())
        pairs.append((LABEL_TO_TRAIN[saved], train))
    iou, miou, accuracy = independent_scores(pairs)
    assert scores["miou"] == pytest.approx(miou, abs=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert [v if v is None else pytest.approx(v, abs=1e-12) for v in iou] == scores["iou"]
    assert 0.2 < miou < 0.99  # the corruption really costs accuracy
    # and the saved predictions are the official protocol's (independent PyTorch implementation)
    agreement = np.mean([np.mean(LABEL_TO_TRAIN[cv2.imread(str(preds / n.split("_")[0] / f"{n}_pred_labelIds.png"),
                                                           cv2.IMREAD_UNCHANGED)] == _official_prediction(model, im))
                         for n, (im, _) in truth.items()])
    assert agreement > 0.999


def test_two_models_drop_and_gate(model_and_onnx, official_checkpoints, tmp_path):
    model, onnx_path = model_and_onnx
    make_cityscapes(tmp_path / "cs", model, corrupt=False)
    other = tmp_path / "other.onnx"
    export_onnx(random_model("stdc1", seed=5, aux_heads=False), other, OnnxExportOptions(height=64, width=128))
    args = ["--model", str(onnx_path), "--model", str(official_checkpoints["stdc1"]), "--data", str(tmp_path / "cs"),
            "--scale", "0.5", "--max-drop", "1.0"]
    result = run_eval(args)
    assert result.exit_code == 0, result.output  # the same weights in PyTorch: no drop
    assert "stdc1_official.pth: mIoU" in result.stdout
    result = run_eval(["--model", str(onnx_path), "--model", str(other), "--data", str(tmp_path / "cs"),
                       "--scale", "0.5", "--max-drop", "1.0"])
    assert result.exit_code == 1 and "other.onnx loses" in result.stderr


def test_generic_layout(model_and_onnx, tmp_path):
    model, onnx_path = model_and_onnx
    images, masks = tmp_path / "img", tmp_path / "mask"
    images.mkdir()
    masks.mkdir()
    pairs = []
    for i, image in enumerate(synthetic_images(2, 96, 160, seed=3)):
        truth = _official_prediction(model, image)
        truth[:5] = 255
        truth[40:50, 40:90] = 3
        cv2.imwrite(str(images / f"f{i}.jpg"), image)
        cv2.imwrite(str(masks / f"f{i}.png"), truth)
        pairs.append((_official_prediction(model, cv2.imread(str(images / f"f{i}.jpg"))), truth))
    out = tmp_path / "g.json"
    result = run_eval(["--model", str(onnx_path), "--images", str(images), "--masks", str(masks), "--num-classes",
                       "19", "--json", str(out)])
    assert result.exit_code == 0, result.output
    scores = json.loads(out.read_text())["models"][0]
    _, miou, accuracy = independent_scores(pairs)
    assert scores["pixel_accuracy"] == pytest.approx(accuracy, abs=2e-3)  # ONNX vs PyTorch near-ties only
    assert scores["miou"] == pytest.approx(miou, abs=2e-2)


def test_confusion_and_scores_on_known_counts():
    confusion = np.zeros((3, 3), np.int64)
    labels = np.array([[0, 0, 1, 1], [2, 2, -1, 255]])
    preds = np.array([[0, 1, 1, 1], [2, 0, 2, 2]])
    update_confusion(confusion, labels, preds)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    scores = Scores.from_confusion(confusion)
    assert scores.iou == pytest.approx((1 / 3, 2 / 3, 1 / 2)) and scores.pixels == 6
    assert scores.miou == pytest.approx(np.mean([1 / 3, 2 / 3, 1 / 2])) and scores.pixel_accuracy == pytest.approx(4 / 6)
    absent = Scores.from_confusion(np.array([[2, 0], [0, 0]]))
    assert absent.iou == (1.0, None) and absent.miou == 1.0


def test_bad_data_errors(model_and_onnx, tmp_path):
    model, onnx_path = model_and_onnx
    root = tmp_path / "cs"
    make_cityscapes(root, model, corrupt=False)
    label = root / "gtFine" / "val" / "bonn" / "bonn_000000_000000_gtFine_labelIds.png"

    def check(message):
        result = run_eval(["--model", str(onnx_path), "--data", str(root), "--scale", "0.5"])
        assert result.exit_code == 1 and message in result.stderr, result.output
        assert "Traceback" not in result.output

    data = label.read_bytes()
    cv2.imwrite(str(label), np.full((64, 64), 7, np.uint8))
    check("label is 64x64 but its image is 256x128")
    cv2.imwrite(str(label), np.full(IMAGE, 40, np.uint8))
    check(f"{label}: label id 40 out of range")
    label.unlink()
    check("bonn_000000_000000_leftImg8bit.png: no label for this image")
    label.write_bytes(data)
    result = run_eval(["--model", str(onnx_path), "--data", str(root), "--split", "test"])
    assert result.exit_code == 1 and "no leftImg8bit/test folder" in result.stderr
    (root / "leftImg8bit" / "train").mkdir()
    result = run_eval(["--model", str(onnx_path), "--data", str(root), "--split", "train"])
    assert result.exit_code == 1 and "no *_leftImg8bit.png images in this split" in result.stderr
    result = run_eval(["--model", str(onnx_path), "--data", str(root), "--scale", "0.75"])
    assert result.exit_code == 1 and "needs 96x192" in result.stderr
    assert len(cityscapes_dataset(root, "val").samples) == 3
    with pytest.raises(StdcError, match="nope: no such folder"):
        generic_dataset(tmp_path / "nope", root, 19)


def test_generic_label_out_of_range(model_and_onnx, tmp_path):
    _, onnx_path = model_and_onnx
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    cv2.imwrite(str(tmp_path / "i" / "a.png"), synthetic_images(1, 64, 128)[0])
    cv2.imwrite(str(tmp_path / "m" / "a.png"), np.full((64, 128), 19, np.uint8))
    result = run_eval(["--model", str(onnx_path), "--images", str(tmp_path / "i"), "--masks", str(tmp_path / "m"),
                       "--num-classes", "19"])
    assert result.exit_code == 1 and "label value 19 out of range (classes 0-18, ignore 255)" in result.stderr


def _label_png(path: Path, values: np.ndarray) -> Sample:
    cv2.imwrite(str(path), values)
    return Sample(path.stem, path, path)


def test_16_bit_cityscapes_labels(tmp_path):
    dataset = Dataset((), 19, 255, "cityscapes")
    ids = np.array([[7, 26, 0, 33]], np.uint8)
    wide = _label_png(tmp_path / "wide.png", ids.astype(np.uint16))
    assert cv2.imread(str(wide.label), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    np.testing.assert_array_equal(dataset.read_label(wide), LABEL_TO_TRAIN[ids])  # the same labelIds, wider storage
    instances = _label_png(tmp_path / "inst.png", np.array([[26001, 7]], np.uint16))
    with pytest.raises(StdcError, match="label id 26001 out of range .*16-bit image.*not instanceIds"):
        dataset.read_label(instances)


def test_16_bit_generic_masks(tmp_path):
    many = _label_png(tmp_path / "many.png", np.array([[0, 299, 65535]], np.uint16))
    labels = Dataset((), 300, 65535, "generic").read_label(many)
    assert labels.tolist() == [[0, 299, -1]]
    with pytest.raises(StdcError, match=r"value 299 out of range \(classes 0-18, ignore 65535\); this is a 16-bit"):
        Dataset((), 19, 65535, "generic").read_label(many)
    narrow = _label_png(tmp_path / "narrow.png", np.array([[0, 19]], np.uint8))
    with pytest.raises(StdcError) as exc:
        Dataset((), 19, 255, "generic").read_label(narrow)
    assert "16-bit" not in str(exc.value)


@pytest.mark.parametrize("args, fragment", [
    (["--max-images", "0"], "--max-images"), (["--limit", "0"], "--max-images"), (["--scale", "0"], "--scale"),
    (["--scale", "5"], "--scale"), (["--max-drop", "-1"], "--max-drop"), (["--num-classes", "0"], "--num-classes"),
    (["--ignore-index", "-1"], "--ignore-index"),
])
def test_numeric_options_are_checked_with_their_range(args, fragment, tmp_path):
    result = CliRunner().invoke(app, ["eval", "--model", str(tmp_path / "m.onnx"), "--data", str(tmp_path), *args],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "than or equal to" in result.output


def test_outputs_are_checked_before_evaluating(model_and_onnx, tmp_path):
    _, onnx_path = model_and_onnx
    existing = tmp_path / "s.json"
    existing.write_text("{}")
    args = ["--model", str(onnx_path), "--data", str(tmp_path / "absent")]
    result = run_eval([*args, "--json", str(existing)])
    assert result.exit_code == 1 and "s.json: exists (pass --overwrite" in result.stderr
    result = run_eval([*args, "--json", str(onnx_path), "--overwrite"])
    assert result.exit_code == 1 and "also an input" in result.stderr
    (tmp_path / "preds").mkdir()
    (tmp_path / "preds" / "old.png").write_bytes(b"x")
    result = run_eval([*args, "-d", str(tmp_path / "preds")])
    assert result.exit_code == 1 and "already holds files (pass --overwrite" in result.stderr
    assert existing.read_text() == "{}" and "no leftImg8bit" not in result.stderr  # refused before reading data


def test_max_images_and_its_second_name(model_and_onnx, tmp_path):
    model, onnx_path = model_and_onnx
    make_cityscapes(tmp_path / "cs", model, corrupt=False)
    for flag in ("--max-images", "--limit"):
        out = tmp_path / f"{flag.strip('-')}.json"
        result = run_eval(["--model", str(onnx_path), "--data", str(tmp_path / "cs"), "--scale", "0.5", flag, "1",
                           "--json", str(out)])
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["images"] == 1
