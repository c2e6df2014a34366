"""Synthetic street-like images, random-weight models with realistic statistics, and
checkpoints written in the official training code's key layout or the mgchen fork's.

Used where no weights or data can be downloaded: tests, the demo and benchmarks.
BatchNorm statistics are *measured* on varied images (not white noise, which leaves
running variances near zero behind the global pooling and makes parity numerically
fragile), so a random model behaves like a trained one numerically: activations of
unit scale, logits with a spread of classes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import cv2

from .checkpoint import FEATURE_BLOCK, INPLACE_ABN_EPS, inplace_abn_layers
from .models import STDCSeg, create_model
from .preprocess import normalize


def synthetic_image(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """One BGR uint8 scene: sky and road gradients, blocks, discs, lines, texture."""
    img = np.empty((height, width, 3), np.float32)
    horizon = int(height * rng.uniform(0.3, 0.6))
    top, bottom = rng.uniform(0, 255, (2, 3))
    ramp = np.linspace(0, 1, max(horizon, 1), dtype=np.float32)[:, None, None]
    img[:horizon] = top * (1 - ramp) + rng.uniform(0, 255, 3) * ramp
    img[horizon:] = bottom
    for _ in range(rng.integers(3, 9)):  # buildings / vehicles
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 16 + 1, width // 3 + 2), rng.integers(height // 12 + 1, height // 2 + 2)
        cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), rng.uniform(0, 255, 3).tolist(), -1)
    for _ in range(rng.integers(1, 5)):  # round things
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, centre, int(rng.integers(2, max(3, min(height, width) // 5))),
                   rng.uniform(0, 255, 3).tolist(), -1)
    for _ in range(rng.integers(2, 6)):  # poles and lane marks
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(img, p0, p1, rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 4)))
    texture = rng.normal(0, rng.uniform(3, 20), (height, width, 3)).astype(np.float32)
    img += cv2.GaussianBlur(texture, (0, 0), rng.uniform(0.5, 2.0))
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_images(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [synthetic_image(height, width, rng) for _ in range(count)]


@torch.no_grad()
def calibrate_batchnorm(model: STDCSeg, batches: list[torch.Tensor]) -> STDCSeg:
    """Replace every BatchNorm's running statistics by their average over ``batches``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    for x in batches:
        model.forward_aux(x) if model.aux_heads else model(x)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    return model.train(was_training)


def random_model(arch: str = "stdc1", num_classes: int = 19, *, seed: int = 0, aux_heads: bool = True,
                 classifier_bias: bool = False, calib_size: tuple[int, int] = (128, 256),
                 calib_images: int = 16, logit_scale: float = 8.0, variant: str | None = None) -> STDCSeg:
    """A deterministic random-weight STDC-Seg (eval mode) with measured BN statistics."""
    torch.manual_seed(seed)
    model = create_model(arch, num_classes, variant=variant, classifier_bias=classifier_bias, aux_heads=aux_heads)
    if classifier_bias:
        nn.init.uniform_(model.conv_out.conv_out.bias, -1.0, 1.0)
    # BN affine parameters away from the (1, 0) init, as after training
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.empty_like(m.weight).uniform_(0.5, 1.5, generator=gen)
            m.bias.data = torch.empty_like(m.bias).uniform_(-0.3, 0.3, generator=gen)
    images = synthetic_images(calib_images, *calib_size, seed=seed)
    # batches of 8: the BNs after global pooling see one value per image
    batches = [torch.from_numpy(normalize(images[i:i + 8])) for i in range(0, len(images), 8)]
    calibrate_batchnorm(model, batches)
    # trained STDC-Seg logits span roughly +-40; scale the classifier to match
    model.conv_out.conv_out.weight.data *= logit_scale
    return model.eval()


def to_official_state_dict(model: STDCSeg) -> dict[str, torch.Tensor]:
    """The model's weights in the exact key layout the official training code writes.

    Adds the backbone stage aliases and an ImageNet head (zeros and identity statistics: the
    official model carries one, unused for segmentation), drops the ``num_batches_tracked``
    counters that InPlaceABN layers do not have, and stores head BatchNorm weights as
    InPlaceABN holds them: it scales by ``|weight| + eps`` (see
    :func:`stdc_deploy.checkpoint.inplace_abn_layers`), so ``weight - eps`` is stored. A
    negative BatchNorm weight has no such form; its channel is flipped instead (the sign of
    the bias-free conv before it, of the running mean and of the weight), which computes the
    same function. Weights within ``eps`` of zero become ``eps``. Needs a model built with
    ``aux_heads=True`` (official checkpoints always hold those heads).
    """
    _check_training_heads(model, "official")
    if model.variant != "plain":
        raise ValueError(f"the official code has no {model.variant} variant: use to_fork_state_dict")
    sd = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
          if not (k.endswith("num_batches_tracked") and not k.startswith("cp.backbone."))}
    for layer in inplace_abn_layers(sd):
        weight = sd[f"{layer}.weight"]
        negative = weight < 0
        if bool(negative.any()):
            conv = _conv_before(layer)
            sd[conv][negative] *= -1
            sd[f"{layer}.running_mean"][negative] *= -1
            weight[negative] *= -1
        sd[f"{layer}.weight"] = weight.clamp(min=INPLACE_ABN_EPS) - INPLACE_ABN_EPS
    return _with_backbone_extras(sd, model)


