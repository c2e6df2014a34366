"""PyTorch backend for checkpoints (eager) and TorchScript: CPU, or CUDA with FP16 and channels_last."""

from __future__ import annotations

import numpy as np
import torch

from ..checkpoint import load_model
from ..errors import StdcError
from .base import Backend


class TorchBackend(Backend):
    name = "torch"
    devices = ("cpu", "cuda")
    precisions = ("fp32", "fp16", "bf16")

    def _open(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise StdcError("device cuda requested but PyTorch sees no CUDA GPU")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise StdcError("fp16 with PyTorch needs --device cuda (use bf16 on the CPU)")
        if self.artifact.suffix.lower() in (".ts", ".torchscript"):
            try:
                model = torch.jit.load(str(self.artifact), map_location="cpu")
            except RuntimeError as exc:
                raise StdcError(f"not a loadable TorchScript program ({str(exc).splitlines()[0]})",
                                self.artifact) from None
        else:
            model, _ = load_model(self.artifact)
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        model = model.to(self.device, dtype=self._dtype)
        if self.device.startswith("cuda"):
            model = model.to(memory_format=torch.channels_last)
        self._model = model.eval()

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, dtype=self._dtype, non_blocking=True)
        if self.device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        return self._model(x).float().cpu().numpy()

    def _close(self) -> None:
        self._model = None

    def model_only_runner(self, batch: np.ndarray, cuda_graph: bool = False):
        """Input copied to the device once; each step runs the model and synchronises.

        ``cuda_graph`` captures one forward pass in a CUDA graph (fixed shapes) and replays it.
        """
        if not self.device.startswith("cuda"):
            return super().model_only_runner(batch, cuda_graph)
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, dtype=self._dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        model = self._model
        if not cuda_graph:
            def step() -> None:
                with torch.inference_mode():
                    model(x)
                torch.cuda.synchronize(self.device)
            return step
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm up on a side stream before capture, as the CUDA graphs docs require
                model(x)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            model(x)

        def replay() -> None:
            graph.replay()
            torch.cuda.synchronize(self.device)
        return replay
