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
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .._version import __version__
from ..checkpoint import CheckpointInfo
from ..errors import ExportError, StdcError
from ..models import STDCSeg
from ..preprocess import normalize
from ..synthetic import synthetic_images
from ..parity import Parity, Tolerance, compare_logits
from ..core.metadata import METADATA_FILE, ArtifactMetadata


@dataclass(frozen=True)
class Pt2ExportResult:
    path: Path
    metadata: ArtifactMetadata
    parity: tuple[Parity, ...]
    size_bytes: int
    export_seconds: float
    aoti: bool


def is_aoti_package(path: str | os.PathLike) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any("/data/aotinductor/" in n for n in archive.namelist())


def load_pt2(path: str | os.PathLike, device: str = "cpu"):
    """A callable module from either kind of ``.pt2``."""
    if is_aoti_package(path):
        from torch._inductor import aoti_load_package

        return aoti_load_package(str(path))
    return torch.export.load(str(path)).module().to(device)


def export_pt2(model: STDCSeg, output: str | os.PathLike, height: int = 512, width: int = 1024, *,
               aoti: bool = False, device: str = "cpu", checkpoint: CheckpointInfo | None = None,
               tolerance: Tolerance = Tolerance()) -> Pt2ExportResult:
    from torch.export import Dim

    output = Path(output)
    if not (32 <= height <= 8192 and 32 <= width <= 8192):
        raise StdcError(f"input size {height}x{width} out of range (32..8192 per side)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StdcError("--device cuda requested but PyTorch sees no CUDA GPU")
    model = model.eval().float().to(device)
    start = time.perf_counter()
    example = torch.zeros(2, 3, height, width, device=device)
    # DYNAMIC lets torch.export derive the relations the strided convolutions impose
    shapes = {"x": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}}
    metadata = ArtifactMetadata(
        arch=model.cfg.name, num_classes=model.num_classes, input_height=None, input_width=None, batch=None,
        dynamic=True, opt_height=height, opt_width=width, classifier_bias=model.conv_out.conv_out.bias is not None,
        source_format=checkpoint.source_format if checkpoint else "none",
        checkpoint_sha256=checkpoint.sha256 if checkpoint else None,
        versions={"stdc_deploy": __version__, "torch": torch.__version__.split("+")[0]})
    extra = {METADATA_FILE: json.dumps(metadata.to_props())}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as scratch:
        tmp = Path(scratch) / "artifact.pt2"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                program = torch.export.export(model, (example,), dynamic_shapes=shapes)
                if aoti:
                    from torch._inductor import aoti_compile_and_package

                    aoti_compile_and_package(program, package_path=str(tmp))
                    with zipfile.ZipFile(tmp, "a") as archive:
                        root = archive.namelist()[0].split("/")[0]
                        archive.writestr(f"{root}/extra/{METADATA_FILE}", extra[METADATA_FILE])
                else:
                    torch.export.save(program, str(tmp), extra_files=extra)
        except Exception as exc:  # export and inductor raise many types
            raise ExportError(f"torch.export failed: {type(exc).__name__}: {str(exc).splitlines()[0]}") from exc
        loaded = load_pt2(tmp, device)
        parity = []
        for i, (n, h, w) in enumerate([(2, height, width), (1, height // 2 + 7, width // 2 + 13)]):
            x = torch.from_numpy(normalize(synthetic_images(n, h, w, seed=i))).to(device)
            with torch.no_grad():
                parity.append(compare_logits(model(x).cpu().numpy(), loaded(x).cpu().numpy()))
        failed = [p for p in parity if not p.passes(tolerance)]
        if failed:
            raise ExportError(f"verification failed, {output} not written: {failed[0].describe()}")
        os.replace(tmp, output)
    return Pt2ExportResult(output, metadata, tuple(parity), output.stat().st_size, time.perf_counter() - start, aoti)
