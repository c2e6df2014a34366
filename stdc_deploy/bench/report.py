"""Benchmark reports as JSON, CSV and a bar chart."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..core.fileio import atomic_output, atomic_write_bytes
from ..optional import require
from .run import BenchReport


def write_json(report: BenchReport, path: Path) -> None:
    atomic_write_bytes(path, (json.dumps(report.to_json(), indent=2) + "\n").encode())


CSV_COLUMNS = ("model", "arch", "height", "width", "batch", "backend", "device", "precision", "mode", "cuda_graph",
               "iters", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "fps", "peak_rss_mb",
               "gpu_peak_mb", "paper_fps", "path", "vs_reference", "label_agreement")


def write_csv(report: BenchReport, path: Path) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in report.rows:
        flat = {k: v for k, v in row.to_dict().items() if k != "latency"}
        flat.update(asdict(row.latency))
        writer.writerow({k: ("" if flat.get(k) is None else flat[k]) for k in CSV_COLUMNS})
    atomic_write_bytes(path, buffer.getvalue().encode())


def write_plot(report: BenchReport, path: Path) -> None:
    """Bar chart of FPS per model and backend (needs matplotlib)."""
    matplotlib = require("matplotlib", "a bench plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in report.rows))
    series = list(dict.fromkeys(f"{r.backend} {r.precision} {r.mode}" for r in report.rows))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(models)), 4))
    for i, label in enumerate(series):
        values = [next((r.fps for r in report.rows if r.model == m and f"{r.backend} {r.precision} {r.mode}" == label),
                       0.0) for m in models]
        ax.bar([j + i * width for j in range(len(models))], values, width, label=label)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(models))], models)
    ax.set_ylabel("frames per second")
    ax.set_title(f"stdc bench: {report.environment.get('cpu', '')}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
