"""STDC-Seg: the STDCNet backbone and the BiSeNet-style segmentation network.

Module names follow the official checkpoints (``cp.backbone.features.N.conv_list.k``,
``cp.arm32``, ``ffm.convblk`` ...), so official weights load after dropping only
what this model deliberately omits (backbone aliases, the ImageNet head).

The fork's speed variants are data in :class:`~stdc_deploy.models.config.ArchConfig`:
``head_channels`` (fusion module and head width, 128 for ``cut`` and ``del``) and
``context_stride`` (16 for ``del``: no 1/32 stage; the global context and the attention
refinement come from the 1/16 features).

Export-ready by construction: BatchNorm2d instead of InPlaceABN, global pooling as a
mean (ONNX ReduceMean), every resize takes its size from a tensor, so any input size
and dynamic shapes work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ArchConfig


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU; keys ``conv`` / ``bn`` as upstream."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling that exports as ReduceMean, whatever the input size."""
    return x.mean((2, 3), keepdim=True)


class CatBottleneck(nn.Module):
    """STDC module: a chain of convs with halving widths whose outputs are concatenated."""

    def __init__(self, in_ch: int, out_ch: int, block_num: int, stride: int):
        super().__init__()
        widths = [out_ch // 2] + [out_ch // 2 ** (i + 1) for i in range(1, block_num - 1)]
        widths.append(widths[-1])  # the last two convs have the same width
        self.conv_list = nn.ModuleList([ConvBNReLU(in_ch, widths[0], kernel=1)])
        for prev, width in zip(widths[:-1], widths[1:]):
            self.conv_list.append(ConvBNReLU(prev, width))
        self.stride = stride
        if stride == 2:
            half = out_ch // 2
            self.avd_layer = nn.Sequential(
                nn.Conv2d(half, half, 3, 2, 1, groups=half, bias=False), nn.BatchNorm2d(half)
            )
            self.skip = nn.AvgPool2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv_list[0](x)
        out = self.avd_layer(first) if self.stride == 2 else first
        outs = []
        for conv in self.conv_list[1:]:
            out = conv(out)
            outs.append(out)
        if self.stride == 2:
            first = self.skip(first)
        return torch.cat([first, *outs], dim=1)


class STDCNet(nn.Module):
    """The STDC backbone, segmentation part only (no ImageNet head, no stage aliases).

    ``forward`` returns the features at strides 2, 4, 8, 16 and (unless the variant stops
    at 1/16) 32.
    """

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        base = cfg.base
        blocks: list[nn.Module] = [ConvBNReLU(3, base // 2, 3, 2), ConvBNReLU(base // 2, base, 3, 2)]
        in_ch = base
        self.stage_ends = [1, 2]  # exclusive end index in `features` of feat2, feat4, ...
        for stage, depth in enumerate(cfg.stages):
            out_ch = base * 4 * 2**stage
            for j in range(depth):
                blocks.append(CatBottleneck(in_ch, out_ch, cfg.block_num, 2 if j == 0 else 1))
                in_ch = out_ch
            self.stage_ends.append(len(blocks))
        self.features = nn.Sequential(*blocks)
        self.out_channels = (base // 2, base, *(base * 4 * 2**stage for stage in range(len(cfg.stages))))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        start = 0
        for end in self.stage_ends:
            for block in self.features[start:end]:
                x = block(x)
            feats.append(x)
            start = end
        return feats


class AttentionRefinementModule(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch, 3)
        self.conv_atten = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(global_mean(feat))))


class ContextPath(nn.Module):
    """Attention refinement of the deepest stages plus a global context vector.

    ``context_stride`` 32 (official): global mean of feat32 -> ``conv_avg``, added to
    ``arm32(feat32)``, resized to 1/16 -> ``conv_head32``, added to ``arm16(feat16)``,
    resized to 1/8 -> ``conv_head16``. ``context_stride`` 16 (``del``): global mean of
    feat16 -> ``conv_avg``, added to ``arm16(feat16)``, resized to 1/8 -> ``conv_head16``.
    """

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.backbone = STDCNet(cfg)
        channels = self.backbone.out_channels
        self.deep = cfg.context_stride == 32
        self.arm16 = AttentionRefinementModule(channels[3], 128)
        if self.deep:
            self.arm32 = AttentionRefinementModule(channels[4], 128)
            self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(channels[-1], 128, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """feat2, feat4, feat8, feat16, feat16_up (1/8) and feat32_up (1/16; absent when
        the variant has no 1/32 stage)."""
        feats = self.backbone(x)
        feat2, feat4, feat8, feat16 = feats[:4]
        avg = self.conv_avg(global_mean(feats[-1]))  # (N, 128, 1, 1): broadcasts over the deepest map
        if self.deep:
            feat32 = feats[4]
            feat32_up = F.interpolate(self.arm32(feat32) + avg, size=feat16.shape[-2:], mode="nearest")
            feat32_up = self.conv_head32(feat32_up)
            feat16_sum = self.arm16(feat16) + feat32_up
        else:
            feat16_sum = self.arm16(feat16) + avg
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, size=feat8.shape[-2:], mode="nearest"))
        if self.deep:
            return feat2, feat4, feat8, feat16, feat16_up, feat32_up
        return feat2, feat4, feat8, feat16, feat16_up


class FeatureFusionModule(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.convblk = ConvBNReLU(in_ch, out_ch, 1)
        self.conv1 = nn.Conv2d(out_ch, out_ch // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch // 4, out_ch, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(global_mean(feat)))))
        return feat * atten + feat


class SegHead(nn.Module):
    """ConvBNReLU 3x3 then a 1x1 classifier (``conv`` / ``conv_out`` as upstream)."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int, bias: bool = False):
        super().__init__()
        self.conv = ConvBNReLU(in_ch, mid_ch, 3)
        self.conv_out = nn.Conv2d(mid_ch, num_classes, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


AUX_HEADS = ("conv_out16", "conv_out32", "conv_out_sp2", "conv_out_sp4", "conv_out_sp8", "conv_out_sp16")
# conv_out32 exists only where the network has a 1/32 stage


class STDCSeg(nn.Module):
    """STDC-Seg. ``forward`` returns the main logits at input resolution (bilinear,
    align_corners=True), the output of the official model's inference path.

    Args:
        cfg: the network (backbone and head variant; ``self.variant`` names the latter).
        num_classes: classifier outputs.
        classifier_bias: a bias on the final 1x1 conv (MMSeg checkpoints have one).
        aux_heads: also build the training-only heads (context and detail heads); they
            are used only by :meth:`forward_aux`, never by ``forward`` or an export.
    """

    def __init__(self, cfg: ArchConfig, num_classes: int = 19, classifier_bias: bool = False,
                 aux_heads: bool = False):
        super().__init__()
        self.cfg = cfg
        self.variant = cfg.variant  # "plain", "cut" or "del"
        self.num_classes = num_classes
        self.cp = ContextPath(cfg)
        c2, c4, c8, c16 = self.cp.backbone.out_channels[:4]
        self.ffm = FeatureFusionModule(c8 + 128, cfg.head_channels)
        self.conv_out = SegHead(cfg.head_channels, cfg.head_channels, num_classes, bias=classifier_bias)
        self.aux_heads = aux_heads
        if aux_heads:
            self.conv_out16 = SegHead(128, 64, num_classes)
            if self.cp.deep:
                self.conv_out32 = SegHead(128, 64, num_classes)
            self.conv_out_sp2 = SegHead(c2, 64, 1)
            self.conv_out_sp4 = SegHead(c4, 64, 1)
            self.conv_out_sp8 = SegHead(c8, 64, 1)
            self.conv_out_sp16 = SegHead(c16, 64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, feat8, _, feat16_up, *_ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, feat16_up))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)

    def forward_aux(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every head's output, as the official training forward computes them.

        Context heads are upsampled to the input size; detail heads stay at their stride.
        Without a 1/32 stage (``del``) there is no ``logits32``.
        """
        if not self.aux_heads:
            raise RuntimeError("forward_aux needs a model built with aux_heads=True")
        feat2, feat4, feat8, feat16, feat16_up, *deep = self.cp(x)
        size = x.shape[-2:]

        def up(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=size, mode="bilinear", align_corners=True)

        outs = {
            "logits": up(self.conv_out(self.ffm(feat8, feat16_up))),
            "logits16": up(self.conv_out16(feat16_up)),
            "detail2": self.conv_out_sp2(feat2),
            "detail4": self.conv_out_sp4(feat4),
            "detail8": self.conv_out_sp8(feat8),
            "detail16": self.conv_out_sp16(feat16),
        }
        if deep:
            outs["logits32"] = up(self.conv_out32(deep[0]))
        return outs
