"""Pre- and post-processing, input sources, atomic outputs and visualisation, checked numerically."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stdc_deploy import outputs, postprocess, preprocess, sources, visualize
from stdc_deploy.classes import CITYSCAPES_PALETTE, palette
from stdc_deploy.errors import StdcError
from stdc_deploy.models import IMAGENET_MEAN, IMAGENET_STD
from stdc_deploy.synthetic import synthetic_images

# ----------------------------------------------------------------------------- helpers

def torch_labels(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The reference protocol: bilinear align_corners=True resize of the logits, then argmax."""
    resized = F.interpolate(torch.from_numpy(np.ascontiguousarray(logits))[None], size=size,
                            mode="bilinear", align_corners=True)
    return resized.argmax(1)[0].numpy()


def nearest_source_index(n_in: int, n_out: int) -> np.ndarray:
    """Index of the source pixel nearest to each align_corners=True sampling point (ties go up)."""
    if n_out == 1:
        return np.zeros(1, np.int64)
    src = (np.arange(n_out, dtype=np.float32) * np.float32((n_in - 1) / (n_out - 1))).astype(np.float64)
    lo = np.floor(src)
    return np.minimum(lo + (src - lo >= 0.5), n_in - 1).astype(np.int64)


def cell_corner_index(n_in: int, n_out: int) -> np.ndarray:
    """Index of the source cell (its top/left corner) each output pixel falls into."""
    if n_out == 1:
        return np.zeros(1, np.int64)
    src = np.arange(n_out, dtype=np.float32) * np.float32((n_in - 1) / (n_out - 1))
    return np.minimum(src.astype(np.int64), n_in - 1)


