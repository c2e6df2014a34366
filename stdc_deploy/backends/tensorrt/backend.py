"""TensorRT backend for `.engine`/`.plan` files (TensorRT 10/11 name-based I/O API).

PyTorch CUDA tensors are the I/O buffers (no pycuda); inference is `execute_async_v3` on a
torch CUDA stream; dynamic engines get `set_input_shape` per call. The engine's sidecar is
checked first: an engine built with another TensorRT version or GPU model is refused.
"""

from __future__ import annotations

import numpy as np

from .environment import import_tensorrt, this_gpu
from .sidecar import check_compatible, read_sidecar
from ...errors import StdcError
from ..base import Backend


class TensorRTBackend(Backend):
    name = "tensorrt"
    devices = ("cuda",)
    precisions = ("fp32",)  # the engine's own precision is fixed at build time (effective_precision says which)

    def _open(self) -> None:
        import torch

        trt = import_tensorrt()
        gpu, capability = this_gpu(self.device)
        check_compatible(read_sidecar(self.artifact), trt.__version__, gpu, capability, self.artifact)
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.artifact.read_bytes())
        if engine is None:
            raise StdcError("TensorRT cannot deserialize this engine", self.artifact)
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise StdcError(f"expected one input and one output, the engine has {inputs} / {outputs}", self.artifact)
        self._input, self._output = inputs[0], outputs[0]
        self._dynamic = any(d < 0 for d in engine.get_tensor_shape(self._input))
        self._stream = torch.cuda.Stream(device=self.device)

    def _bind(self, x):
        torch = self._torch
        if self._dynamic:
            self._context.set_input_shape(self._input, tuple(x.shape))
        shape = tuple(self._context.get_tensor_shape(self._output))
        out = torch.empty(shape, dtype=torch.float32, device=self.device)
        self._context.set_tensor_address(self._input, x.data_ptr())
        self._context.set_tensor_address(self._output, out.data_ptr())
        return out

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.cuda.stream(self._stream):
            x = torch.from_numpy(batch).to(self.device, non_blocking=True).contiguous()
            out = self._bind(x)
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise StdcError("TensorRT execution failed", self.artifact)
            result = out.cpu()  # waits for the stream
        return result.numpy()

    def model_only_runner(self, batch: np.ndarray, cuda_graph: bool = False):
        """Device buffers bound once; each step enqueues (or replays a captured CUDA graph)
        and synchronises the stream."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        self._bind(x)
        stream = self._stream
        self._context.execute_async_v3(stream.cuda_stream)  # warm-up enqueue before any capture
        stream.synchronize()
        if not cuda_graph:
            def step() -> None:
                self._context.execute_async_v3(stream.cuda_stream)
                stream.synchronize()
            return step
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self._context.execute_async_v3(stream.cuda_stream)

        def replay() -> None:
            graph.replay()
            stream.synchronize()
        return replay

    def _close(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
