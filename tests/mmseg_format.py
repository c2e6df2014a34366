"""Official -> MMSegmentation STDC key conversion, written independently of the package's
MMSeg -> official remap so that a round trip through both tests the mapping."""

from __future__ import annotations

import re

import torch

STAGE_LAYOUT = {"stdc1": (2, 2, 2), "stdc2": (4, 5, 3)}

FIXED = {
    "cp.arm32.conv.": "backbone.arms.0.conv_layer.",
    "cp.arm32.conv_atten.": "backbone.arms.0.atten_conv_layer.1.conv.",
    "cp.arm32.bn_atten.": "backbone.arms.0.atten_conv_layer.1.bn.",
    "cp.arm16.conv.": "backbone.arms.1.conv_layer.",
    "cp.arm16.conv_atten.": "backbone.arms.1.atten_conv_layer.1.conv.",
    "cp.arm16.bn_atten.": "backbone.arms.1.atten_conv_layer.1.bn.",
    "cp.conv_head32.": "backbone.convs.0.",
    "cp.conv_head16.": "backbone.convs.1.",
    "cp.conv_avg.": "backbone.conv_avg.",
    "ffm.convblk.": "backbone.ffm.conv0.",
    "ffm.conv1.": "backbone.ffm.attention.1.conv.",
    "ffm.conv2.": "backbone.ffm.attention.2.conv.",
    "conv_out.conv.": "decode_head.convs.0.",
    "conv_out.conv_out.": "decode_head.conv_seg.",
    "conv_out16.conv.": "auxiliary_head.0.convs.0.",
    "conv_out16.conv_out.": "auxiliary_head.0.conv_seg.",
    "conv_out32.conv.": "auxiliary_head.1.convs.0.",
    "conv_out32.conv_out.": "auxiliary_head.1.conv_seg.",
}


def block_position(arch: str, n: int) -> tuple[int, int]:
    """official features index N (>= 2) -> MMSeg (stage S, block j)."""
    n -= 2
    for s, depth in enumerate(STAGE_LAYOUT[arch]):
        if n < depth:
            return s + 2, n
        n -= depth
    raise ValueError(n)


def official_to_mmseg(official: dict[str, torch.Tensor], arch: str, classifier_bias: torch.Tensor) -> dict:
    official = dict(official)
    # the official head BNs are InPlaceABN (scale |w| + 1e-5); MMSeg's are plain BatchNorm
    for key in [k for k in official if k.endswith(".running_var") and not k.startswith("cp.backbone.")]:
        weight = key.replace("running_var", "weight")
        official[weight] = official[weight].abs() + 1e-5
    out: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        if re.match(r"cp\.backbone\.(x\d+|conv_last|fc|bn|linear)\.", key) or key.startswith("conv_out_sp"):
            continue  # MMSeg has no aliases / ImageNet head; its detail head differs
        m = re.match(r"cp\.backbone\.features\.(\d+)\.(.*)", key)
        if m:
            n, rest = int(m.group(1)), m.group(2)
            if n < 2:
                new = f"backbone.backbone.stages.{n}.{rest}"
            else:
                s, j = block_position(arch, n)
                rest = rest.replace("conv_list.", "layers.").replace("avd_layer.0.", "downsample.conv.")
                rest = rest.replace("avd_layer.1.", "downsample.bn.")
                new = f"backbone.backbone.stages.{s}.{j}.{rest}"
        else:
            new = next(dst + key[len(src):] for src, dst in FIXED.items() if key.startswith(src))
        out[new] = value.clone()
    # MMSeg BN layers all track num_batches; its classifiers have biases
    for key in list(out):
        if key.endswith(".running_var"):
            out.setdefault(key.replace("running_var", "num_batches_tracked"), torch.tensor(100))
    out["decode_head.conv_seg.bias"] = classifier_bias.clone()
    for i in (0, 1):
        n = out[f"auxiliary_head.{i}.conv_seg.weight"].shape[0]
        out[f"auxiliary_head.{i}.conv_seg.bias"] = torch.zeros(n)
    return {"meta": {"mmseg_version": "1.2.2", "epoch": 80}, "state_dict": out}
