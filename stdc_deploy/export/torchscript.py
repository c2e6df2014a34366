"""TorchScript export for LibTorch (Python ``torch.jit.load``, C++ ``torch::jit::load``).

The network is traced; every resize in it takes its size from a tensor, so the traced
program runs at any batch and input size. The artifact metadata rides along as the extra
file ``stdc_metadata.json`` (read it in C++ with ``torch::jit::ExtraFilesMap``). The file is
written atomically after the saved program has been reloaded and compared with the eager
model at the trace size and at a second, odd size.
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .._version import __version__
from ..checkpoint import CheckpointInfo
from ..errors import ExportError, StdcError
from ..core.fileio import atomic_write_bytes
from ..models import STDCSeg
from ..preprocess import normalize
from ..synthetic import synthetic_images
from ..parity import Parity, Tolerance, compare_logits
from ..core.metadata import METADATA_FILE, ArtifactMetadata



@dataclass(frozen=True)
class TorchScriptExportResult:
    path: Path
    metadata: ArtifactMetadata
    parity: tuple[Parity, ...]
    size_bytes: int
    export_seconds: float


def export_torchscript(model: STDCSeg, output: str | os.PathLike, height: int = 512, width: int = 1024, *,
                       checkpoint: CheckpointInfo | None = None, class_names: tuple[str, ...] | None = None,
                       tolerance: Tolerance = Tolerance()) -> TorchScriptExportResult:
    """Trace ``model`` at ``height``x``width``, verify the saved program, write ``output``."""
    if not (32 <= height <= 8192 and 32 <= width <= 8192):
        raise StdcError(f"input size {height}x{width} out of range (32..8192 per side)")
    output = Path(output)
    model = model.eval().float().cpu()
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but is what LibTorch loads
        traced = torch.jit.trace(model, torch.zeros(1, 3, height, width), check_trace=False)
    metadata = ArtifactMetadata(
        arch=model.cfg.name, num_classes=model.num_classes, class_names=class_names or (),
        input_height=None, input_width=None, batch=None, dynamic=True, opt_height=height, opt_width=width,
        classifier_bias=model.conv_out.conv_out.bias is not None,
        source_format=checkpoint.source_format if checkpoint else "none",
        checkpoint_sha256=checkpoint.sha256 if checkpoint else None,
        versions={"stdc_deploy": __version__, "torch": torch.__version__.split("+")[0]})
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={METADATA_FILE: json.dumps(metadata.to_props())})
    data = buffer.getvalue()

    reloaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    parity = []
    for i, (n, h, w) in enumerate([(2, height, width), (1, height // 2 + 7, width // 2 + 13)]):
        x = torch.from_numpy(normalize(synthetic_images(n, h, w, seed=i)))
        with torch.no_grad():
            parity.append(compare_logits(model(x).numpy(), reloaded(x).numpy()))
    failed = [p for p in parity if not p.passes(tolerance)]
    if failed:
        raise ExportError(f"verification failed, {output} not written: {failed[0].describe()}")
    atomic_write_bytes(output, data)
    return TorchScriptExportResult(output, metadata, tuple(parity), len(data), time.perf_counter() - start)
