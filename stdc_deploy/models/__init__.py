"""STDC-Seg model definition, variants and factory."""

from __future__ import annotations

from .config import ARCHS, IMAGENET_MEAN, IMAGENET_STD, PAPER_SETUP, PRESETS, ArchConfig, Preset, get_arch
from .stdc import AUX_HEADS, STDCSeg


def create_model(arch: str = "stdc1", num_classes: int = 19, *, classifier_bias: bool = False,
                 aux_heads: bool = False) -> STDCSeg:
    """Build an STDC-Seg network with freshly initialised weights (in train mode, as torch does)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return STDCSeg(get_arch(arch), num_classes, classifier_bias=classifier_bias, aux_heads=aux_heads)


__all__ = [
    "ARCHS", "AUX_HEADS", "IMAGENET_MEAN", "IMAGENET_STD", "PAPER_SETUP", "PRESETS", "ArchConfig", "Preset",
    "STDCSeg", "create_model", "get_arch",
]
