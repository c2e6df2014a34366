"""The CPU path: what this CPU offers, and the fastest precision and runtime for a model on it.

``--precision auto`` (:func:`choose_cpu_path`) takes the fastest path whose accuracy cost
is *known* to be within a limit. The rule, in order:

1. **INT8**, when the CPU has 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX
   INT8) and an INT8 file is known to agree with the model: either the named model is an
   INT8 file, or an INT8 file beside the named FP32 ONNX was quantized from exactly this
   file (its ``int8_source_sha256`` metadata is the FP32 file's SHA-256). Its accuracy is
   known because ``stdc quantize`` measured it on held-out images and stored the label
   agreement in the file (``int8_label_agreement``); auto takes it only if that is at least
   ``min_agreement`` (:data:`AUTO_MIN_AGREEMENT`). Run in OpenVINO where installed (it runs
   Q/DQ files fastest: NNCF-made files about 2x, ONNX Runtime-made ones about 1.3x faster
   than ONNX Runtime does, STDC1 512x1024), else ONNX Runtime. A named INT8 file is used as
   named; its recorded agreement is printed.
2. **BF16 in OpenVINO**, when the CPU computes bf16 natively (``avx512_bf16`` or AMX BF16,
   and OpenVINO lists BF16 in ``OPTIMIZATION_CAPABILITIES``). Its cost is known from the
   format: bf16 keeps FP32's range and 8 of its 24 significand bits, and OpenVINO
   accumulates in FP32; ``stdc verify --precision bf16`` measures it for a given model.
   Without native bf16 OpenVINO would emulate it, slower than FP32, so it is not chosen.
3. **FP32**, in the default runtime for the artifact.

On a GPU (``device`` cuda) auto is FP32: the rule is about CPUs. ``--precision fp32`` is
always one flag away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.artifacts import artifact_kind, check_artifact_file, read_metadata
from ..optional import is_available
from ..parity import FP16_TOLERANCE

log = logging.getLogger(__name__)

# the smallest recorded INT8 label agreement auto accepts: the limit `stdc verify` and the
# exporters hold every reduced-precision artifact to (FP16 / BF16 against FP32)
AUTO_MIN_AGREEMENT = FP16_TOLERANCE.min_label_agreement
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# preference among INT8 files quantized from the same model (OpenVINO installed / not)
_TARGET_ORDER = {True: ("openvino", "cpu", "tensorrt"), False: ("cpu", "openvino", "tensorrt")}


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction-set flags that decide the CPU path, and OpenVINO's view of the CPU."""

    flags: frozenset[str]
    openvino_capabilities: tuple[str, ...] = ()  # empty when OpenVINO is not installed
    cores: int = 1

    @property
    def int8_dot(self) -> str | None:
        """The 8-bit dot-product instructions, by name (None: none)."""
        names = {"amx_int8": "AMX", "avx512_vnni": "VNNI", "avx_vnni": "AVX-VNNI"}
        return next((names[f] for f in INT8_FLAGS if f in self.flags), None)

    @property
    def native_bf16(self) -> str | None:
        names = {"amx_bf16": "AMX", "avx512_bf16": "avx512_bf16"}
        flag = next((names[f] for f in BF16_FLAGS if f in self.flags), None)
        if flag and self.openvino_capabilities and "BF16" not in self.openvino_capabilities:
            return None
        return flag

    def describe(self) -> str:
        found = [x for x in (self.int8_dot, self.native_bf16) if x]
        return f"{self.cores} cores" + (f", {', '.join(dict.fromkeys(found))}" if found else ", no VNNI/bf16")


