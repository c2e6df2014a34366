"""OpenVINO backend (CPU) for ONNX files; bf16 where the CPU supports it."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidValue, MissingDependencyError, StdcError
from ..optional import require
from .base import Backend
from .tail import load_without_final_resize


def _import_openvino():
    return require("openvino")


def cpu_supports_bf16() -> bool:
    try:
        ov = _import_openvino()
    except MissingDependencyError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# Measured on STDC1 512x1024, 2-core AVX-512 CPU, interleaved runs (README, "CPU"): the
# LATENCY hint (one stream, all threads on one request) is 1.8x faster per frame than
# THROUGHPUT (several streams) for one request at a time, BF16 and INT8 alike;
# ENABLE_CPU_PINNING changes nothing measurable (58.9 vs 60.6 ms BF16, 38.0 vs 38.1 ms INT8).
CPU_CONFIG = {"PERFORMANCE_HINT": "LATENCY"}


class OpenVinoBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "bf16")
    drops_final_resize = True

    def _open(self) -> None:
        ov = _import_openvino()
        if self.precision == "bf16" and not cpu_supports_bf16():
            raise InvalidValue("precision", "this CPU has no bf16 support in OpenVINO; use fp32")
        core = ov.Core()
        config = {**CPU_CONFIG, "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "INFERENCE_NUM_THREADS": self.cpu_threads()}
        cut = load_without_final_resize(self.artifact) if self.native_logits else None
        try:
            model = core.read_model(cut[0]) if cut is not None else str(self.artifact)
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise StdcError(f"OpenVINO cannot compile the model ({str(exc).splitlines()[0]})", self.artifact) from None
        self._request = self._compiled.create_infer_request()
        self.final_resize_dropped = cut is not None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: batch})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def _close(self) -> None:
        self._request = None
        self._compiled = None
