"""The mgchen fork's speed variants (``cut``, ``del``): one model class, detected from the
tensors of checkpoints in the fork's key layout (written by our own code), exported and run."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from stdc_deploy.checkpoint import (INPLACE_ABN_EPS, detect_variant, inspect_checkpoint, load_model,
                                    read_state_dict, remap_state_dict)
from stdc_deploy.core.artifacts import read_checkpoint_metadata, read_onnx_metadata
from stdc_deploy.core.metadata import ArtifactMetadata
from stdc_deploy.errors import CheckpointError, StdcError
from stdc_deploy.export import OnnxExportOptions, export_onnx
from stdc_deploy.models import ARCHS, DEFAULT_PRESETS, PRESETS, VARIANTS, create_model, get_arch
from stdc_deploy.preprocess import normalize
from stdc_deploy.synthetic import random_model, synthetic_images, to_fork_state_dict, to_official_state_dict

from conftest import logits_of

# every (arch, variant) the registry defines beyond the official network
FORK_VARIANTS = [(arch, v.name) for v in VARIANTS.values() if v.name != "plain" for arch in v.archs]
CASES = [(arch, variant, classes) for arch, variant in FORK_VARIANTS for classes in (2, 4)]
ids = [f"{a}-{v}-{n}cls" for a, v, n in CASES]

# parameters of the 19-class inference network (no training heads)
INFERENCE_PARAMS = {("stdc1", "cut"): 7_756_064, ("stdc2", "cut"): 11_786_528, ("stdc1", "del"): 2_306_080}
UNUSED_STAGE = "backbone 1/32 stage (not run by the del variant)"


@pytest.fixture(scope="module")
def fork_checkpoints(tmp_path_factory):
    """(arch, variant, classes) -> (path, source model) for every case, in the fork's layout."""
    root = tmp_path_factory.mktemp("fork")
    out = {}
    for seed, (arch, variant, classes) in enumerate(CASES):
        model = random_model(arch, classes, variant=variant, seed=seed, calib_size=(96, 128), calib_images=8)
        path = root / f"{arch}-{variant}-{classes}.pth"
        torch.save(to_fork_state_dict(model, seed=seed), path)
        out[arch, variant, classes] = path, model
    return out


def test_variants_are_data():
    assert get_arch("stdc1-cut") == get_arch("stdc1", "cut") == get_arch("STDCNet813", "cut")
    cut, dele = get_arch("stdc2", "cut"), get_arch("stdc1", "del")
    assert (cut.name, cut.variant, cut.head_channels, cut.context_stride, cut.model_name) == (
        "stdc2", "cut", 128, 32, "stdc2-cut")
    assert (dele.stages, dele.num_feature_blocks, dele.model_name) == ((2, 2), 6, "stdc1-del")
    with pytest.raises(StdcError, match="exists for stdc1 only, not stdc2"):
        get_arch("stdc2", "del")
    with pytest.raises(StdcError, match="unknown variant 'slim'"):
        get_arch("stdc1-slim")
    with pytest.raises(StdcError, match="names variant 'cut', not 'del'"):
        get_arch("stdc1-cut", "del")


@pytest.mark.parametrize(("arch", "variant"), FORK_VARIANTS)
def test_one_model_class_with_the_variant_attribute(arch, variant):
    model = create_model(arch, 19, variant=variant).eval()
    assert model.variant == model.cfg.variant == variant
    assert sum(p.numel() for p in model.parameters()) == INFERENCE_PARAMS[arch, variant]
    assert model.ffm.convblk.conv.out_channels == model.conv_out.conv_out.in_channels == 128
    assert hasattr(model.cp, "arm32") == (variant != "del")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 128)).shape == (1, 19, 96, 128)
    aux = create_model(arch, 3, variant=variant, aux_heads=True).eval()
    with torch.no_grad():
        outs = aux.forward_aux(torch.randn(1, 3, 64, 64))
    assert ("logits32" in outs) == (variant != "del")


