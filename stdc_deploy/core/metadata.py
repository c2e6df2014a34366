"""The metadata every artifact carries (the contract every runtime reads), so inference
needs no training config or repeated flags."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from ..classes import default_class_names

# ImageNet statistics on 0-1 RGB, used by the official code and MMSeg alike.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

FORMAT_VERSION = 1
METADATA_FILE = "stdc_metadata.json"  # inside TorchScript and .pt2 archives
# Network input sides every exporter and runtime accepts. Each stride-2 stage maps n to
# ceil(n / 2) >= 1 and global pooling averages at least one pixel, so the network runs at any
# size (tested down to 1x1); 2 keeps dynamic-shape tracing clear of PyTorch's special-casing
# of sizes 0 and 1. Below 32 (16 for the del variant) the global context is a single pixel:
# a quality limit, not a failure.
MIN_SIDE, MAX_SIDE = 2, 8192


@dataclass(frozen=True)
class ArtifactMetadata:
    """Self-description of an exported model.

    The input is ``input_name``: float32 ``input_layout`` in ``color_order``, pixel values
    scaled to 0-1 and normalised with ``mean``/``std``. ``input_height``/``input_width``/
    ``batch`` are None where the dimension is dynamic; for dynamic artifacts they give the
    size the export was verified at as ``opt_height``/``opt_width``. ``variant`` is the
    head variant (``plain``: the official network; ``cut``/``del``: the mgchen fork's); files
    written before it existed read as ``plain``.
    """

    arch: str
    num_classes: int
    variant: str = "plain"
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_name: str = "input"
    output_name: str = "logits"
    input_layout: str = "NCHW"
    color_order: str = "RGB"
    input_scale: str = "1/255"
    input_height: int | None = None
    input_width: int | None = None
    batch: int | None = 1
    dynamic: bool = False
    opt_height: int = 512
    opt_width: int = 1024
    output_kind: str = "logits"  # (N, C, H, W) float32 at input resolution
    precision: str = "fp32"
    classifier_bias: bool = False
    source_format: str = "official"
    checkpoint_sha256: str | None = None
    opset: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if not self.class_names:
            object.__setattr__(self, "class_names", default_class_names(self.num_classes))
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def model_name(self) -> str:
        """``stdc1``, or ``stdc1-cut`` for a variant."""
        return self.arch if self.variant == "plain" else f"{self.arch}-{self.variant}"

    @property
    def input_size(self) -> str:
        if self.dynamic:
            return f"dynamic (verified at {self.opt_height}x{self.opt_width})"
        return f"{self.input_height}x{self.input_width}"

    def to_props(self) -> dict[str, str]:
        """Flat string key/values (ONNX ``metadata_props``, TorchScript extra files)."""
        out = {}
        for key, value in asdict(self).items():
            out[key] = value if isinstance(value, str) else json.dumps(value)
        return out

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ArtifactMetadata:
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, raw in props.items():
            if key not in known:
                continue
            if known[key].type.startswith("str"):  # "str" or "str | None"
                kwargs[key] = None if raw == "null" and known[key].type != "str" else raw
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        if "arch" not in kwargs or "num_classes" not in kwargs:
            raise ValueError("no stdc-deploy metadata (arch, num_classes) in this artifact")
        return cls(**kwargs)
