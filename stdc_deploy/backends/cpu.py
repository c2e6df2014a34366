"""The CPU path: what this CPU offers, and the fastest precision and runtime for a model on it.

``--precision auto`` (:func:`choose_cpu_path`) takes the fastest path whose accuracy cost
is *known* to be within a limit. The rule, in order:

1. **INT8**, when the CPU has 8-bit dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX
   INT8) and an INT8 file is known to agree with the model: either the named model is an
   INT8 file, or an INT8 file beside the named FP32 ONNX was quantized from exactly this
   file (its ``int8_source_sha256`` metadata is the FP32 file's SHA-256). Its accuracy is
   known because ``stdc quantize`` measured it on held-out images and stored the label
   agreement in the file (``int8_label_agreement``); auto takes it only if that is at least
   ``min_agreement`` (:data:`AUTO_MIN_AGREEMENT`). Files made for OpenVINO (NNCF) come first,
   then ``--target cpu``, then ``tensorrt`` files (without OpenVINO: ``cpu`` files first).
   Each runs in the runtime that ran it fastest (STDC1 512x1024, four ``stdc bench
   --cpu-paths`` runs): NNCF files in OpenVINO (2.3-3.5x the hand export in ONNX Runtime
   with bf16 float layers, the fastest path measured), the others in ONNX Runtime (the
   ``cpu`` file 1.9-2.6x there, 1.5-2.3x in OpenVINO). In OpenVINO on a CPU with native
   bf16 the layers left in float compute in bf16 when the file records that
   configuration's agreement within the limit (``int8_bf16_label_agreement``). A named INT8
   file is used as named; its recorded agreement is printed.
2. **BF16 in OpenVINO**, when the CPU computes bf16 natively (``avx512_bf16`` or AMX BF16,
   and OpenVINO lists BF16 in ``OPTIMIZATION_CAPABILITIES``). Its cost is known from the
   format: bf16 keeps FP32's range and 8 of its 24 significand bits, and OpenVINO
   accumulates in FP32; ``stdc verify --precision bf16`` measures it for a given model.
   Without native bf16 OpenVINO would emulate it, slower than FP32, so it is not chosen.
3. **FP32**, in the default runtime for the artifact.

Every auto path on an ONNX file also leaves the network's final upsampling to
post-processing (:mod:`~stdc_deploy.backends.tail`): the labels are the same at the input
size, and at the frame size one bilinear resize replaces the official two.

On a GPU (``device`` cuda) auto is FP32: the rule is about CPUs. ``--precision fp32`` is
always one flag away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
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
        reduced = self.precision != "fp32" or "INT8" in self.label
        onnx = self.artifact.suffix.lower() == ".onnx"
        tail = "; 1/8 logits, resized once in post-processing" if onnx else ""
        if reduced or onnx:
            hint = " - `--precision fp32` for full precision" + (" and the official two-step resize" if onnx else "")
        else:
            hint = ""
        return f"CPU path: {self.label} ({self.artifact}; {self.reason}{tail}){hint}"


def int8_details(path: str | os.PathLike) -> dict:
    """The INT8 provenance ``stdc quantize`` stores in an ONNX file's metadata (``int8_*``
    keys; empty for other precisions). Reads no weights."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props if p.key.startswith("int8_")}


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _agreement(path: Path, key: str = "int8_label_agreement") -> float | None:
    try:
        return float(int8_details(path)[key])
    except (KeyError, ValueError):
        return None


def _int8_path(path: Path, openvino: bool, features: CpuFeatures, min_agreement: float, reason: str) -> CpuPath:
    """An INT8 file's path: NNCF files in OpenVINO (where installed), others in ONNX Runtime;
    in OpenVINO with the layers left in float computing in bf16 when the CPU has native bf16
    and that configuration's agreement is recorded within the limit (the NNCF file of STDC1
    512x1024 runs 1.7x faster this way than with them in f32: 40.9 vs 68.0 ms)."""
    if not (openvino and int8_details(path).get("int8_target") == "openvino"):
        return CpuPath(path, "onnxruntime", "fp32", "ONNX Runtime INT8", reason)
    if features.native_bf16:
        bf16 = _agreement(path, "int8_bf16_label_agreement")
        if bf16 is not None and bf16 >= min_agreement:
            return CpuPath(path, "openvino", "bf16", "OpenVINO INT8 + BF16",
                           f"{reason}; bf16 for the float layers, agreement {bf16:.2%}")
    return CpuPath(path, "openvino", "fp32", "OpenVINO INT8", reason)


def int8_siblings(fp32: Path) -> list[tuple[Path, dict]]:
    """INT8 ONNX files beside ``fp32`` quantized from exactly this file, with their INT8 metadata."""
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
    precision = read_metadata(path).precision
    if precision == "int8":
        agreement = _agreement(path)
        known = f"agreement {agreement:.2%} recorded" if agreement is not None else "no recorded agreement"
        return _int8_path(path, openvino, features, min_agreement, f"an INT8 file, {known}")
    if precision != "fp32":
        return CpuPath(path, None, "fp32", precision.upper(), f"a {precision} file runs as it is")
    passed = []  # INT8 files of this model whose recorded agreement is below the limit
    if features.int8_dot:
        candidates = []
        for sibling, details in int8_siblings(path):
            agreement = _agreement(sibling)
            if agreement is None or agreement < min_agreement:
                log.info("auto passes over %s: agreement %s < %s", sibling, agreement, min_agreement)
                passed.append(sibling.name)
                continue
            order = _TARGET_ORDER[openvino]
            rank = order.index(details.get("int8_target")) if details.get("int8_target") in order else len(order)
            candidates.append((rank, -agreement, sibling, agreement))
        if candidates:
            _, _, sibling, agreement = min(candidates)
            return _int8_path(sibling, openvino, features, min_agreement,
                              f"{features.int8_dot}; quantized from {path.name}, agreement {agreement:.2%} "
                              f">= {min_agreement:.0%}")
    below = f"; {', '.join(passed)} below the {min_agreement:.0%} agreement limit" if passed else ""
    if openvino and features.native_bf16:
        return CpuPath(path, "openvino", "bf16", "OpenVINO BF16", f"native bf16 ({features.native_bf16}){below}")
    why = ("no INT8 file quantized from it" + below) if features.int8_dot else "no VNNI for INT8"
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


__all__ = ["AUTO_MIN_AGREEMENT", "CpuFeatures", "CpuPath", "choose_cpu_path", "cpu_features", "file_sha256",
           "int8_details", "int8_siblings", "read_cpu_flags", "resolve_precision", "usable_cores"]
