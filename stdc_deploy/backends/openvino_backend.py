"""OpenVINO backend (CPU) for ONNX files; bf16 where the CPU supports it."""

from __future__ import annotations

import numpy as np

from ..errors import InvalidValue, MissingDependencyError, StdcError
from ..optional import require
from .base import Backend


def _import_openvino():
    return require("openvino")


def cpu_supports_bf16() -> bool:
    try:
        ov = _import_openvino()
    except MissingDependencyError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "bf16")

    def _open(self) -> None:
        ov = _import_openvino()
        if self.precision == "bf16" and not cpu_supports_bf16():
            raise InvalidValue("precision", "this CPU has no bf16 support in OpenVINO; use fp32")
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        try:
            self._compiled = core.compile_model(str(self.artifact), "CPU", config)
        except Exception as exc:
            raise StdcError(f"OpenVINO cannot compile the model ({str(exc).splitlines()[0]})", self.artifact) from None
        self._request = self._compiled.create_infer_request()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({0: batch})
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    def _close(self) -> None:
        self._request = None
        self._compiled = None
