"""PyTorch backend for checkpoints (eager), TorchScript and .pt2 (torch.export / AOTInductor): CPU, or CUDA
with FP16 and channels_last."""

from __future__ import annotations

import numpy as np
import torch

from ..checkpoint import load_model
from ..errors import InvalidValue, StdcError
from .base import Backend


class TorchBackend(Backend):
    name = "torch"
    devices = ("cpu", "cuda")
    precisions = ("fp32", "fp16", "bf16")

    def _open(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise StdcError("device cuda requested but PyTorch sees no CUDA GPU")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise InvalidValue("precision", "fp16 with PyTorch needs a CUDA device (use bf16 on the CPU)")
        if self.threads is not None:  # PyTorch's intra-op pool is per process: this sets it for all
            torch.set_num_threads(self.threads)
        if self.artifact.suffix.lower() == ".pt2":
            from ..export.pt2 import is_aoti_package, load_pt2

            if is_aoti_package(self.artifact):
                if self.precision != "fp32":
                    raise StdcError("an AOTInductor package runs at the precision it was compiled with; use fp32")
                self._dtype = torch.float32
                self._channels_last = False
                self._model = load_pt2(self.artifact, self.device)
                return
            model = load_pt2(self.artifact)
        elif self.artifact.suffix.lower() in (".ts", ".torchscript"):
            try:
                model = torch.jit.load(str(self.artifact), map_location="cpu")
            except RuntimeError as exc:
                raise StdcError(f"not a loadable TorchScript program ({str(exc).splitlines()[0]})",
                                self.artifact) from None
        else:
            model, _ = load_model(self.artifact)
        self._dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        model = model.to(self.device, dtype=self._dtype)
        self._channels_last = self.device.startswith("cuda")
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        self._model = model if self.artifact.suffix.lower() == ".pt2" else model.eval()  # exported: already eval

    @torch.inference_mode()
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device, dtype=self._dtype, non_blocking=True)
        if self._channels_last:
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
        if self._channels_last:
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