@pytest.mark.parametrize(("arch", "variant", "classes"), CASES, ids=ids)
def test_fork_checkpoint_loads_with_no_option(arch, variant, classes, fork_checkpoints, sample_input):
    path, source = fork_checkpoints[arch, variant, classes]
    model, info = load_model(path)
    assert (info.arch, info.variant, info.num_classes, info.model_name) == (arch, variant, classes,
                                                                            f"{arch}-{variant}")
    assert info.inplace_abn_layers == 0  # plain BatchNorm: num_batches_tracked everywhere, left as it is
    assert model.variant == variant
    np.testing.assert_array_equal(logits_of(model, sample_input), logits_of(source, sample_input))
    meta = read_checkpoint_metadata(path)
    assert (meta.arch, meta.variant, meta.num_classes) == (arch, variant, classes)


def test_del_reports_what_it_drops(fork_checkpoints):
    path, _ = fork_checkpoints["stdc1", "del", 2]
    sd = read_state_dict(path)
    assert len(sd) == 381  # what the fork's BiSeNet_delNet saves
    remapped = remap_state_dict(sd)
    unused = remapped.dropped[UNUSED_STAGE]
    assert unused and all(k.startswith(("cp.backbone.features.6.", "cp.backbone.features.7.")) for k in unused)
    _, info = inspect_checkpoint(sd)
    assert info.dropped == {
        "training-only heads (conv_out16/32, detail heads)": 35,  # conv_out16 + 4 detail heads, no conv_out32
        UNUSED_STAGE: len(unused),
        "backbone stage aliases (duplicates of cp.backbone.features)": 120,  # x2..x16, no x32
        "ImageNet classification head (unused for segmentation)": 13,
    }
    model, _ = load_model(path, aux_heads=True)  # training heads: conv_out16 yes, conv_out32 no
    assert hasattr(model, "conv_out16") and not hasattr(model, "conv_out32")


def test_variant_is_checked_like_arch(fork_checkpoints):
    path, _ = fork_checkpoints["stdc1", "cut", 2]
    load_model(path, arch="stdc1", variant="cut", num_classes=2)
    with pytest.raises(CheckpointError,
                       match=r"cut-2\.pth: checkpoint is the cut variant of stdc1, not del \(--variant\)"):
        load_model(path, variant="del")
    with pytest.raises(CheckpointError, match="unknown variant 'slim'"):
        load_model(path, variant="slim")


def test_corrupted_cut_checkpoint_names_every_key(fork_checkpoints, tmp_path):
    path, _ = fork_checkpoints["stdc2", "cut", 4]
    sd = read_state_dict(path)
    del sd["cp.arm32.conv_atten.weight"]
    sd["ffm.extra.weight"] = torch.zeros(3)
    sd["ffm.conv2.weight"] = torch.zeros(128, 64, 1, 1)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "broken.pth")
    text = str(exc.value)
    assert text.startswith(f"{tmp_path / 'broken.pth'}: stdc2-cut checkpoint (official format) does not fit")
    assert "missing keys: cp.arm32.conv_atten.weight;" in text
    assert "unexpected keys: ffm.extra.weight;" in text
    assert "shape mismatches: ffm.conv2.weight (file (128, 64, 1, 1), model (128, 32, 1, 1))" in text
    # head tensors that contradict each other are named
    sd = read_state_dict(path)
    sd["conv_out.conv.conv.weight"] = torch.zeros(256, 256, 3, 3)
    with pytest.raises(CheckpointError, match=r"head tensors disagree .*conv_out\.conv\.conv\.weight 256, "
                                              r"ffm\.convblk\.conv\.weight 128"):
        detect_variant(sd)


def test_del_head_on_stdc2_is_refused(fork_checkpoints):
    sd = read_state_dict(fork_checkpoints["stdc2", "cut", 2][0])
    sd = {k: v for k, v in sd.items() if not k.startswith(("cp.arm32.", "cp.conv_head32."))}
    sd["cp.conv_avg.conv.weight"] = torch.zeros(128, 512, 1, 1)
    with pytest.raises(CheckpointError,
                       match="a del head .* on an stdc2 backbone: the del variant exists for stdc1"):
        inspect_checkpoint(sd)


