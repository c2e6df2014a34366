"""Timing: run a step repeatedly, summarise latencies; the one definition of model-only speed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    iters: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        if not samples:
            raise ValueError("no timed samples")
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(len(ms), float(ms.mean()), float(p50), float(p90), float(p99), float(ms.min()), float(ms.max()))


def time_steps(step: Callable[[], object], warmup: int, iters: int | None, seconds: float | None,
               min_iters: int = 3) -> list[float]:
    """Run ``step`` ``warmup`` times untimed, then time it ``iters`` times or for ``seconds``."""
    for _ in range(warmup):
        step()
    samples: list[float] = []
    clock = time.perf_counter
    deadline = None if iters is not None else clock() + (seconds if seconds is not None else 3.0)
    while True:
        start = clock()
        step()
        samples.append(clock() - start)
        if iters is not None:
            if len(samples) >= iters:
                return samples
        elif len(samples) >= min_iters and clock() >= deadline:
            return samples


def time_interleaved(steps: dict[str, Callable[[], object]], warmup: int, iters: int | None,
                     seconds: float | None, min_iters: int = 3, settle_s: float = 0.02) -> dict[str, list[float]]:
    """Time several steps round-robin (one run of each per round), so that load from other
    processes and thermal drift hit every step alike. ``iters``: rounds; ``seconds``: per
    step, i.e. rounds until ``seconds * len(steps)`` have passed. Each run starts
    ``settle_s`` after the previous one ends, so that the previous runtime's idle threads
    (spinning for work, then sleeping) are not timed as the next one's."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    clock = time.perf_counter
    deadline = None if iters is not None else clock() + (seconds if seconds is not None else 3.0) * len(steps)
    rounds = 0
    while True:
        for name, step in steps.items():
            if settle_s:
                time.sleep(settle_s)
            start = clock()
            step()
            samples[name].append(clock() - start)
        rounds += 1
        if iters is not None:
            if rounds >= iters:
                return samples
        elif rounds >= min_iters and clock() >= deadline:
            return samples


def model_only_stats(backend, batch: np.ndarray, *, warmup: int = 3, iters: int | None = None,
                     seconds: float | None = 3.0, cuda_graph: bool = False) -> LatencyStats:
    """Model-only latency of an opened backend on one pre-processed ``batch``: the input is
    already where the runtime wants it, outputs stay there, and each step ends with the
    device synchronised (:meth:`Backend.model_only_runner`). ``stdc bench --mode model-only``
    and ``stdc infer --benchmark`` both time this."""
    step = backend.model_only_runner(batch, cuda_graph=cuda_graph)
    return LatencyStats.from_seconds(time_steps(step, warmup, iters, seconds))