def read_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The ``flags`` of the first processor in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container)."""
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    flags: frozenset[str] = frozenset()
    with contextlib.suppress(OSError):
        flags = read_cpu_flags(Path("/proc/cpuinfo").read_text())
    capabilities: tuple[str, ...] = ()
    if is_available("openvino"):
        with contextlib.suppress(Exception):  # a broken OpenVINO install: decide from the flags
            import openvino as ov

            capabilities = tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return CpuFeatures(flags, capabilities, usable_cores())


@dataclass(frozen=True)
class CpuPath:
    """What ``--precision auto`` chose: run ``artifact`` in ``backend`` at ``precision``."""

    artifact: Path
    backend: str | None  # None: the default backend for the artifact
    precision: str
    label: str  # e.g. "OpenVINO INT8"
    reason: str

    def describe(self) -> str:
        return f"CPU path: {self.label} ({self.artifact}; {self.reason}) - `--precision fp32` for full precision"


def _agreement(path: Path) -> float | None:
    from ..export.quantize import int8_details

    try:
        return float(int8_details(path)["int8_label_agreement"])
    except (KeyError, ValueError):
        return None


def int8_siblings(fp32: Path) -> list[tuple[Path, dict]]:
    """INT8 ONNX files beside ``fp32`` quantized from exactly this file, with their INT8 metadata."""
    from ..export.quantize import file_sha256, int8_details

    found, digest = [], None
    for path in sorted(fp32.parent.glob("*.onnx")):
        if path == fp32:
            continue
        try:
            details = int8_details(path)
        except Exception:  # unreadable neighbours are not this rule's business
            continue
        if "int8_source_sha256" not in details:
            continue
        digest = digest or file_sha256(fp32)
        if details["int8_source_sha256"] == digest:
            found.append((path, details))
    return found


def choose_cpu_path(artifact: str | Path, *, device: str | None = None, min_agreement: float = AUTO_MIN_AGREEMENT,
                    features: CpuFeatures | None = None) -> CpuPath:
    """The fastest path for ``artifact`` whose accuracy cost is known to be within
    ``min_agreement`` (the rule is the module docstring)."""
    from . import default_device, is_installed

    path = check_artifact_file(artifact)
    kind = artifact_kind(path)
    device = device or default_device(kind)
    if not device.startswith("cpu"):
        return CpuPath(path, None, "fp32", "FP32", f"auto chooses among CPU paths; {device} runs FP32")
    if kind != "onnx":
        return CpuPath(path, None, "fp32", "FP32", "auto chooses among ONNX paths; this artifact runs FP32")
    features = features or cpu_features()
    openvino = is_installed("openvino")
    runtime, runtime_name = ("openvino", "OpenVINO") if openvino else ("onnxruntime", "ONNX Runtime")
    precision = read_metadata(path).precision
    if precision == "int8":
        agreement = _agreement(path)
        known = f"agreement {agreement:.2%} recorded" if agreement is not None else "no recorded agreement"
        return CpuPath(path, runtime, "fp32", f"{runtime_name} INT8", f"an INT8 file, {known}")
    if precision != "fp32":
        return CpuPath(path, None, "fp32", precision.upper(), f"a {precision} file runs as it is")
    if features.int8_dot:
        candidates = []
        for sibling, details in int8_siblings(path):
            agreement = _agreement(sibling)
            if agreement is None or agreement < min_agreement:
                log.info("auto passes over %s: agreement %s < %s", sibling, agreement, min_agreement)
                continue
            order = _TARGET_ORDER[openvino]
            rank = order.index(details.get("int8_target")) if details.get("int8_target") in order else len(order)
            candidates.append((rank, -agreement, sibling, agreement))
        if candidates:
            _, _, sibling, agreement = min(candidates)
            return CpuPath(sibling, runtime, "fp32", f"{runtime_name} INT8",
                           f"{features.int8_dot}; quantized from {path.name}, agreement {agreement:.2%} "
                           f">= {min_agreement:.0%}")
    if openvino and features.native_bf16:
        return CpuPath(path, "openvino", "bf16", "OpenVINO BF16", f"native bf16 ({features.native_bf16})")
    why = "no INT8 file quantized from it" if features.int8_dot else "no VNNI for INT8"
    if not features.native_bf16:
        why += ", no native bf16"
    elif not openvino:
        why += ", bf16 needs OpenVINO (pip install 'stdc-deploy[openvino]')"
    return CpuPath(path, None, "fp32", "FP32", why)


def resolve_precision(artifact: str | Path, precision: str, device: str | None = None,
                      backend: str | None = None) -> tuple[Path, str | None, str, CpuPath | None]:
    """(artifact, backend, precision) to open for a requested ``precision``; ``"auto"``
    resolves through :func:`choose_cpu_path` (and returns its choice), other precisions
    pass through. A named ``backend`` is kept: auto then only picks the precision it offers."""
    if precision != "auto":
        return Path(artifact), backend, precision, None
    choice = choose_cpu_path(artifact, device=device)
    if backend is not None and choice.backend not in (None, backend):
        from . import BACKENDS_FOR_KIND, backend_class

        if choice.precision in backend_class(backend).precisions and backend in BACKENDS_FOR_KIND["onnx"]:
            label = choice.label.split()[-1]  # an INT8 file runs in any ONNX backend
            choice = dataclasses.replace(choice, backend=backend, label=f"{backend} {label}")
        else:
            choice = CpuPath(Path(artifact), backend, "fp32", "FP32", f"backend {backend} was named")
    return choice.artifact, choice.backend or backend, choice.precision, choice


__all__ = ["AUTO_MIN_AGREEMENT", "CpuFeatures", "CpuPath", "choose_cpu_path", "cpu_features", "int8_siblings",
           "read_cpu_flags", "resolve_precision", "usable_cores"]