def test_official_style_del_checkpoint_gets_the_inplace_abn_scale(fork_checkpoints, tmp_path):
    """Head BNs saved without num_batches_tracked are InPlaceABN's, in a del file as in a plain one."""
    path, model = fork_checkpoints["stdc1", "del", 2]
    sd = {k: v for k, v in read_state_dict(path).items()
          if not (k.endswith("num_batches_tracked") and not k.startswith("cp.backbone."))}
    sd["cp.arm16.bn_atten.weight"] = model.cp.arm16.bn_atten.weight.detach() - INPLACE_ABN_EPS
    torch.save(sd, tmp_path / "abn.pth")
    loaded, info = load_model(tmp_path / "abn.pth")
    assert info.inplace_abn_layers == 6  # arm16 (2), conv_head16, conv_avg, ffm.convblk, conv_out.conv
    assert torch.allclose(loaded.cp.arm16.bn_atten.weight, model.cp.arm16.bn_atten.weight, atol=1e-6)


def test_official_layout_has_no_variants():
    with pytest.raises(ValueError, match="use to_fork_state_dict"):
        to_official_state_dict(create_model("stdc1", variant="cut", aux_heads=True))
    plain = to_fork_state_dict(create_model("stdc1", 3, aux_heads=True))  # the fork's plain and DW networks
    assert detect_variant(plain) == "plain" and set(to_official_state_dict(
        create_model("stdc1", 3, aux_heads=True))) < set(plain)


@pytest.mark.parametrize(("arch", "variant"), FORK_VARIANTS)
def test_small_export_runs_and_carries_the_variant(arch, variant, fork_checkpoints, tmp_path):
    classes = 2 if arch == "stdc1" else 4
    path, _ = fork_checkpoints[arch, variant, classes]
    model, info = load_model(path)
    onnx_path = tmp_path / f"{info.model_name}-96x128.onnx"
    result = export_onnx(model, onnx_path, OnnxExportOptions(height=96, width=128), checkpoint=info)
    assert result.parity and all(p.max_abs_error <= 2e-3 and p.label_agreement >= 0.9995 for p in result.parity)
    x = normalize(synthetic_images(1, 96, 128, seed=5))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ours = session.run(["logits"], {"input": x})[0]
    ref = logits_of(model, torch.from_numpy(x))
    assert ours.shape == (1, classes, 96, 128)
    assert np.abs(ours - ref).max() <= 2e-3 and (ours.argmax(1) == ref.argmax(1)).mean() >= 0.9995
    meta = read_onnx_metadata(onnx_path)
    assert (meta.arch, meta.num_classes) == (arch, classes)
    assert meta.variant == variant, "export.common.build_metadata must record variant=model.cfg.variant"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(1, 1), (1, 7), (5, 3), (17, 33)])
def test_tiny_and_odd_sizes_run(variant, size):
    """Every stride-2 step maps n to ceil(n / 2) >= 1, so no side is too small to compute."""
    model = create_model("stdc1", 2, variant=variant).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, *size))
    assert y.shape == (1, 2, *size) and torch.isfinite(y).all()


def test_metadata_without_variant_reads_as_plain():
    props = ArtifactMetadata(arch="stdc1", num_classes=2, variant="del").to_props()
    assert ArtifactMetadata.from_props(props).variant == "del"
    del props["variant"]
    assert ArtifactMetadata.from_props(props).variant == "plain"


def test_presets_build_the_variant(tmp_path):
    from stdc_deploy.bench.targets import preset_artifact, preset_targets

    assert DEFAULT_PRESETS == ("stdc1-seg50", "stdc1-seg75", "stdc2-seg50", "stdc2-seg75")
    assert all(PRESETS[name].paper_fps for name in DEFAULT_PRESETS)
    for name in ("stdc1-cut-seg50", "stdc1-del-seg50", "stdc2-cut-seg50", "stdc1-320", "stdc1-cut-320",
                 "stdc1-del-320"):
        preset = PRESETS[name]
        assert preset.arch in ARCHS and get_arch(preset.arch, preset.variant).model_name in name
    assert preset_targets(["stdc1-del-320"])[0].size == (320, 320)
    path = preset_artifact(PRESETS["stdc1-del-320"], "checkpoint", tmp_path)
    _, info = load_model(path)
    assert (info.arch, info.variant) == ("stdc1", "del")
