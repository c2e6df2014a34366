"""The official optimiser and learning-rate schedule.

SGD, momentum 0.9, weight decay 5e-4 on weights only (not on BatchNorm parameters or biases),
10x learning rate on the heads (fusion module and every output head); the learning rate
rises exponentially from 1e-5 to ``lr`` over the warm-up iterations, then decays as
``(1 - progress) ** 0.9`` to zero at the last iteration.
"""

from __future__ import annotations

import torch

from ..models import STDCSeg

WARMUP_START_LR = 1e-5
POWER = 0.9
HEAD_MODULES = ("ffm", "conv_out", "conv_out16", "conv_out32", "conv_out_sp2", "conv_out_sp4", "conv_out_sp8",
                "conv_out_sp16")


def default_warmup(iters: int) -> int:
    """The official 1000 warm-up iterations, shortened to a tenth of shorter schedules."""
    return min(1000, iters // 10)


def learning_rate(iteration: int, lr: float, iters: int, warmup: int) -> float:
    """The base learning rate at ``iteration`` (0-based)."""
    if iteration < warmup:
        return WARMUP_START_LR * (lr / WARMUP_START_LR) ** (iteration / warmup)
    return lr * max(0.0, 1 - (iteration - warmup) / max(1, iters - warmup)) ** POWER


def param_groups(model: STDCSeg, head_lr_mult: float = 10.0) -> list[dict]:
    """Four groups (backbone/context path, heads) x (decayed weights, undecayed), each with
    its ``lr_mult``."""
    groups = {(mult, decay): [] for mult in (1.0, head_lr_mult) for decay in (True, False)}
    for name, module in model.named_children():
        mult = head_lr_mult if name in HEAD_MODULES else 1.0
        for param in module.parameters():
            groups[(mult, param.ndim > 1)].append(param)
    return [{"params": params, "lr_mult": mult, "decay": decay}
            for (mult, decay), params in groups.items() if params]


def make_optimizer(model: STDCSeg, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                   head_lr_mult: float = 10.0) -> torch.optim.SGD:
    groups = param_groups(model, head_lr_mult)
    for group in groups:
        group["weight_decay"] = weight_decay if group["decay"] else 0.0
        group["lr"] = lr * group["lr_mult"]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
