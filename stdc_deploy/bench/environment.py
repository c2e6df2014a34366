"""What a benchmark ran on: CPU, GPU, package versions, peak memory."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
from collections.abc import Iterator, Sequence
from pathlib import Path

from .._version import __version__


def _reset_peak_rss() -> bool:
    """Linux: restart the process's peak-RSS counter (VmHWM) so each row gets its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024 if platform.system() != "Darwin" else usage / 2**20


@contextlib.contextmanager
def _gpu_peak(device: str) -> Iterator[dict]:
    out: dict = {"gpu_peak_mb": None}
    if not device.startswith("cuda"):
        yield out
        return
    import torch

    torch.cuda.reset_peak_memory_stats(device)
    yield out
    out["gpu_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(devices: Sequence[str] = ("cpu",)) -> dict:
    import importlib.metadata as md

    import torch

    versions = {"stdc_deploy": __version__, "python": platform.python_version()}
    for package in ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "numpy", "opencv-python-headless"):
        with contextlib.suppress(md.PackageNotFoundError):
            versions[package] = md.version(package)
    env = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "platform": platform.platform(), "versions": versions, "gpu": None}
    if any(d.startswith("cuda") for d in devices) and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {"name": props.name, "compute_capability": f"{props.major}.{props.minor}",
                      "memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return env
