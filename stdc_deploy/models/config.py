"""STDC-Seg variants as data, plus the pre-processing facts that travel with a model.

A model is a backbone (``stdc1``/``stdc2``, :data:`ARCHS`) plus a head variant
(:data:`VARIANTS`): the official network (``plain``) or one of the speed variants of the
mgchen fork (chen1234520/STDC-Seg), which differ only in numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..core.metadata import IMAGENET_MEAN, IMAGENET_STD
from ..errors import StdcError

__all__ = ["ARCHS", "DEFAULT_PRESETS", "IMAGENET_MEAN", "IMAGENET_STD", "PAPER_SETUP", "PRESETS", "VARIANTS",
           "ArchConfig", "Preset", "Variant", "get_arch"]


@dataclass(frozen=True)
class Variant:
    """How a variant's head differs from the official network (``plain``)."""

    name: str
    description: str
    head_channels: int = 256  # width of the feature fusion module and the output head
    context_stride: int = 32  # the deepest backbone stage run; its global mean feeds the context path
    archs: tuple[str, ...] = ("stdc1", "stdc2")  # backbones the variant exists for


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("plain", "the official network"),
        Variant("cut", "fusion module and head at 128 channels (mgchen fork, BiSeNet_cutNet)", head_channels=128),
        Variant("del", "no 1/32 stage, context from 1/16, 128-channel head (mgchen fork, BiSeNet_delNet)",
                head_channels=128, context_stride=16, archs=("stdc1",)),
    )
}


@dataclass(frozen=True)
class ArchConfig:
    """One STDC-Seg network: a backbone (STDC1 and STDC2 differ only in ``layers``) and a
    head variant (see :data:`VARIANTS`; :func:`get_arch` fills these fields)."""

    name: str  # the backbone: stdc1 / stdc2
    backbone: str  # the official class name, for messages and metadata
    layers: tuple[int, ...]  # CatBottleneck blocks per stage (stride /8, /16, /32)
    base: int = 64
    block_num: int = 4  # convs per CatBottleneck
    variant: str = "plain"
    head_channels: int = 256
    context_stride: int = 32

    @property
    def stages(self) -> tuple[int, ...]:
        """Blocks of the stages the network runs (strides 8, 16[, 32])."""
        return self.layers[: {8: 1, 16: 2, 32: 3}[self.context_stride]]

    @property
    def num_feature_blocks(self) -> int:
        """Entries of ``backbone.features``: two stem convs plus every bottleneck run."""
        return 2 + sum(self.stages)

    @property
    def model_name(self) -> str:
        """``stdc1``, or ``stdc1-cut`` for a variant: for file names and messages."""
        return self.name if self.variant == "plain" else f"{self.name}-{self.variant}"


ARCHS: dict[str, ArchConfig] = {
    "stdc1": ArchConfig("stdc1", "STDCNet813", layers=(2, 2, 2)),
    "stdc2": ArchConfig("stdc2", "STDCNet1446", layers=(4, 5, 3)),
}


@dataclass(frozen=True)
class Preset:
    """A named (architecture, variant, input size), as the paper or the fork run them."""

    name: str
    arch: str
    height: int
    width: int
    paper_fps: float | None = None  # the paper's Table: GTX 1080Ti, TensorRT 5, FP32, batch 1
    paper_miou: float | None = None  # Cityscapes val mIoU reported with it
    variant: str = "plain"


PAPER_SETUP = "GTX 1080Ti, TensorRT 5.1.5, FP32, batch 1, engine time only"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("stdc1-seg50", "stdc1", 512, 1024, paper_fps=250.4, paper_miou=72.22),
        Preset("stdc1-seg75", "stdc1", 768, 1536, paper_fps=126.7, paper_miou=74.50),
        Preset("stdc2-seg50", "stdc2", 512, 1024, paper_fps=188.6, paper_miou=74.24),
        Preset("stdc2-seg75", "stdc2", 768, 1536, paper_fps=97.0, paper_miou=77.04),
        # the fork's speed variants, at the paper's Seg50 size and at the fork's 320x320
        Preset("stdc1-cut-seg50", "stdc1", 512, 1024, variant="cut"),
        Preset("stdc1-del-seg50", "stdc1", 512, 1024, variant="del"),
        Preset("stdc2-cut-seg50", "stdc2", 512, 1024, variant="cut"),
        Preset("stdc1-320", "stdc1", 320, 320),
        Preset("stdc1-cut-320", "stdc1", 320, 320, variant="cut"),
        Preset("stdc1-del-320", "stdc1", 320, 320, variant="del"),
    )
}

DEFAULT_PRESETS: tuple[str, ...] = ("stdc1-seg50", "stdc1-seg75", "stdc2-seg50", "stdc2-seg75")  # the paper's


def get_arch(name: str, variant: str | None = None) -> ArchConfig:
    """Look a network up: ``stdc1``/``stdc2`` (or the official class name), optionally with
    a variant suffix (``stdc1-cut``) or a ``variant`` argument (they must agree)."""
    key = name.lower()
    base, _, suffix = key.partition("-")
    cfg = next((c for c in ARCHS.values() if key in (c.name, c.backbone.lower())), None)
    if cfg is None and suffix:
        cfg = next((c for c in ARCHS.values() if base in (c.name, c.backbone.lower())), None)
        if cfg is not None and suffix not in VARIANTS:
            raise StdcError(f"unknown variant {suffix!r} in {name!r}; choose one of: {', '.join(VARIANTS)}")
    if cfg is None:
        raise StdcError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHS)}")
    if suffix and variant is not None and variant != suffix:
        raise StdcError(f"{name!r} names variant {suffix!r}, not {variant!r}")
    return with_variant(cfg, variant or suffix or "plain")


def with_variant(cfg: ArchConfig, variant: str) -> ArchConfig:
    """``cfg`` with the head of ``variant``."""
    found = VARIANTS.get(variant)
    if found is None:
        raise StdcError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if cfg.name not in found.archs:
        raise StdcError(f"variant {variant!r} exists for {', '.join(found.archs)} only, not {cfg.name}")
    return replace(cfg, variant=found.name, head_channels=found.head_channels, context_stride=found.context_stride)
