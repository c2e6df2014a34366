"""What to time: artifacts, or presets (the paper's, the fork's variants) as random-weight
artifacts made on demand."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import StdcError
from ..models.config import PRESETS, Preset


def preset_artifact(preset: Preset, kind: str, directory: Path, batch: int = 1) -> Path:
    """A random-weight artifact for ``preset`` (speed does not depend on the weight values).

    The weights get BN statistics measured on images, so activations are in a normal range
    (no denormals or overflow that would distort timings). ONNX is exported at the preset's
    fixed size without the parity check (the export path is verified elsewhere).
    """
    import torch

    from ..export import OnnxExportOptions, export_onnx
    from ..synthetic import random_model, to_fork_state_dict, to_official_state_dict

    model = random_model(preset.arch, seed=0, aux_heads=kind == "checkpoint", calib_size=(64, 128), calib_images=8,
                         variant=preset.variant)
    if kind == "checkpoint":
        path = directory / f"{preset.name}.pth"
        # the official code has no variants: they are written as the mgchen fork writes them
        torch.save(to_official_state_dict(model) if model.variant == "plain" else to_fork_state_dict(model), path)
        return path
    path = directory / f"{preset.name}-b{batch}.onnx"
    export_onnx(model.eval(), path, OnnxExportOptions(height=preset.height, width=preset.width, batch=batch,
                                                      verify=False))
    return path


@dataclass(frozen=True)
class Target:
    """What to time: an artifact, or a preset whose random-weight artifacts are made on demand."""

    name: str
    size: tuple[int, int]
    artifact: Path | None = None
    preset: Preset | None = None

    @property
    def paper_fps(self) -> float | None:
        return self.preset.paper_fps if self.preset else None


def default_backend(device: str | None) -> tuple[str, str]:
    """(backend, device) for random-weight presets: the fastest runtime installed here."""
    from ..backends import available_backends, cuda_available

    want_cuda = device is None or device.startswith("cuda")
    if want_cuda and cuda_available():
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return "onnxruntime", device or "cuda"
        return "torch", device or "cuda"
    if device is not None and device.startswith("cuda"):
        raise StdcError("device cuda requested but PyTorch sees no CUDA GPU")
    if "onnxruntime" not in available_backends("onnx"):
        return "torch", "cpu"
    return "onnxruntime", "cpu"


def preset_targets(names: Sequence[str]) -> list[Target]:
    targets = []
    for name in names:
        if name not in PRESETS:
            raise StdcError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        preset = PRESETS[name]
        targets.append(Target(name, (preset.height, preset.width), preset=preset))
    return targets


def scratch_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="stdc-bench-")
