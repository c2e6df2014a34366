"""The one contract every inference backend implements.

A backend is opened on an artifact, takes a normalised float32 NCHW batch and returns
float32 NCHW logits. Used as a context manager::

    with open_backend("model.onnx") as backend:
        logits = backend.infer(batch)

``infer`` takes any batch size: a model exported with a fixed batch N is fed in chunks of
N (the last one padded by repeating its final image), so every caller can hand it any batch.

Everything downstream (pipelines, benchmarks, evaluation, comparisons) knows only this
contract, never a runtime.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import InvalidValue, StdcError
from ..core.metadata import ArtifactMetadata

PRECISIONS = ("fp32", "fp16", "bf16")
MAX_THREADS = 1024


@dataclass(frozen=True)
class InputSpec:
    """What ``infer`` accepts; None marks a dynamic dimension."""

    name: str
    batch: int | None
    height: int | None
    width: int | None

    def check(self, batch: np.ndarray, *, any_batch: bool = False) -> None:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise StdcError(f"expected a (N, 3, H, W) batch, got shape {tuple(batch.shape)}")
        axes = ((2, self.height, "height"), (3, self.width, "width"))
        if not any_batch:
            axes = ((0, self.batch, "batch"), *axes)
        for axis, want, what in axes:
            if want is not None and batch.shape[axis] != want:
                raise StdcError(f"this model takes {what} {want}, got {batch.shape[axis]} "
                                "(export a dynamic model for other sizes)")


class Backend(abc.ABC):
    """Base class: subclasses set ``name`` and implement ``_open``, ``_infer``, ``_close``."""

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    cpu_path = None  # what `precision="auto"` chose (a backends.cpu.CpuPath), else None
    drops_final_resize: ClassVar[bool] = False  # the backend can run the graph up to its final upsampling

    def __init__(self, artifact: str | Path, metadata: ArtifactMetadata, *, device: str = "cpu",
                 precision: str = "fp32", threads: int | None = None, native_logits: bool = False):
        if threads is not None and not 1 <= threads <= MAX_THREADS:
            raise InvalidValue("threads", f"must be within 1..{MAX_THREADS}, got {threads}")
        if device.split(":")[0] not in self.devices:
            raise StdcError(f"backend {self.name} runs on {', '.join(self.devices)}, not {device}")
        if precision not in self.precisions:
            raise StdcError(f"backend {self.name} offers precision {', '.join(self.precisions)}, not {precision}")
        self.artifact = Path(artifact)
        self.metadata = metadata
        self.device = device
        self.precision = precision
        self.threads = threads  # CPU threads for the runtime; None: every core this process may use
        # native_logits: the caller resizes logits itself (post-processing to labels), so a
        # backend that can may return the network's 1/8-resolution logits and skip the final
        # upsampling (backends.tail); final_resize_dropped says whether it did.
        self.native_logits = native_logits and self.drops_final_resize
        self.final_resize_dropped = False
        self.is_open = False

    @property
    def input_spec(self) -> InputSpec:
        m = self.metadata
        return InputSpec(m.input_name, m.batch, m.input_height, m.input_width)

    def open(self) -> Backend:
        if not self.is_open:
            self._open()
            self.is_open = True
        return self

    def close(self) -> None:
        if self.is_open:
            self._close()
            self.is_open = False

    def __enter__(self) -> Backend:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 normalised RGB -> (N, classes, H, W) float32 logits, or the
        network's (N, classes, h, w) 1/8-resolution logits where ``final_resize_dropped``."""
        if not self.is_open:
            raise RuntimeError(f"{self.name} backend used before open()")
        spec = self.input_spec
        spec.check(batch, any_batch=True)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        fixed, n = spec.batch, batch.shape[0]
        if fixed is None or fixed == n:
            return self._infer(batch)
        outputs = []
        for start in range(0, n, fixed):
            part = batch[start:start + fixed]
            if part.shape[0] < fixed:
                part = np.concatenate([part, np.repeat(part[-1:], fixed - part.shape[0], axis=0)])
            outputs.append(self._infer(part))
        return np.concatenate(outputs)[:n]

    def model_only_runner(self, batch: np.ndarray, cuda_graph: bool = False) -> Callable[[], None]:
        """One model-only step for benchmarks: input already where the runtime wants it,
        outputs left there, device work finished when it returns. CPU runtimes read and
        write host memory, so this is ``infer`` without the checks."""
        if cuda_graph:
            raise StdcError(f"CUDA graphs are offered by the torch backend on CUDA, not {self.name} on {self.device}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        self.input_spec.check(batch)
        return lambda: self._infer(batch)

    @property
    def effective_precision(self) -> str:
        """What the model computes in: a reduced-precision runtime setting, else the
        artifact's own precision (an FP16 ONNX file runs FP16 with precision "fp32")."""
        if self.metadata.precision == "int8" and self.precision != "fp32":
            return f"int8+{self.precision}"  # INT8 layers, the others at the runtime's precision
        return self.precision if self.precision != "fp32" else self.metadata.precision

    def cpu_threads(self) -> int:
        """The CPU threads the runtime gets: ``threads``, else every usable core."""
        from .cpu import usable_cores

        return self.threads or usable_cores()

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads is not None and self.device == "cpu" else ""
        tail = ", 1/8 logits resized once in post-processing" if self.final_resize_dropped else ""
        return f"{self.name} ({self.device}, {self.effective_precision}{threads}{tail}) on {self.artifact.name}"

    @abc.abstractmethod
    def _open(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    def _close(self) -> None:  # most runtimes free themselves when dropped
        pass
