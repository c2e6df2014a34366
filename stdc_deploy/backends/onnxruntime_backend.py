"""ONNX Runtime backend: CPU, or the CUDA execution provider with onnxruntime-gpu."""

from __future__ import annotations

import numpy as np

from ..errors import MissingDependencyError, StdcError
from ..optional import require
from .base import Backend
from .tail import load_without_final_resize


# Settings measured on STDC1 512x1024, 2-core AVX-512 CPU (interleaved runs with a pause
# between sessions; README, "CPU"): ORT_ENABLE_ALL (the default) is 1.5x faster than
# ORT_ENABLE_BASIC; turning the memory arena off is about 2x slower. Idle pool threads
# spinning (allow_spinning=1, ORT's default) or sleeping (0) depends on what else runs:
# alone, the two timed the same in blocks of 8 runs (103 vs 102 ms) and spinning was up to
# 1.2x faster in some interleaved runs; with another process busy on the cores, spinning
# was 1.2x slower (258 vs 212 ms). They sleep here: the robust choice, and pipeline threads
# (decode, pre/post-processing) and other runtimes in the process get the cores.
CPU_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    devices = ("cpu", "cuda")
    drops_final_resize = True

    def _providers(self, ort) -> list:
        if not self.device.startswith("cuda"):
            return ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingDependencyError(
                "device cuda needs the CUDA execution provider: pip install 'stdc-deploy[gpu]' "
                "(onnxruntime-gpu) in place of onnxruntime")
        return [("CUDAExecutionProvider", {"device_id": self._device_index()}), "CPUExecutionProvider"]

    def _device_index(self) -> int:
        return int(self.device.split(":")[1]) if ":" in self.device else 0

    def _open(self) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if not self.device.startswith("cuda"):
            options.intra_op_num_threads = self.cpu_threads()
        for key, value in CPU_SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        providers = self._providers(ort)
        cut = load_without_final_resize(self.artifact) if self.native_logits else None
        source, self._output = cut if cut is not None else (str(self.artifact), self.metadata.output_name)
        try:
            self._session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:
            raise StdcError(f"ONNX Runtime cannot load the model ({str(exc).splitlines()[0]})", self.artifact) from None
        self.final_resize_dropped = cut is not None
        self._input = self.metadata.input_name

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        out = self._session.run([self._output], {self._input: batch})[0]
        return out if out.dtype == np.float32 else out.astype(np.float32)  # FP16 files without their final cast

    def _close(self) -> None:
        self._session = None


class OnnxRuntimeTensorRTBackend(OnnxRuntimeBackend):
    """ONNX Runtime with its TensorRT execution provider (needs onnxruntime-gpu and TensorRT):
    TensorRT builds and caches engines itself, with the ONNX's own precision (FP16 / Q/DQ
    INT8 files as `stdc export` / `stdc quantize` write them). Engines are cached in
    ``engines/ort-trt-cache`` so only the first session builds."""

    name = "onnxruntime-trt"
    devices = ("cuda",)
    cache_dir = "engines/ort-trt-cache"

    def _providers(self, ort) -> list:
        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            raise MissingDependencyError(
                "the ONNX Runtime TensorRT execution provider is not available: install onnxruntime-gpu and "
                "TensorRT (pip install --extra-index-url https://pypi.nvidia.com tensorrt)")
        index = self._device_index()
        trt_options = {"device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": self.cache_dir,
                       "trt_timing_cache_enable": True, "trt_timing_cache_path": self.cache_dir}
        return [("TensorrtExecutionProvider", trt_options), ("CUDAExecutionProvider", {"device_id": index}),
                "CPUExecutionProvider"]
