"""STDC-Seg model definition, variants and factory."""

from __future__ import annotations

from .config import (ARCHS, DEFAULT_PRESETS, IMAGENET_MEAN, IMAGENET_STD, PAPER_SETUP, PRESETS, VARIANTS, ArchConfig,
                     Preset, Variant, get_arch)
from .stdc import AUX_HEADS, STDCSeg


def create_model(arch: str = "stdc1", num_classes: int = 19, *, variant: str | None = None,
                 classifier_bias: bool = False, aux_heads: bool = False) -> STDCSeg:
    """Build an STDC-Seg network with freshly initialised weights (in train mode, as torch does).

    ``variant``: ``plain`` (the official network, default), ``cut`` or ``del`` (see
    :data:`VARIANTS`); ``arch`` may also carry it (``stdc1-cut``).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return STDCSeg(get_arch(arch, variant), num_classes, classifier_bias=classifier_bias, aux_heads=aux_heads)


__all__ = [
    "ARCHS", "AUX_HEADS", "DEFAULT_PRESETS", "IMAGENET_MEAN", "IMAGENET_STD", "PAPER_SETUP", "PRESETS", "VARIANTS",
    "ArchConfig", "Preset", "STDCSeg", "Variant", "create_model", "get_arch",
]
