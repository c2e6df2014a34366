"""The official recipe's losses: OHEM cross-entropy on the main and the context heads, and
the detail loss (BCE + dice against Laplacian boundary targets) on the 1/8 detail head.

Facts from the official training code: OHEM keeps the pixels whose loss exceeds
``-log(0.7)`` (probability of the true class below 0.7), but at least ``n_min = batch x H x W /
16`` of them (the hardest); ignored pixels never count. Detail targets: a 3x3 Laplacian
(8 at the centre, -1 around) of the label map at strides 1, 2 and 4, clamped at 0 and
thresholded at 0.1, the coarse ones upsampled (nearest) to the label size, fused with the
weights (0.6, 0.3, 0.1) and thresholded at 0.1 again. The official fusion weights are a
parameter, but the thresholding stops every gradient to them, so here they are constants.
Detail logits are upsampled (bilinear, align_corners) to the label size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .data import IGNORE

OHEM_THRESH = 0.7
LAPLACIAN = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]]).reshape(1, 1, 3, 3)
FUSE_WEIGHTS = (0.6, 0.3, 0.1)  # strides 1, 2, 4


def ohem_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, thresh: float = OHEM_THRESH,
                       min_fraction: float = 1 / 16) -> torch.Tensor:
    """Mean cross-entropy of the hard pixels (see the module doc); ``labels`` use :data:`IGNORE`."""
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="none").flatten()
    n_min = max(1, int(labels.numel() * min_fraction))
    hard = loss > -math.log(thresh)
    if int(hard.sum()) > n_min:
        return loss[hard].mean()
    return loss.topk(min(n_min, loss.numel())).values.mean()


def boundary_targets(labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) labels -> (N, 1, H, W) float boundary map of 0 / 1. Ignored pixels count
    as the value 255, as in the official code, so the edge of an ignored region is a boundary."""
    x = labels.unsqueeze(1).float()
    x = torch.where(x == IGNORE, torch.full_like(x, 255.0), x)
    kernel = LAPLACIAN.to(x.device)
    size = x.shape[-2:]
    levels = []
    for stride in (1, 2, 4):
        edge = F.conv2d(x, kernel, stride=stride, padding=1).clamp(min=0)
        if stride > 1:
            edge = F.interpolate(edge, size=size, mode="nearest")
        levels.append((edge > 0.1).float())
    fused = sum(w * level for w, level in zip(FUSE_WEIGHTS, levels))
    return (fused > 0.1).float()


def dice_loss(probs: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    p, t = probs.flatten(1), targets.flatten(1)
    return (1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def detail_loss(detail_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, dice) of the detail head against the boundary targets of ``labels``."""
    targets = boundary_targets(labels)
    logits = F.interpolate(detail_logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=True)
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    return bce, dice_loss(torch.sigmoid(logits), targets)


def recipe_losses(outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every term of the recipe (all weight 1) from :meth:`STDCSeg.forward_aux` outputs."""
    losses = {"main": ohem_cross_entropy(outputs["logits"], labels),
              "aux16": ohem_cross_entropy(outputs["logits16"], labels)}
    if "logits32" in outputs:
        losses["aux32"] = ohem_cross_entropy(outputs["logits32"], labels)
    losses["detail_bce"], losses["detail_dice"] = detail_loss(outputs["detail8"], labels)
    return losses
