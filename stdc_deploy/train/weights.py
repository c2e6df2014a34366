"""Where training weights come from and how they are written.

Fresh networks get the official initialisation (backbone convs Kaiming-normal, fan-out;
head convs Kaiming-normal with a=1; BatchNorm 1 / 0). ``--init`` takes an ImageNet backbone
file (``STDCNet813M_73.91.tar`` / ``STDCNet1446_76.47.tar``: ``features.*`` under
``state_dict``) or any segmentation checkpoint this project loads; a class-count change
re-initialises only the classifiers and says so.

Checkpoints are written as the official training code writes them (the bare state_dict,
training heads included, InPlaceABN conventions for the head BatchNorms), or for the fork's
``cut`` / ``del`` variants as the fork writes them, so the official code, the fork and this
project all load them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import FEATURE_BLOCK, detect_arch, inspect_checkpoint, read_state_dict, strip_prefix
from ..errors import CheckpointError
from ..models import STDCSeg
from ..synthetic import to_fork_state_dict, to_official_state_dict

CLASSIFIERS = ("conv_out.conv_out.weight", "conv_out.conv_out.bias", "conv_out16.conv_out.weight",
               "conv_out32.conv_out.weight")


def official_init(model: STDCSeg) -> STDCSeg:
    """The official code's initialisation, in place."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if name.startswith("cp.backbone."):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            else:
                nn.init.kaiming_normal_(module.weight, a=1)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model


@dataclass
class InitReport:
    """What ``--init`` did, for the user: ``source`` and one line per group of tensors."""

    source: str
    lines: list[str] = field(default_factory=list)


def imagenet_backbone(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """``cp.backbone.features.*`` tensors of an ImageNet STDCNet file, else None."""
    sd = strip_prefix(state_dict)
    if not any(k.startswith("features.") for k in sd) or any(k.startswith("cp.") for k in sd):
        return None
    return {f"cp.backbone.{k}": v for k, v in sd.items() if k.startswith("features.")}


def init_network(path: str | os.PathLike) -> tuple[str, str | None]:
    """(architecture, variant) of an ``--init`` file; the variant is None for an ImageNet
    backbone, which has no head."""
    raw = read_state_dict(path)
    backbone = imagenet_backbone(raw)
    if backbone is not None:
        return detect_arch(backbone), None
    _, info = inspect_checkpoint(raw, path=path, keep_aux_heads=True)
    return info.arch, info.variant


def init_from(model: STDCSeg, path: str | os.PathLike) -> InitReport:
    """Load what fits from ``path`` into ``model`` (see the module doc); raise
    :class:`CheckpointError` naming the tensors that cannot fit."""
    raw = read_state_dict(path)
    target = model.state_dict()
    backbone = imagenet_backbone(raw)
    if backbone is not None:
        arch = detect_arch(backbone)
        if arch != model.cfg.name:
            raise CheckpointError(f"an ImageNet {arch} backbone cannot initialise {model.cfg.name} (--arch)", path)
        wanted = [k for k in target if FEATURE_BLOCK.match(k)]
        _check_shapes(backbone, target, wanted, path)
        model.load_state_dict({**target, **{k: backbone[k] for k in wanted}})
        return InitReport(f"ImageNet {arch} backbone {Path(path).name}",
                          [f"backbone: {len(wanted)} tensors loaded; context path and heads initialised fresh"])
    remapped, info = inspect_checkpoint(raw, path=path, keep_aux_heads=True)
    if info.arch != model.cfg.name:
        raise CheckpointError(f"checkpoint is {info.arch}; it cannot initialise {model.cfg.name} (--arch)", path)
    source = remapped.state_dict
    report = InitReport(f"{info.model_name} checkpoint {Path(path).name} ({info.num_classes} classes)")
    if info.variant != model.variant:
        wanted = [k for k in target if k.startswith("cp.backbone.")]
        _check_shapes(source, target, wanted, path)
        model.load_state_dict({**target, **{k: source[k] for k in wanted}})
        report.lines.append(f"backbone only: the checkpoint's {info.variant} head differs from the {model.variant} "
                            "head being trained; context path and heads initialised fresh")
        return report
    unexpected = sorted(k for k in source if k not in target)
    if unexpected:
        raise CheckpointError(f"tensors the training network does not have: {', '.join(unexpected[:6])}", path)
    loaded, classifiers, fresh = {}, [], []
    for key, value in target.items():
        if key not in source:
            fresh.append(key)
        elif source[key].shape == value.shape:
            loaded[key] = source[key]
        elif key in CLASSIFIERS and source[key].shape[1:] == value.shape[1:]:
            classifiers.append(key)
        else:
            raise CheckpointError(f"{key} is {tuple(source[key].shape)} in the checkpoint, "
                                  f"{tuple(value.shape)} in the training network", path)
    model.load_state_dict({**target, **loaded})
    report.lines.append(f"{len(loaded)} tensors loaded")
    if classifiers:
        report.lines.append(f"classifiers re-initialised for {model.num_classes} classes (the checkpoint has "
                            f"{info.num_classes}): {', '.join(k.rsplit('.', 1)[0] for k in classifiers)}")
    heads = sorted({k.split(".")[0] for k in fresh})
    if heads:
        report.lines.append(f"not in the checkpoint, initialised fresh: {', '.join(heads)}")
    return report


def _check_shapes(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], keys: list[str],
                  path: str | os.PathLike) -> None:
    missing = [k for k in keys if k not in source]
    if missing:
        raise CheckpointError(f"{len(missing)} tensors missing: {', '.join(missing[:6])}", path)
    bad = [k for k in keys if source[k].shape != target[k].shape]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{k} is {tuple(source[k].shape)} in the file, {tuple(target[k].shape)} in the "
                              f"training network ({len(bad)} tensors differ)", path)


def checkpoint_state_dict(model: STDCSeg) -> dict[str, torch.Tensor]:
    """The model as its training code writes it: the official layout for the plain
    network, the fork's for ``cut`` / ``del``."""
    if model.variant == "plain":
        return to_official_state_dict(model)
    return to_fork_state_dict(model)
