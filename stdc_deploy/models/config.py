"""STDC-Seg variants as data, plus the pre-processing facts that travel with a model."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.metadata import IMAGENET_MEAN, IMAGENET_STD
from ..errors import StdcError

__all__ = ["ARCHS", "IMAGENET_MEAN", "IMAGENET_STD", "PAPER_SETUP", "PRESETS", "ArchConfig", "Preset", "get_arch"]


@dataclass(frozen=True)
class ArchConfig:
    """One STDC backbone variant; STDC1 and STDC2 differ only in ``layers``."""

    name: str
    backbone: str  # the official class name, for messages and metadata
    layers: tuple[int, ...]  # CatBottleneck blocks per stage (stride /8, /16, /32)
    base: int = 64
    block_num: int = 4  # convs per CatBottleneck

    @property
    def num_feature_blocks(self) -> int:
        """Entries of ``backbone.features``: two stem convs plus every bottleneck."""
        return 2 + sum(self.layers)


ARCHS: dict[str, ArchConfig] = {
    "stdc1": ArchConfig("stdc1", "STDCNet813", layers=(2, 2, 2)),
    "stdc2": ArchConfig("stdc2", "STDCNet1446", layers=(4, 5, 3)),
}


@dataclass(frozen=True)
class Preset:
    """A named (architecture, input size) pair, as the paper reports them."""

    name: str
    arch: str
    height: int
    width: int
    paper_fps: float | None = None  # the paper's Table: GTX 1080Ti, TensorRT 5, FP32, batch 1
    paper_miou: float | None = None  # Cityscapes val mIoU reported with it


PAPER_SETUP = "GTX 1080Ti, TensorRT 5.1.5, FP32, batch 1, engine time only"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("stdc1-seg50", "stdc1", 512, 1024, paper_fps=250.4, paper_miou=72.22),
        Preset("stdc1-seg75", "stdc1", 768, 1536, paper_fps=126.7, paper_miou=74.50),
        Preset("stdc2-seg50", "stdc2", 512, 1024, paper_fps=188.6, paper_miou=74.24),
        Preset("stdc2-seg75", "stdc2", 768, 1536, paper_fps=97.0, paper_miou=77.04),
    )
}


def get_arch(name: str) -> ArchConfig:
    """Look an architecture up by name (``stdc1``/``stdc2``, or the official class name)."""
    key = name.lower()
    for cfg in ARCHS.values():
        if key in (cfg.name, cfg.backbone.lower()):
            return cfg
    raise StdcError(f"unknown architecture {name!r}; choose one of: {', '.join(ARCHS)}")
