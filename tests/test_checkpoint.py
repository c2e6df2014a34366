import os
import warnings

import numpy as np
import pytest
import torch

from stdc_deploy.checkpoint import inspect_checkpoint, load_model, read_state_dict, remap_state_dict
from stdc_deploy.errors import CheckpointError

from conftest import logits_of
from mmseg_format import official_to_mmseg


@pytest.mark.parametrize("arch", ["stdc1", "stdc2"])
def test_official_checkpoint_loads_silently_and_exactly(arch, official_checkpoints, models_by_arch,
                                                        sample_input, caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, info = load_model(official_checkpoints[arch])
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert (info.arch, info.num_classes, info.source_format, info.classifier_bias) == (arch, 19, "official", False)
    assert info.dropped["backbone stage aliases (duplicates of cp.backbone.features)"] > 0
    assert info.dropped["ImageNet classification head (unused for segmentation)"] == 13
    assert info.has_aux_heads
    assert len(info.sha256) == 64
    np.testing.assert_array_equal(logits_of(model, sample_input), logits_of(models_by_arch[arch], sample_input))


def test_training_heads_load_when_asked(official_checkpoints, models_by_arch):
    model, _ = load_model(official_checkpoints["stdc1"], aux_heads=True)
    ref = models_by_arch["stdc1"]
    for name in ("conv_out16.conv_out.weight", "conv_out_sp8.conv.conv.weight"):
        assert torch.equal(model.state_dict()[name], ref.state_dict()[name])


@pytest.mark.parametrize("wrap", ["state_dict", "model", "net", "module", "state_dict+module"])
def test_wrapped_and_prefixed_checkpoints(wrap, official_checkpoints, models_by_arch, sample_input, tmp_path):
    sd = torch.load(official_checkpoints["stdc1"], weights_only=True)
    if "module" in wrap:
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {wrap.split("+")[0]: sd, "epoch": 3} if wrap != "module" else sd
    if wrap.startswith("state_dict"):
        obj = {"state_dict": sd}  # mmcv-style: extra entries beside it are metadata
        obj["meta"] = {"iter": 1000}
    path = tmp_path / "wrapped.pth"
    torch.save(obj, path)
    model, info = load_model(path)
    assert info.arch == "stdc1"
    np.testing.assert_array_equal(logits_of(model, sample_input), logits_of(models_by_arch["stdc1"], sample_input))


@pytest.mark.parametrize("arch", ["stdc1", "stdc2"])
def test_mmseg_checkpoint_matches_official_plus_bias(arch, official_checkpoints, models_by_arch, sample_input,
                                                      tmp_path):
    official = torch.load(official_checkpoints[arch], weights_only=True)
    bias = torch.linspace(-2.0, 2.0, 19)
    path = tmp_path / "mmseg.pth"
    torch.save(official_to_mmseg(official, arch, bias), path)
    model, info = load_model(path)
    assert (info.arch, info.source_format, info.classifier_bias, info.num_classes) == (arch, "mmseg", True, 19)
    assert info.dropped == {"MMSeg auxiliary heads (training only)": 16}  # 2 heads x 8 tensors
    expected = logits_of(models_by_arch[arch], sample_input) + bias.numpy()[None, :, None, None]
    np.testing.assert_allclose(logits_of(model, sample_input), expected, atol=1e-4, rtol=0)


def test_overrides_are_checked(official_checkpoints):
    path = official_checkpoints["stdc1"]
    load_model(path, arch="STDCNet813", num_classes=19)  # matching overrides are fine
    with pytest.raises(CheckpointError, match=r"stdc1_official\.pth: checkpoint is stdc1, not stdc2"):
        load_model(path, arch="stdc2")
    with pytest.raises(CheckpointError, match="has 19 classes, not 11"):
        load_model(path, num_classes=11)


def test_other_class_counts_are_detected(tmp_path):
    from stdc_deploy.synthetic import to_official_state_dict
    from stdc_deploy.models import create_model

    path = tmp_path / "camvid.pth"
    torch.save(to_official_state_dict(create_model("stdc2", 11, aux_heads=True)), path)
    model, info = load_model(path)
    assert (info.arch, info.num_classes) == ("stdc2", 11)
    assert model.conv_out.conv_out.out_channels == 11


# ----------------------------------------------------------------------------- bad files

def _expect(path, pattern):
    with pytest.raises(CheckpointError, match=pattern) as exc:
        load_model(path)
    assert str(path) in str(exc.value)
    assert "\n" not in str(exc.value)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _expect(path, "not a PyTorch checkpoint|truncated or corrupt")


def test_truncated_file(official_checkpoints, tmp_path):
    data = official_checkpoints["stdc1"].read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    _expect(path, "truncated or corrupt")


def test_empty_missing_and_directory(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    _expect(tmp_path / "empty.pth", "empty file")
    _expect(tmp_path / "absent.pth", "no such file")
    (tmp_path / "dir.pth").mkdir()
    _expect(tmp_path / "dir.pth", "is a directory")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", ["zip", "legacy"])
def test_pickle_that_would_run_code_is_refused(protocol, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.zeros(1)}, "hook": _RunsCode(marker)}
    if protocol == "zip":
        torch.save(payload, path)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    _expect(path, "refused: the file would run code")
    assert not marker.exists()


def test_non_state_dict_content(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    _expect(path, "not a state_dict: the file holds a list")


def test_imagenet_backbone_is_named(tmp_path):
    from stdc_deploy.models import create_model

    backbone = create_model("stdc1").cp.backbone.state_dict()
    path = tmp_path / "STDCNet813M_73.91.tar"
    torch.save({"state_dict": {**backbone, "fc.weight": torch.zeros(1024, 1024)}}, path)
    _expect(path, "ImageNet STDCNet backbone checkpoint")


def test_not_stdc(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}, path)
    _expect(path, "not an STDC-Seg checkpoint")


def test_wrong_block_count(official_checkpoints, tmp_path):
    sd = torch.load(official_checkpoints["stdc1"], weights_only=True)
    sd = {k.replace("features.7.", "features.9."): v for k, v in sd.items()}
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    _expect(path, "backbone has 10 feature blocks")


def test_missing_unexpected_and_mismatched_keys_are_listed(official_checkpoints, tmp_path):
    sd = torch.load(official_checkpoints["stdc1"], weights_only=True)
    del sd["cp.arm16.conv_atten.weight"]
    sd["ffm.extra.weight"] = torch.zeros(3)
    sd["cp.conv_head16.conv.weight"] = torch.zeros(128, 128, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    text = str(exc.value)
    assert "missing keys: cp.arm16.conv_atten.weight" in text
    assert "unexpected keys: ffm.extra.weight" in text
    assert "cp.conv_head16.conv.weight (file (128, 128, 1, 1), model (128, 128, 3, 3))" in text


def test_inspect_without_building_a_model(official_checkpoints):
    remapped, info = inspect_checkpoint(read_state_dict(official_checkpoints["stdc2"]))
    assert info.arch == "stdc2" and info.path is None
    assert not any(k.startswith(("cp.backbone.x", "conv_out_sp")) for k in remapped.state_dict)
    kept = remap_state_dict(read_state_dict(official_checkpoints["stdc2"]), keep_aux_heads=True)
    assert any(k.startswith("conv_out_sp") for k in kept.state_dict)


@pytest.mark.parametrize("cut", [1, 16, 200, 5000, -100])
def test_any_truncation_is_a_checkpoint_error(cut, official_checkpoints, tmp_path):
    data = official_checkpoints["stdc1"].read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError):
        load_model(path)


@pytest.mark.parametrize("content", [b"plain text, not a checkpoint", b"\x80\x02}q\x00.", b"\x00" * 64,
                                     b'{"json": true}'])
def test_garbage_is_a_checkpoint_error(content, tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_model(path)


def test_training_heads_are_reported_through_prefixes(official_checkpoints):
    sd = {f"module.{k}": v for k, v in read_state_dict(official_checkpoints["stdc1"]).items()}
    _, info = inspect_checkpoint(sd)
    assert info.has_aux_heads
    no_heads = {k: v for k, v in sd.items() if not k.startswith(("module.conv_out1", "module.conv_out3",
                                                                   "module.conv_out_sp"))}
    assert not inspect_checkpoint(no_heads)[1].has_aux_heads


def test_non_finite_weights_are_named(official_checkpoints, tmp_path):
    sd = torch.load(official_checkpoints["stdc1"], weights_only=True)
    names = [k for k, v in sd.items() if k.startswith("cp.backbone.features.") and v.is_floating_point()][:5]
    for name in names:
        sd[name] = sd[name].clone()
        sd[name].view(-1)[-1] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    text = str(exc.value)
    assert text.startswith(f"{path}: corrupt weights: NaN/Inf values in 5 tensor(s): "
                           f"{names[0]}, {names[1]}, {names[2]}")
    assert "... and 2 more" in text and "\n" not in text
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        inspect_checkpoint(read_state_dict(path), path=path)


def test_non_finite_values_in_dropped_tensors_do_not_matter(official_checkpoints, tmp_path):
    sd = torch.load(official_checkpoints["stdc1"], weights_only=True)
    head = next(k for k in sd if k.startswith("conv_out16.") and sd[k].is_floating_point())
    sd[head] = torch.full_like(sd[head], float("nan"))  # a training-only head: not loaded for inference
    path = tmp_path / "head.pth"
    torch.save(sd, path)
    load_model(path)
    with pytest.raises(CheckpointError, match=head.replace(".", r"\.")):
        load_model(path, aux_heads=True)


def test_official_inplace_abn_scale_is_abs_weight_plus_eps(models_by_arch, sample_input, tmp_path):
    """The official head BNs were InPlaceABN: gamma = |weight| + eps, negative weights included."""
    from stdc_deploy.checkpoint import INPLACE_ABN_EPS, inplace_abn_layers, load_model
    from stdc_deploy.synthetic import to_official_state_dict

    model = models_by_arch["stdc1"]
    official = to_official_state_dict(model)
    layers = inplace_abn_layers(official)
    assert len(layers) == 15 and all(not layer.startswith("cp.backbone.") for layer in layers)
    assert "cp.arm16.bn_atten" in layers and "ffm.convblk.bn" in layers and "conv_out.conv.bn" in layers
    # the round trip gives back the model's own scales
    loaded, info = load_model(_save(official, tmp_path / "a.pth"))
    assert info.inplace_abn_layers == 9  # the training heads (6 layers) are dropped
    assert torch.allclose(loaded.cp.arm16.bn_atten.weight, model.cp.arm16.bn_atten.weight, atol=1e-6)
    # a negative InPlaceABN weight acts as its absolute value
    flipped = dict(official)
    flipped["cp.arm16.bn_atten.weight"] = -official["cp.arm16.bn_atten.weight"] - 2 * INPLACE_ABN_EPS
    negative, _ = load_model(_save(flipped, tmp_path / "b.pth"))
    assert torch.allclose(negative.cp.arm16.bn_atten.weight, model.cp.arm16.bn_atten.weight + 2 * INPLACE_ABN_EPS)
    # a plain-BatchNorm checkpoint in official names (num_batches_tracked kept) is loaded as it is
    plain = {**official, "cp.arm16.bn_atten.num_batches_tracked": torch.tensor(7)}
    plain["cp.arm16.bn_atten.weight"] = model.cp.arm16.bn_atten.weight.detach().clone()
    kept, info = load_model(_save(plain, tmp_path / "c.pth"))
    assert info.inplace_abn_layers == 8
    assert torch.equal(kept.cp.arm16.bn_atten.weight, model.cp.arm16.bn_atten.weight)


def _save(state_dict, path):
    torch.save(state_dict, path)
    return path