def _conv_before(bn_layer: str) -> str:
    """The weight of the bias-free conv whose output a head BatchNorm normalises."""
    if bn_layer.endswith(".bn_atten"):
        return bn_layer[: -len("bn_atten")] + "conv_atten.weight"
    if bn_layer.endswith(".bn"):
        return bn_layer[: -len("bn")] + "conv.weight"
    raise ValueError(f"no conv known before {bn_layer}")


def to_fork_state_dict(model: STDCSeg, seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's weights in the key layout the mgchen fork's training writes (its
    ``BiSeNet_cutNet`` / ``BiSeNet_delNet``, or the plain network with plain BatchNorm).

    Plain BatchNorm everywhere, so every BN keeps ``num_batches_tracked``; backbone stage
    aliases and an ImageNet head as in :func:`to_official_state_dict`. A ``del`` model gets
    the tensors the fork still saves but never runs: the backbone's 1/32 stage (random values,
    seeded by ``seed``; ``cp.backbone.features.6/7`` for STDC1) with no ``x32`` alias, beside the
    ImageNet head. Needs a model built with ``aux_heads=True`` (the fork saves the training heads).
    """
    _check_training_heads(model, "fork")
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if model.cfg.stages != model.cfg.layers:  # the stages the variant does not run
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            full = create_model(model.cfg.name).cp.backbone.state_dict()
        first = model.cfg.num_feature_blocks
        for key, value in full.items():
            m = FEATURE_BLOCK.match(f"cp.backbone.{key}")
            if m and int(m.group(1)) >= first:
                sd[f"cp.backbone.{key}"] = value
    return _with_backbone_extras(sd, model)


def _check_training_heads(model: STDCSeg, layout: str) -> None:
    if not model.aux_heads:
        raise ValueError(f"{layout} checkpoints carry the training heads: build the model with aux_heads=True")


def _with_backbone_extras(sd: dict[str, torch.Tensor], model: STDCSeg) -> dict[str, torch.Tensor]:
    """``sd`` plus the stage aliases of the stages ``model`` runs and a zero ImageNet head."""
    out = dict(sd)
    # aliases: x2=features[:1], x4=features[1:2], x8/x16[/x32] = the stages run
    ends = model.cp.backbone.stage_ends
    starts = [0, *ends[:-1]]
    for name, start, end in zip(("x2", "x4", "x8", "x16", "x32"), starts, ends):
        for key, value in sd.items():
            if m := FEATURE_BLOCK.match(key):
                idx = int(m.group(1))
                if start <= idx < end:
                    # slicing nn.Sequential keeps the original indices
                    out[f"cp.backbone.{name}.0.{idx}.{key[m.end():]}"] = value
    width = model.cfg.base * 16  # the ImageNet head sits on the 1/32 stage, run or not
    head = max(1024, width)
    out.update({
        "cp.backbone.conv_last.conv.weight": torch.zeros(head, width, 1, 1),
        "cp.backbone.conv_last.bn.weight": torch.ones(head),
        "cp.backbone.conv_last.bn.bias": torch.zeros(head),
        "cp.backbone.conv_last.bn.running_mean": torch.zeros(head),
        "cp.backbone.conv_last.bn.running_var": torch.ones(head),
        "cp.backbone.conv_last.bn.num_batches_tracked": torch.tensor(0),
        "cp.backbone.fc.weight": torch.zeros(head, head),
        "cp.backbone.bn.weight": torch.ones(head),
        "cp.backbone.bn.bias": torch.zeros(head),
        "cp.backbone.bn.running_mean": torch.zeros(head),
        "cp.backbone.bn.running_var": torch.ones(head),
        "cp.backbone.bn.num_batches_tracked": torch.tensor(0),
        "cp.backbone.linear.weight": torch.zeros(1000, head),
    })
    return out
