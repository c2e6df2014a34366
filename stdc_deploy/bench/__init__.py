"""Benchmarks: what a model costs per frame, measured so that anyone can rerun it.

| module | holds |
|---|---|
| timing | time_steps, LatencyStats, model_only_stats (the one meaning of "model-only") |
| environment | CPU/GPU/version probes, peak memory |
| targets | presets as random-weight artifacts, Target, default backend |
| run | BenchSettings, BenchRow, BenchReport, run_bench, the bare ONNX Runtime reference |
| report | JSON, CSV and plot writers |
| cpu_paths | every CPU path against a hand export, round-robin (``stdc bench --cpu-paths``) |
"""

from .run import MODES, SCHEMA, BenchReport, BenchRow, BenchSettings, bench_backend, model_only_fps, run_bench
from .targets import Target, preset_targets
from .timing import LatencyStats, model_only_stats, time_interleaved, time_steps

__all__ = ["MODES", "SCHEMA", "BenchReport", "BenchRow", "BenchSettings", "LatencyStats", "Target", "bench_backend",
           "model_only_fps", "model_only_stats", "preset_targets", "run_bench", "time_interleaved", "time_steps"]
