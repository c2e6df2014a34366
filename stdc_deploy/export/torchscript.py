"""TorchScript export for LibTorch (Python ``torch.jit.load``, C++ ``torch::jit::load``).

The network is traced; every resize in it takes its size from a tensor, so the traced
program runs at any batch and input size. The artifact metadata rides along as the extra
file ``stdc_metadata.json`` (read it in C++ with ``torch::jit::ExtraFilesMap``). The file is
written atomically after the saved program has been reloaded and compared with the eager
model at the trace size and at a second, odd size.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..checkpoint import CheckpointInfo
from ..core.metadata import METADATA_FILE
from ..models import STDCSeg
from ..parity import Tolerance, default_tolerance
from .common import (
    ExportResult,
    build_metadata,
    check_export_output,
    check_input_size,
    compare_runs,
    torch_runner,
    verification_inputs,
    write_verified,
)
from .quiet import quiet_exporter


def export_torchscript(model: STDCSeg, output: str | os.PathLike, height: int = 512, width: int = 1024, *,
                       checkpoint: CheckpointInfo | None = None, class_names: tuple[str, ...] | None = None,
                       tolerance: Tolerance | None = None) -> ExportResult:
    """Trace ``model`` at ``height``x``width``, verify the saved program, write ``output``
    (``tolerance`` None: the FP32 default)."""
    check_input_size(height, width)
    output = check_export_output(output, "torchscript", [checkpoint.path if checkpoint else None])
    model = model.eval().float().cpu()
    start = time.perf_counter()
    with quiet_exporter(), torch.no_grad():  # torch.jit is deprecated upstream but is what LibTorch loads
        traced = torch.jit.trace(model, torch.zeros(1, 3, height, width), check_trace=False)
    metadata = build_metadata(model, checkpoint, height=height, width=width, batch=None, dynamic=True,
                              class_names=class_names)
    extra = {METADATA_FILE: json.dumps(metadata.to_props())}
    inputs = verification_inputs(height, width, dynamic=True)

    def save(tmp: Path) -> None:
        torch.jit.save(traced, str(tmp), _extra_files=extra)

    def compare(tmp: Path):
        return compare_runs(torch_runner(model), torch_runner(torch.jit.load(str(tmp), map_location="cpu")), inputs)

    parity = write_verified(output, save, compare, tolerance or default_tolerance("fp32"),
                            what="TorchScript vs PyTorch")
    return ExportResult(output, metadata, parity, output.stat().st_size, time.perf_counter() - start)