def smooth_logits(num_classes: int, h: int, w: int, seed: int) -> np.ndarray:
    """Low-frequency logits: few, wide label regions with well separated values."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    planes = []
    for _ in range(num_classes):
        a, b, c, d = rng.uniform(-1, 1, 4)
        planes.append(10 * (a * np.sin(2 * yy + b) + c * np.cos(2 * xx + d)))
    return np.stack(planes).astype(np.float32)


def reference_normalize(images_bgr, mean, std) -> np.ndarray:
    rgb = np.stack([im[:, :, ::-1] for im in images_bgr]).astype(np.float64) / 255.0
    out = (rgb - np.asarray(mean, np.float64)) / np.asarray(std, np.float64)
    return out.transpose(0, 3, 1, 2)


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def tiny_image(seed: int = 0, h: int = 8, w: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model_logits(models_by_arch) -> np.ndarray:
    """(19, 64, 128) float32 logits of a random-weight STDC1-Seg on a street-like image."""
    model = models_by_arch["stdc1"].eval()
    x = torch.from_numpy(preprocess.normalize(synthetic_images(1, 64, 128, seed=3)))
    with torch.no_grad():
        logits = model(x)[0].numpy()
    assert logits.shape == (19, 64, 128)
    assert len(np.unique(logits.argmax(0))) >= 3  # several classes, so there are boundaries
    return logits


# ----------------------------------------------------------------------------- argmax

@pytest.mark.parametrize("num_classes", [1, 2, 19, 255, 256])
def test_argmax_classes_matches_numpy_with_ties(num_classes):
    rng = np.random.default_rng(num_classes)
    continuous = rng.standard_normal((num_classes, 9, 13)).astype(np.float32)
    tied = rng.integers(0, 3, (num_classes, 9, 13)).astype(np.float32)  # many exact ties
    tied[:, 0, 0] = 1.0  # every class ties at one pixel: class 0 must win
    for logits in (continuous, tied):
        labels = postprocess.argmax_classes(logits)
        assert labels.dtype == np.uint8
        assert labels.shape == (9, 13)
        np.testing.assert_array_equal(labels, logits.argmax(0).astype(np.uint8))
    assert postprocess.argmax_classes(tied)[0, 0] == 0


def test_argmax_classes_last_class_of_256_fits_uint8():
    logits = np.zeros((256, 2, 3), np.float32)
    logits[255, 0, 0] = 1.0
    logits[128, 1, 2] = 1.0
    labels = postprocess.argmax_classes(logits)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[255, 0, 0], [0, 0, 128]])


def test_argmax_classes_more_than_256_classes_is_uint16():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((300, 7, 5)).astype(np.float32)
    logits[299, 3, 3] = 100.0
    labels = postprocess.argmax_classes(logits)
    assert labels.dtype == np.uint16
    np.testing.assert_array_equal(labels, logits.argmax(0))
    assert labels[3, 3] == 299


def test_argmax_classes_other_dtypes_and_strided_input():
    rng = np.random.default_rng(1)
    f64 = rng.integers(0, 4, (19, 6, 8)).astype(np.float64)
    labels = postprocess.argmax_classes(f64)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, f64.argmax(0))
    strided = rng.standard_normal((19, 12, 16)).astype(np.float32)[:, ::2, 1::2]
    assert not strided.flags.c_contiguous
    np.testing.assert_array_equal(postprocess.argmax_classes(strided), strided.argmax(0))


# ----------------------------------------------------------------------------- official protocol

SIZES = [(100, 61), (13, 200), (37, 53), (73, 105), (20, 30), (5, 7), (1, 1), (1, 50), (50, 1)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("num_classes", [2, 19, 255])
def test_labels_official_matches_torch_on_random_logits(num_classes, size):
    logits = np.random.default_rng(num_classes).standard_normal((num_classes, 37, 53)).astype(np.float32)
    labels = postprocess.labels_official(logits, size)
    assert labels.shape == size
    assert labels.dtype == np.uint8
    assert (labels == torch_labels(logits, size)).mean() >= 0.99999


@pytest.mark.parametrize("size", SIZES)
def test_labels_official_exact_on_smooth_logits(size):
    logits = smooth_logits(19, 11, 17, seed=5)
    assert len(np.unique(logits.argmax(0))) >= 2
    np.testing.assert_array_equal(postprocess.labels_official(logits, size), torch_labels(logits, size))


@pytest.mark.parametrize("size", [(127, 255), (190, 381), (100, 61), (64, 128), (32, 64), (13, 200), (1, 1)])
def test_labels_official_exact_on_model_logits(model_logits, size):
    labels = postprocess.labels_official(model_logits, size)
    assert labels.shape == size and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, torch_labels(model_logits, size))


@pytest.mark.parametrize("size", [(128, 256), (150, 301), (64, 128), (33, 200)])
def test_labels_official_from_eighth_resolution_logits(models_by_arch, size):
    """Upsampling by 4x and more (1/8 logits straight to the frame) scores whole cell blocks."""
    model = models_by_arch["stdc1"].eval()
    x = torch.from_numpy(preprocess.normalize(synthetic_images(1, 64, 128, seed=3)))
    with torch.no_grad():
        _, _, feat8, _, feat16_up, *_ = model.cp(x)
        low = model.conv_out(model.ffm(feat8, feat16_up))[0].numpy()
    assert low.shape == (19, 8, 16)
    np.testing.assert_array_equal(postprocess.labels_official(low, size), torch_labels(low, size))
    smooth = smooth_logits(19, 8, 16, seed=2)
    np.testing.assert_array_equal(postprocess.labels_official(smooth, size), torch_labels(smooth, size))
    noisy = np.random.default_rng(4).standard_normal((19, 8, 16)).astype(np.float32)
    assert (postprocess.labels_official(noisy, size) == torch_labels(noisy, size)).mean() >= 0.99999


def test_labels_official_same_size_is_argmax(model_logits):
    np.testing.assert_array_equal(postprocess.labels_official(model_logits, (64, 128)),
                                  model_logits.argmax(0))


@pytest.mark.parametrize("shape,size", [((19, 1, 17), (5, 40)), ((19, 9, 1), (20, 3)), ((256, 6, 7), (11, 13))])
def test_labels_official_fallback_paths(shape, size):
    """One-pixel-thick logits and 256 classes (no spare marker label) take the plain resize path."""
    logits = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    labels = postprocess.labels_official(logits, size)
    assert labels.shape == size and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, torch_labels(logits, size))


def test_labels_official_more_than_256_classes():
    logits = np.random.default_rng(8).standard_normal((300, 6, 7)).astype(np.float32)
    logits[280] += 2.0  # a class above 255 wins in places
    labels = postprocess.labels_official(logits, (11, 13))
    assert labels.dtype == np.uint16
    assert labels.max() > 255
    np.testing.assert_array_equal(labels, torch_labels(logits, (11, 13)))


def test_labels_official_uniform_logits_stay_uniform():
    logits = np.zeros((19, 5, 6), np.float32)
    logits[4] = 1.0
    labels = postprocess.labels_official(logits, (31, 23))
    assert np.all(labels == 4)


# ----------------------------------------------------------------------------- fast protocol

def test_labels_fast_same_size_is_argmax(model_logits):
    labels = postprocess.labels_fast(model_logits, (64, 128))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, model_logits.argmax(0))


@pytest.mark.parametrize("in_hw,size", [((12, 17), (23, 33)), ((12, 17), (5, 40)), ((9, 9), (100, 61)),
                                        ((7, 5), (1, 1)), ((12, 17), (7, 9))])
@pytest.mark.parametrize("num_classes", [19, 300])
def test_labels_fast_takes_the_nearest_sampled_label(num_classes, in_hw, size):
    logits = np.random.default_rng(2).standard_normal((num_classes, *in_hw)).astype(np.float32)
    labels = postprocess.labels_fast(logits, size)
    assert labels.shape == size
    assert labels.dtype == (np.uint8 if num_classes <= 256 else np.uint16)
    ys, xs = nearest_source_index(in_hw[0], size[0]), nearest_source_index(in_hw[1], size[1])
    np.testing.assert_array_equal(labels, logits.argmax(0)[ys][:, xs])


@pytest.mark.parametrize("factor", [2, 3])
def test_labels_fast_close_to_official_on_model_logits(model_logits, factor):
    _, h, w = model_logits.shape
    size = ((h - 1) * factor + 1, (w - 1) * factor + 1)  # the align_corners grid lands on input pixels
    fast = postprocess.labels_fast(model_logits, size)
    official = postprocess.labels_official(model_logits, size)
    assert fast.shape == size and fast.dtype == np.uint8
    assert (fast == official).mean() >= 0.90
    # every source pixel is sampled exactly and keeps its label under both protocols
    np.testing.assert_array_equal(fast[::factor, ::factor], model_logits.argmax(0))
    np.testing.assert_array_equal(official[::factor, ::factor], model_logits.argmax(0))
    # the protocols may differ only inside cells whose four corner labels are not all the same
    low = model_logits.argmax(0)
    padded = np.pad(low, ((0, 1), (0, 1)), mode="edge")
    mixed = ((padded[:-1, :-1] != padded[1:, :-1]) | (padded[:-1, :-1] != padded[:-1, 1:])
             | (padded[:-1, :-1] != padded[1:, 1:]))
    ys, xs = cell_corner_index(h, size[0]), cell_corner_index(w, size[1])
    differ = fast != official
    assert differ.any()
    assert np.all(mixed[ys][:, xs][differ])


def test_to_labels_dispatches_and_rejects_unknown_protocol():
    logits = smooth_logits(19, 9, 12, seed=1)
    size = (17, 23)
    np.testing.assert_array_equal(postprocess.to_labels(logits, size), postprocess.labels_official(logits, size))
    np.testing.assert_array_equal(postprocess.to_labels(logits, size, "official"),
                                  postprocess.labels_official(logits, size))
    np.testing.assert_array_equal(postprocess.to_labels(logits, size, "fast"), postprocess.labels_fast(logits, size))
    with pytest.raises(ValueError, match="unknown protocol 'nearest'"):
        postprocess.to_labels(logits, size, "nearest")


# ----------------------------------------------------------------------------- normalize

def test_normalize_matches_float_reference():
    images = synthetic_images(2, 24, 32, seed=1)
    batch = preprocess.normalize(images)
    assert batch.shape == (2, 3, 24, 32)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_allclose(batch, reference_normalize(images, IMAGENET_MEAN, IMAGENET_STD), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [(17, 29), (48, 40), (24, 32)])
def test_normalize_resizes_the_8bit_image_first(size):
    images = synthetic_images(1, 24, 32, seed=2) + synthetic_images(1, 30, 20, seed=3)  # sizes differ
    batch = preprocess.normalize(images, size=size)
    assert batch.shape == (2, 3, *size)
    resized = [im if im.shape[:2] == size else cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
               for im in images]
    np.testing.assert_allclose(batch, reference_normalize(resized, IMAGENET_MEAN, IMAGENET_STD), rtol=0, atol=1e-6)


def test_normalize_custom_mean_std_and_channel_order():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    image = np.zeros((3, 4, 3), np.uint8)
    image[..., 0] = 255  # pure blue in BGR
    image[0, 0] = (10, 20, 30)
    batch = preprocess.normalize(image, mean=mean, std=std)
    assert batch.shape == (1, 3, 3, 4)
    np.testing.assert_allclose(batch[0, :, 1, 1], [-1.0, -1.0, 0.5], atol=1e-6)  # R, G, B
    np.testing.assert_allclose(batch[0, :, 0, 0], [(30 / 255 - 0.5) / 0.5, (20 / 255 - 0.25) / 0.25, 10 / 255 / 2.0],
                               atol=1e-6)
    np.testing.assert_allclose(batch, reference_normalize([image], mean, std), rtol=0, atol=1e-6)
    unit = preprocess.normalize(image, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(unit[0], image[:, :, ::-1].transpose(2, 0, 1) / 255.0, atol=1e-7)


def test_normalize_accepts_an_nhwc_array():
    images = np.stack(synthetic_images(3, 8, 12, seed=4))
    np.testing.assert_array_equal(preprocess.normalize(images), preprocess.normalize(list(images)))


@pytest.mark.parametrize("bad", [
    np.zeros((8, 8, 3), np.float32),
    np.zeros((8, 8), np.uint8),
    np.zeros((8, 8, 4), np.uint8),
    np.zeros((8, 8, 1), np.uint8),
    np.zeros((8, 8, 3), np.uint16),
])
def test_normalize_rejects_non_bgr_uint8(bad):
    with pytest.raises(ValueError):
        preprocess.normalize([bad])
    with pytest.raises(ValueError):
        preprocess.normalize([np.zeros((8, 8, 3), np.uint8), bad])


def test_normalize_rejects_empty_and_mixed_sizes():
    with pytest.raises(ValueError, match="no images"):
        preprocess.normalize([])
    with pytest.raises(ValueError, match="size="):
        preprocess.normalize([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)])


# ----------------------------------------------------------------------------- sources

def test_resolve_single_image(tmp_path):
    path = write_png(tmp_path / "a.png", tiny_image())
    source = sources.resolve_source(str(path))
    assert source.images == [path] and source.videos == [] and source.stream is None
    assert source.root == tmp_path.resolve()
    assert source.relative(path) == Path("a.png")


def test_resolve_single_video_by_suffix(tmp_path):
    path = tmp_path / "clip.MP4"
    path.write_bytes(b"not decoded here")
    source = sources.resolve_source(str(path))
    assert source.videos == [path] and source.images == []


def test_resolve_folder_non_recursive_and_recursive(tmp_path):
    top = [write_png(tmp_path / name, tiny_image(i)) for i, name in enumerate(("b.png", "a.jpg"))]
    nested = write_png(tmp_path / "sub" / "deeper" / "c.png", tiny_image(3))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "clip.mp4").write_bytes(b"videos in a folder are inputs too")

    flat = sources.resolve_source(str(tmp_path))
    assert flat.images == sorted(top)
    assert flat.videos == [tmp_path / "clip.mp4"]
    assert flat.root == tmp_path.resolve()
    assert [flat.relative(p) for p in flat.images] == [Path("a.jpg"), Path("b.png")]

    deep = sources.resolve_source(str(tmp_path), recursive=True)
    assert sorted(deep.images) == sorted(top + [nested])
    assert deep.relative(nested) == Path("sub/deeper/c.png")
    assert deep.relative(Path("/elsewhere/x.png")) == Path("x.png")  # outside the root: just the name


def test_resolve_empty_folder_hints_recursive(tmp_path):
    write_png(tmp_path / "sub" / "only.png", tiny_image())
    with pytest.raises(StdcError, match="recursive: no images or videos in this folder itself") as info:
        sources.resolve_source(str(tmp_path))
    assert str(tmp_path) in str(info.value)
    assert len(sources.resolve_source(str(tmp_path), recursive=True).images) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StdcError, match="no images") as info:
        sources.resolve_source(str(empty), recursive=True)
    assert "--recursive" not in str(info.value)


def test_resolve_glob(tmp_path):
    pngs = [write_png(tmp_path / f"{name}.png", tiny_image(i)) for i, name in enumerate(("z", "m", "a"))]
    write_png(tmp_path / "other.jpg", tiny_image(5))
    nested = write_png(tmp_path / "sub" / "n.png", tiny_image(6))
    (tmp_path / "list.txt").write_text("a.png\n")

    source = sources.resolve_source(str(tmp_path / "*.png"))
    assert source.images == sorted(pngs)
    assert source.root == tmp_path.resolve()
    assert source.relative(pngs[0]) == Path("z.png")

    deep = sources.resolve_source(str(tmp_path / "**" / "*.png"))
    assert sorted(deep.images) == sorted(pngs + [nested])
    assert deep.relative(nested) == Path("sub/n.png")

    assert sources.resolve_source(str(tmp_path / "?.png")).images == sorted(pngs)


@pytest.mark.parametrize("pattern", ["*.bmp", "*.txt", "nothing_here_*"])
def test_resolve_glob_matching_no_media(tmp_path, pattern):
    (tmp_path / "list.txt").write_text("x\n")
    write_png(tmp_path / "a.png", tiny_image())
    with pytest.raises(StdcError, match="matches no image or video"):
        sources.resolve_source(str(tmp_path / pattern))


def test_resolve_path_list(tmp_path):
    lists = tmp_path / "lists"
    rel = write_png(tmp_path / "data" / "rel.png", tiny_image(1))
    absolute = write_png(tmp_path / "elsewhere" / "abs.png", tiny_image(2))
    video = tmp_path / "data" / "clip.avi"
    video.write_bytes(b"x")
    lists.mkdir()
    listing = lists / "inputs.txt"
    listing.write_text(f"# inputs\n\n  ../data/rel.png  \n{absolute}\n   \n# ../data/missing.png\n../data/clip.avi\n")

    source = sources.resolve_source(str(listing))
    assert [p.resolve() for p in source.images] == [rel.resolve(), absolute.resolve()]
    assert [p.resolve() for p in source.videos] == [video.resolve()]
    assert source.root == tmp_path.resolve()  # the common folder of the listed files
    assert source.relative(rel) == Path("data/rel.png")


def test_resolve_path_list_missing_entry_names_list_and_line(tmp_path):
    write_png(tmp_path / "ok.png", tiny_image())
    listing = tmp_path / "inputs.lst"
    listing.write_text("ok.png\n# comment\ngone.png\n")
    with pytest.raises(StdcError) as info:
        sources.resolve_source(str(listing))
    message = str(info.value)
    assert message.startswith(str(listing))
    assert "line 3" in message and "gone.png" in message
    assert info.value.path == str(listing)


def test_resolve_path_list_empty_or_unreadable(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(StdcError, match="empty"):
        sources.resolve_source(str(empty))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\xfa\x00")
    with pytest.raises(StdcError, match="cannot read the path list"):
        sources.resolve_source(str(binary))


@pytest.mark.parametrize("text,stream", [("0", 0), (" 2 ", 2), ("rtsp://host/x", "rtsp://host/x"),
                                         ("http://cam.local:8080/video.mjpg", "http://cam.local:8080/video.mjpg")])
def test_resolve_streams(text, stream):
    source = sources.resolve_source(text)
    assert source.stream == stream
    assert type(source.stream) is type(stream)
    assert source.images == [] and source.videos == []


def test_resolve_missing_path(tmp_path):
    missing = tmp_path / "nope" / "image.png"
    with pytest.raises(StdcError, match="no such file") as info:
        sources.resolve_source(str(missing))
    assert str(missing) in str(info.value)


def test_resolve_unsupported_suffix(tmp_path):
    path = tmp_path / "data.xyz"
    path.write_bytes(b"x")
    with pytest.raises(StdcError, match=r"unsupported file type '\.xyz'") as info:
        sources.resolve_source(str(path))
    assert str(info.value).startswith(str(path))


# ----------------------------------------------------------------------------- read_image

def test_read_image_colour_round_trip(tmp_path):
    image = tiny_image(4, 9, 11)
    path = write_png(tmp_path / "c.png", image)
    np.testing.assert_array_equal(sources.read_image(path), image)


def test_read_image_grey_and_alpha_become_bgr(tmp_path):
    grey = np.arange(6 * 7, dtype=np.uint8).reshape(6, 7) * 5
    out = sources.read_image(write_png(tmp_path / "grey.png", grey))
    assert out.shape == (6, 7, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)

    bgra = np.random.default_rng(1).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    out = sources.read_image(write_png(tmp_path / "alpha.png", bgra))
    assert out.shape == (6, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, bgra[:, :, :3])


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(256)], ids=["empty", "random"])
def test_read_image_unreadable_names_the_file(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(StdcError) as info:
        sources.read_image(path)
    assert str(info.value).startswith(str(path))
    assert info.value.path == str(path)


def test_read_image_missing_file(tmp_path):
    with pytest.raises(StdcError, match="cannot read") as info:
        sources.read_image(tmp_path / "missing.png")
    assert str(info.value).startswith(str(tmp_path / "missing.png"))


# ----------------------------------------------------------------------------- videos

def flat_frame(value: int, size=(64, 48)) -> np.ndarray:
    return np.full((size[1], size[0], 3), value, np.uint8)


def test_atomic_video_round_trip(tmp_path):
    final = tmp_path / "v.mp4"
    writer = outputs.AtomicVideoWriter(final, 25.0, (64, 48))
    values = [20 * i for i in range(12)]
    for i, value in enumerate(values):
        writer.write(flat_frame(value) if i != 5 else np.full((30, 20, 3), value, np.uint8))  # one odd size
    assert writer.frames == 12
    assert not final.exists()
    partial = list(tmp_path.glob(".v.mp4.*.partial/v.mp4"))
    assert len(partial) == 1

    assert writer.close() == final
    assert final.is_file()
    assert list(tmp_path.glob("*partial*")) == [] and list(tmp_path.glob(".*")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    assert os.stat(final).st_mode & 0o777 == _default_file_mode()
    assert writer.close() == final  # closing twice is harmless

    with sources.VideoReader(final) as reader:
        assert reader.info.fps == pytest.approx(25.0)
        assert (reader.info.width, reader.info.height) == (64, 48)
        assert reader.info.frame_count == 12
        frames = list(reader)
    assert len(frames) == 12
    for frame, value in zip(frames, values):
        assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
        assert abs(float(frame.mean()) - value) < 8  # lossy codec, flat frames


def test_atomic_video_avi(tmp_path):
    final = tmp_path / "clip.avi"
    writer = outputs.AtomicVideoWriter(final, 10.0, (32, 24))
    for value in (0, 128, 255):
        writer.write(flat_frame(value, (32, 24)))
    assert writer.close() == final
    with sources.VideoReader(final) as reader:
        assert (reader.info.width, reader.info.height, reader.info.frame_count) == (32, 24, 3)
        assert reader.info.fps == pytest.approx(10.0)
        assert len(list(reader)) == 3


def test_atomic_video_discarded(tmp_path):
    writer = outputs.AtomicVideoWriter(tmp_path / "v.mp4", 25.0, (64, 48))
    for value in range(3):
        writer.write(flat_frame(value))
    assert writer.close(keep=False) is None
    assert list(tmp_path.iterdir()) == []

    empty = outputs.AtomicVideoWriter(tmp_path / "none.mp4", 25.0, (64, 48))
    assert empty.close() is None  # no frames: nothing to keep
    assert list(tmp_path.iterdir()) == []


def test_atomic_video_creates_parent_folders(tmp_path):
    final = tmp_path / "a" / "b" / "v.mp4"
    writer = outputs.AtomicVideoWriter(final, 25.0, (64, 48))
    writer.write(flat_frame(50))
    assert writer.close() == final and final.is_file()


def test_atomic_video_unsupported_suffix(tmp_path):
    with pytest.raises(StdcError, match="cannot write '.xyz' videos") as info:
        outputs.AtomicVideoWriter(tmp_path / "v.xyz", 25.0, (64, 48))
    assert str(info.value).startswith(str(tmp_path / "v.xyz"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name,content", [("notes.txt", b"plain text, not a video\n"),
                                          ("fake.mp4", b"hello world" * 10)])
def test_video_reader_rejects_non_video(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(StdcError, match="cannot open this video") as info:
        sources.VideoReader(path)
    assert str(info.value).startswith(str(path))


# ----------------------------------------------------------------------------- write_image

def test_write_image_png_round_trip(tmp_path):
    mask = np.random.default_rng(0).integers(0, 19, (13, 21), dtype=np.uint8)
    path = tmp_path / "out" / "mask.png"
    assert outputs.write_image(path, mask) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["mask.png"]
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), mask)
    assert os.stat(path).st_mode & 0o777 == _default_file_mode()

    colour = tiny_image(1, 13, 21)
    outputs.write_image(path, colour)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["mask.png"]
    np.testing.assert_array_equal(sources.read_image(path), colour)


def test_encode_image_by_suffix():
    image = tiny_image(2, 16, 16)
    png = outputs.encode_image(Path("x.png"), image)
    assert png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), image)
    assert outputs.encode_image(Path("x.jpg"), image).startswith(b"\xff\xd8")


# ----------------------------------------------------------------------------- visualize

def test_colorize_cityscapes_palette():
    labels = np.arange(19, dtype=np.uint8).reshape(1, 19)
    colours = visualize.colorize(labels, 19)
    assert colours.shape == (1, 19, 3) and colours.dtype == np.uint8
    assert tuple(colours[0, 0]) == tuple(reversed(CITYSCAPES_PALETTE[0])) == (128, 64, 128)
    assert tuple(colours[0, 13]) == tuple(reversed(CITYSCAPES_PALETTE[13])) == (142, 0, 0)  # car
    np.testing.assert_array_equal(colours[0], np.array(CITYSCAPES_PALETTE, np.uint8)[:, ::-1])


def test_colorize_out_of_range_and_wide_dtypes():
    labels = np.array([[0, 18, 19, 255]], np.uint8)
    colours = visualize.colorize(labels, 19)
    assert tuple(colours[0, 1]) == tuple(reversed(CITYSCAPES_PALETTE[18]))
    np.testing.assert_array_equal(colours[0, 2:], 0)  # unknown ids are black
    wide = np.array([[0, 18, 19, 1000]], np.int32)
    np.testing.assert_array_equal(visualize.colorize(wide, 19), colours)
    np.testing.assert_array_equal(visualize.colorize(wide.astype(np.uint16), 19), colours)


def test_colorize_generated_palette():
    labels = np.arange(5, dtype=np.uint8).reshape(1, 5)
    np.testing.assert_array_equal(visualize.colorize(labels, 5)[0], palette(5)[:, ::-1])


def test_overlay_blends_with_alpha():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    labels = rng.integers(0, 19, (10, 12), dtype=np.uint8)
    mask = visualize.colorize(labels, 19)
    np.testing.assert_array_equal(visualize.overlay(image, labels, 19, alpha=0.0), image)
    assert np.abs(visualize.overlay(image, labels, 19, alpha=1.0).astype(int) - mask).max() <= 1
    half = visualize.overlay(image, labels, 19, alpha=0.5)
    assert half.dtype == np.uint8 and half.shape == image.shape
    assert np.abs(half.astype(float) - (image.astype(float) + mask) / 2).max() <= 1


def test_overlay_rejects_bad_arguments():
    image = np.zeros((10, 12, 3), np.uint8)
    with pytest.raises(ValueError, match="do not match"):
        visualize.overlay(image, np.zeros((12, 10), np.uint8), 19)
    with pytest.raises(ValueError, match="alpha"):
        visualize.overlay(image, np.zeros((10, 12), np.uint8), 19, alpha=1.5)


# ----------------------------------------------------------------------------- regressions

def test_paths_with_glob_characters_are_taken_literally(tmp_path):
    folder = tmp_path / "run[1]"
    image = write_png(folder / "a.png", tiny_image())
    assert sources.resolve_source(str(image)).images == [image]
    assert sources.resolve_source(str(folder)).images == [image]


def test_colorize_paints_ignore_labels_black():
    picture = visualize.colorize(np.array([[-1, 255, 0]], np.int32), 19)
    assert picture[0, 0].tolist() == [0, 0, 0] and picture[0, 1].tolist() == [0, 0, 0]
    assert picture[0, 2].tolist() == list(CITYSCAPES_PALETTE[0][::-1])


def test_unknown_image_suffix_is_a_clear_error(tmp_path):
    with pytest.raises(StdcError, match="cannot encode"):
        outputs.write_image(tmp_path / "x.xyz", tiny_image())
    assert list(tmp_path.iterdir()) == []


def test_grey_frames_are_written_as_colour(tmp_path):
    writer = outputs.AtomicVideoWriter(tmp_path / "g.mp4", 25.0, (64, 48))
    for _ in range(3):
        writer.write(np.full((48, 64), 128, np.uint8))
    writer.close()
    with sources.VideoReader(tmp_path / "g.mp4") as reader:
        frames = list(reader)
    assert len(frames) == 3 and abs(int(frames[0].mean()) - 128) <= 8  # lossy codec


def _default_file_mode() -> int:
    """What open() gives a new file under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
