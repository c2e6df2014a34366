"""Per-model counters: requests, images, batches, and where the time went.

Queue time runs from a request's arrival to the start of its batch's pre-processing;
compute time is split as Triton splits it (input = decode + pre-process, infer, output =
post-process + encoding). Exposed as Triton's statistics extension and as Prometheus text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

PHASES = ("compute_input", "compute_infer", "compute_output")


class ModelStats:
    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self.success = self.inferences = self.executions = 0
        self.success_s = self.queue_s = 0.0
        self.failures: dict[int, int] = {}  # by HTTP status
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.batches: dict[int, list] = {}  # images per execution -> [count, infer seconds]
        self.last_inference_ms = 0

    def succeed(self, images: int, *, queue_s: float, total_s: float) -> None:
        with self._lock:
            self.success += 1
            self.inferences += images
            self.queue_s += queue_s
            self.success_s += total_s
            self.last_inference_ms = int(time.time() * 1000)

    def fail(self, status: int) -> None:
        with self._lock:
            self.failures[status] = self.failures.get(status, 0) + 1

    def phase(self, phase: str, seconds: float, images: int) -> None:
        with self._lock:
            self.phases[phase] += seconds
            if phase == "compute_infer" and images:
                self.executions += 1
                entry = self.batches.setdefault(images, [0, 0.0])
                entry[0] += 1
                entry[1] += seconds

    def triton(self, version: str) -> dict:
        def duration(count: int, seconds: float) -> dict:
            return {"count": count, "ns": int(seconds * 1e9)}

        with self._lock:
            return {
                "name": self.name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inferences, "execution_count": self.executions,
                "inference_stats": {
                    "success": duration(self.success, self.success_s),
                    "fail": duration(sum(self.failures.values()), 0.0),
                    "queue": duration(self.success, self.queue_s),
                    **{p: duration(self.executions, s) for p, s in self.phases.items()},
                },
                "batch_stats": [{"batch_size": size, "compute_infer": duration(count, seconds)}
                                for size, (count, seconds) in sorted(self.batches.items())],
            }


def prometheus(models: Iterable[ModelStats], *, queue_depth: int, in_flight: int) -> str:
    lines = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:.6g}" if isinstance(value, float) else f"{name}{labels} {value}"
                     for labels, value in samples)

    models = list(models)
    metric("stdc_request_success_total", "counter", "Requests answered.",
           [(f'{{model="{m.name}"}}', m.success) for m in models])
    metric("stdc_request_failure_total", "counter", "Requests refused or failed, by HTTP status.",
           [(f'{{model="{m.name}",status="{s}"}}', n) for m in models for s, n in sorted(m.failures.items())])
    metric("stdc_inference_count_total", "counter", "Images inferred.", [(f'{{model="{m.name}"}}', m.inferences) for m in models])
    metric("stdc_execution_count_total", "counter", "Batches run through the network.",
           [(f'{{model="{m.name}"}}', m.executions) for m in models])
    metric("stdc_request_duration_seconds_total", "counter", "Arrival to answer, summed over answered requests.",
           [(f'{{model="{m.name}"}}', m.success_s) for m in models])
    metric("stdc_queue_duration_seconds_total", "counter", "Arrival to the start of pre-processing, summed.",
           [(f'{{model="{m.name}"}}', m.queue_s) for m in models])
    for phase in PHASES:
        metric(f"stdc_{phase}_duration_seconds_total", "counter", f"Time in {phase.replace('_', ' ')}, summed over batches.",
               [(f'{{model="{m.name}"}}', m.phases[phase]) for m in models])
    metric("stdc_queue_size", "gauge", "Requests waiting for a batch.", [("", queue_depth)])
    metric("stdc_requests_in_flight", "gauge", "Requests accepted and not yet answered.", [("", in_flight)])
    return "\n".join(lines) + "\n"
