"""`torch.export` artifacts: an ExportedProgram (``.pt2``), or an AOTInductor package.

Both run at any batch and input size (dynamic ``Dim``s) and carry the artifact metadata as
``stdc_metadata.json`` inside the archive. The ExportedProgram loads with
``torch.export.load(path).module()``; the AOTInductor package (``aoti=True``, compiled for the
CPU or CUDA with the C++ compiler here) loads with ``torch._inductor.aoti_load_package`` in
Python or ``torch::inductor::AOTIModelPackageLoader`` in C++. Written atomically after the
saved artifact was reloaded and compared with the eager model.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path

import torch

from ..checkpoint import CheckpointInfo
from ..core.metadata import METADATA_FILE
from ..errors import ExportError, InvalidValue
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


def is_aoti_package(path: str | os.PathLike) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any("/data/aotinductor/" in n for n in archive.namelist())


def load_pt2(path: str | os.PathLike, device: str = "cpu"):
    """A callable module from either kind of ``.pt2``."""
    if is_aoti_package(path):
        from torch._inductor import aoti_load_package

        return aoti_load_package(str(path))
    return torch.export.load(str(path)).module().to(device)


def _failure(step: str, exc: Exception) -> ExportError:
    return ExportError(f"{step} failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")


def export_pt2(model: STDCSeg, output: str | os.PathLike, height: int = 512, width: int = 1024, *,
               aoti: bool = False, device: str = "cpu", checkpoint: CheckpointInfo | None = None,
               class_names: tuple[str, ...] | None = None, tolerance: Tolerance | None = None) -> ExportResult:
    """Export ``model`` with torch.export (``aoti``: compile an AOTInductor package for
    ``device``), verify the saved artifact, write ``output`` (``tolerance`` None: the FP32
    default)."""
    from torch.export import Dim

    check_input_size(height, width)
    output = check_export_output(output, "pt2", [checkpoint.path if checkpoint else None])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidValue("device", f"{device} requested, but PyTorch sees no CUDA GPU")
    model = model.eval().float().to(device)
    start = time.perf_counter()
    example = torch.zeros(2, 3, height, width, device=device)
    # DYNAMIC lets torch.export derive the relations the strided convolutions impose
    shapes = {"x": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    except Exception as exc:  # torch.export raises many types
        raise _failure("torch.export", exc) from exc
    metadata = build_metadata(model, checkpoint, height=height, width=width, batch=None, dynamic=True,
                              class_names=class_names)
    extra = json.dumps(metadata.to_props())
    inputs = verification_inputs(height, width, dynamic=True)

    def save(tmp: Path) -> None:
        try:
            with quiet_exporter(), torch.no_grad():
                if aoti:
                    from torch._inductor import aoti_compile_and_package

                    aoti_compile_and_package(program, package_path=str(tmp))
                else:
                    torch.export.save(program, str(tmp), extra_files={METADATA_FILE: extra})
        except Exception as exc:  # inductor raises many types
            raise _failure("AOTInductor compilation" if aoti else "saving the program", exc) from exc
        if aoti:  # the package has no extra-files argument: add the metadata to the archive
            with zipfile.ZipFile(tmp, "a") as archive:
                root = archive.namelist()[0].split("/")[0]
                archive.writestr(f"{root}/extra/{METADATA_FILE}", extra)

    def compare(tmp: Path):
        return compare_runs(torch_runner(model, device), torch_runner(load_pt2(tmp, device), device), inputs)

    parity = write_verified(output, save, compare, tolerance or default_tolerance("fp32"),
                            what=f"{'AOTInductor' if aoti else 'torch.export'} vs PyTorch")
    return ExportResult(output, metadata, parity, output.stat().st_size, time.perf_counter() - start,
                        {"aoti": aoti, "device": device})
