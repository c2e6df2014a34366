"""A self-contained run of the main workflow on random weights: no download needed.

checkpoint (official format) -> load -> ONNX export + verification -> ONNX Runtime
segmentation of a generated street-like frame, with measured latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .backends import open_backend
from .checkpoint import load_model
from .export import OnnxExportOptions, OnnxExportResult, export_onnx
from .core.fileio import atomic_output
from .preprocess import normalize
from .outputs import write_image
from .synthetic import random_model, synthetic_images, to_official_state_dict
from .visualize import overlay


@dataclass(frozen=True)
class DemoResult:
    checkpoint: Path
    export: OnnxExportResult
    frame: Path
    overlay: Path
    latency_ms: float  # median ONNX Runtime latency per frame, model only
    runs: int


def run_demo(arch: str = "stdc1", size: tuple[int, int] = (512, 1024), out_dir: str | Path = "models",
             runs: int = 10, seed: int = 0) -> DemoResult:
    out_dir = Path(out_dir)
    height, width = size
    checkpoint = out_dir / f"demo-{arch}-random.pth"
    with atomic_output(checkpoint) as tmp:
        torch.save(to_official_state_dict(random_model(arch, seed=seed)), tmp)
    model, info = load_model(checkpoint)
    export = export_onnx(model, out_dir / f"demo-{arch}-{height}x{width}.onnx",
                         OnnxExportOptions(height=height, width=width), checkpoint=info)

    frame = synthetic_images(1, height, width, seed=seed + 100)[0]
    x = normalize(frame)
    times = []
    with open_backend(export.path, backend="onnxruntime", device="cpu") as backend:
        backend.infer(x)  # warm-up
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            logits = backend.infer(x)
            times.append(time.perf_counter() - start)
    labels = logits[0].argmax(0)
    frame_path, overlay_path = out_dir / f"demo-{arch}-frame.png", out_dir / f"demo-{arch}-overlay.png"
    write_image(frame_path, frame)
    write_image(overlay_path, overlay(frame, labels, info.num_classes))
    return DemoResult(checkpoint, export, frame_path, overlay_path, float(np.median(times) * 1e3), len(times))
