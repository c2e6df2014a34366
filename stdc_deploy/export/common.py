"""What every exporter shares: the input-size limits, the output checks, the metadata, the
verification inputs, the result type, and the one step that verifies an artifact and only
then writes it.

:func:`write_verified` saves the artifact under a temporary name beside its final path,
runs it from there against the reference (PyTorch, or the FP32 model for ONNX-to-ONNX
steps) and renames it into place only if every comparison is within the tolerance; a
failure raises :class:`ExportError` and leaves nothing behind (an existing file stays).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..core.artifacts import KIND_NAMES, KINDS, read_onnx_metadata
from ..core.fileio import atomic_output, check_outputs
from ..core.metadata import IMAGENET_MEAN, IMAGENET_STD, MAX_SIDE, MIN_SIDE, ArtifactMetadata
from ..errors import ExportError, InvalidValue, StdcError
from ..parity import Parity, Tolerance, compare_logits

log = logging.getLogger(__name__)


Runner = Callable[[np.ndarray], np.ndarray]  # a normalised NCHW batch -> logits


@dataclass(frozen=True)
class ExportResult:
    """A written, verified artifact.

    ``parity`` holds one comparison per verification input (empty when verification was
    skipped); ``details`` the facts particular to a kind (``opset``, ``aoti``, calibration
    counts, the engine's ``sidecar``).
    """

    path: Path
    metadata: ArtifactMetadata
    parity: tuple[Parity, ...]
    size_bytes: int
    seconds: float
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def export_seconds(self) -> float:
        """Alias of ``seconds`` kept for existing callers."""
        return self.seconds


def check_input_size(height: int, width: int) -> None:
    """Refuse an input size outside ``MIN_SIDE..MAX_SIDE`` per side (parameter ``size``)."""
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise InvalidValue("size", f"{height}x{width} is out of range: each side must be within {MIN_SIDE}..{MAX_SIDE}")


def read_fp32_onnx_metadata(path: str | os.PathLike, purpose: str) -> ArtifactMetadata:
    """The metadata of an FP32 ONNX export; ``purpose`` ("quantize an FP32 export") is the
    error for any other precision. ONNX-to-ONNX steps start from FP32 only."""
    metadata = read_onnx_metadata(path)
    if metadata.precision != "fp32":
        raise StdcError(f"{purpose} (this one is {metadata.precision})", path)
    return metadata


def check_export_output(output: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
                        *, extra_outputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = True) -> Path:
    """Apply the output policy (:func:`~stdc_deploy.core.fileio.check_outputs`) to ``output``
    and ``extra_outputs``, then require the suffix of artifact ``kind`` (``onnx``,
    ``torchscript``, ``pt2``, ``engine``) on ``output``. Call it before any work."""
    output = Path(output)
    check_outputs([output, *extra_outputs], inputs, overwrite=overwrite)
    suffixes = tuple(s for s, k in KINDS.items() if k == kind)
    if output.suffix.lower() not in suffixes:
        raise InvalidValue("output", f"{KIND_NAMES[kind]} files need the suffix {' or '.join(suffixes)}", output)
    return output


def build_metadata(model, checkpoint=None, *, height: int, width: int, batch: int | None, dynamic: bool,
                   precision: str = "fp32", opset: int | None = None, class_names: Sequence[str] | None = None,
                   versions: Mapping[str, str] | None = None) -> ArtifactMetadata:
    """The metadata of an artifact exported from ``model`` (an ``STDCSeg``) and ``checkpoint``
    (its ``CheckpointInfo``, or None). A dynamic artifact records ``height``x``width`` as the
    size it was verified at; ``versions`` are added to those of stdc-deploy and PyTorch."""
    import torch

    return ArtifactMetadata(
        arch=model.cfg.name, variant=model.variant, num_classes=model.num_classes, class_names=tuple(class_names or ()),
        input_height=None if dynamic else height, input_width=None if dynamic else width,
        batch=None if dynamic else batch, dynamic=dynamic, opt_height=height, opt_width=width,
        precision=precision, classifier_bias=model.conv_out.conv_out.bias is not None,
        source_format=checkpoint.source_format if checkpoint else "none",
        checkpoint_sha256=checkpoint.sha256 if checkpoint else None, opset=opset,
        versions={"stdc_deploy": __version__, "torch": torch.__version__.split("+")[0], **(versions or {})})


def verification_inputs(height: int, width: int, *, batch: int = 1, dynamic: bool = False,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        seed: int = 0) -> list[np.ndarray]:
    """Seeded street-like inputs at the export size; a dynamic artifact is also checked at
    batch 2 and at a second, odd size."""
    from ..preprocess import normalize
    from ..synthetic import synthetic_images

    shapes = [(batch, height, width)]
    if dynamic:
        shapes = [(2, height, width), (1, max(MIN_SIDE, height // 2 + 7), max(MIN_SIDE, width // 2 + 13))]
    return [normalize(synthetic_images(n, h, w, seed=seed + i), mean, std) for i, (n, h, w) in enumerate(shapes)]


def torch_runner(module, device: str = "cpu") -> Runner:
    """Run a PyTorch callable (eager model, TorchScript, torch.export or AOTInductor module)."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x).to(device)).cpu().numpy()

    return run


def onnx_runner(model: str | os.PathLike | bytes, input_name: str = "input") -> Runner:
    """Run an ONNX model (file or bytes) in ONNX Runtime on the CPU."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own types for unsupported graphs
        raise ExportError(f"ONNX Runtime cannot load the exported model: {str(exc).splitlines()[0]}") from exc
    return lambda x: session.run(None, {input_name: x})[0]


def compare_runs(reference: Runner, test: Runner, inputs: Iterable[np.ndarray]) -> list[Parity]:
    """One :class:`Parity` per input: ``test`` against ``reference``."""
    return [compare_logits(reference(x), np.asarray(test(x))) for x in inputs]


def verify_without_final_resize(proto, reference: Runner, inputs: Iterable[np.ndarray],
                                tolerance: Tolerance | None, output: str | os.PathLike) -> list[Parity]:
    """Check the graph as ``--precision auto`` runs it: without its final upsampling
    (:mod:`~stdc_deploy.backends.tail`), the 1/8 logits resized back to the input size the
    way the network does it, against ``reference`` within ``tolerance``. ``proto``: the
    exported ONNX model. A graph that does not end in that upsampling is run whole by every
    backend: nothing to check."""
    from ..backends.tail import without_final_resize
    from ..postprocess import resize_logits

    cut = without_final_resize(proto)
    if cut is None:
        return []
    low = onnx_runner(cut.SerializeToString(), proto.graph.input[0].name)
    parity = compare_runs(reference, lambda x: resize_logits(np.asarray(low(x), np.float32), x.shape[2:]), inputs)
    failed = [p for p in parity if tolerance is not None and not p.passes(tolerance)]
    if failed:
        raise ExportError(f"verification failed, {output} not written: the graph without its final upsampling "
                          f"(what --precision auto runs) at {failed[0].describe()} "
                          f"(limits: {tolerance.describe(failed[0].reference_abs_max)})")
    return parity


def write_verified(output: str | os.PathLike, save: Callable[[Path], None],
                   compare: Callable[[Path], Sequence[Parity]] | None, tolerance: Tolerance | None,
                   *, what: str) -> tuple[Parity, ...]:
    """Write an artifact only once it has verified.

    ``save(tmp)`` writes the artifact to ``tmp`` (same file name, hidden folder beside
    ``output``); ``compare(tmp)`` runs it from there and returns its comparisons (None: no
    verification). If any is outside ``tolerance`` (None: measure only), raise
    :class:`ExportError` naming ``output``, the comparison ``what`` and the limits;
    otherwise move ``tmp`` to ``output``.
    """
    output = Path(output)
    with atomic_output(output) as tmp:
        save(tmp)
        parity = tuple(compare(tmp)) if compare is not None else ()
        for report in parity:
            log.info("%s at %s", what, report.describe())
        failed = [p for p in parity if tolerance is not None and not p.passes(tolerance)]
        if failed:
            limits = tolerance.describe(failed[0].reference_abs_max)
            raise ExportError(f"verification failed, {output} not written: {what} at {failed[0].describe()} "
                              f"(limits: {limits})")
    return parity


def onnx_opset(proto) -> int:
    """The opset of the default ONNX domain that ``proto`` imports."""
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ExportError("the exported model imports no default-domain opset")
    return versions[0]


def set_onnx_metadata(proto, metadata: ArtifactMetadata, extra: Mapping[str, str] | None = None) -> None:
    """Replace ``proto``'s ``metadata_props`` with ``metadata`` (and ``extra`` keys)."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**metadata.to_props(), **(extra or {})})
