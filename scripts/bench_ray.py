"""Images per second of `stdc infer` on a folder: the local runner against the Ray executor.

    python scripts/bench_ray.py [--model M.onnx] [--images 48] [--image-size 512x1024]
                                [--input-size 256x512] [--batch 2] [--workers 1] [--rounds 2]

Without --model a random-weight STDC1 ONNX (dynamic, verified at --input-size) is exported
to a temporary folder; the images are synthetic PNGs there too. Each round runs the local
runner, then the Ray executor, on the same folder (mask outputs, official protocol) and
checks that the masks are byte-identical. A local Ray instance with every CPU of this
machine is started once, and its start-up is reported apart from the runs. Figures:

* images/s end to end: ``report.fps`` (images / the runner's wall time; for Ray this
  includes starting the actors and opening the model in each, not starting Ray itself);
* the Ray overhead of a run: its wall time minus the local run's, in seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def random_onnx(folder: Path, size: tuple[int, int]) -> Path:
    from stdc_deploy.export import OnnxExportOptions, export_onnx
    from stdc_deploy.synthetic import random_model

    return export_onnx(random_model("stdc1", seed=0, aux_heads=False), folder / "stdc1-dynamic.onnx",
                       OnnxExportOptions(height=size[0], width=size[1], dynamic=True)).path


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--image-size", default="512x1024")
    parser.add_argument("--input-size", default="256x512", help="network input of the exported model")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import ray

    from stdc_deploy.jobs import InferOptions, run_infer
    from stdc_deploy.scaleout import ModelSpec
    from stdc_deploy.scaleout.ray import RayOptions, run_infer_ray
    from stdc_deploy.segmenter import Segmenter
    from stdc_deploy.sources import resolve_source
    from stdc_deploy.synthetic import synthetic_images

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = args.model or random_onnx(root, parse_size(args.input_size))
        folder = root / "images"
        folder.mkdir()
        for i, image in enumerate(synthetic_images(args.images, *parse_size(args.image_size), seed=1)):
            cv2.imwrite(str(folder / f"{i:05d}.png"), image)
        source = resolve_source(str(folder))
        cpus = os.cpu_count() or 1
        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
        ray_start_s = time.perf_counter() - start
        ray_options = RayOptions(workers=args.workers, cpus_per_worker=args.cpus_per_worker)
        print(f"{args.images} images {args.image_size}, model {model.name} at {args.input_size}, batch {args.batch}, "
              f"{cpus} CPUs; ray.init {ray_start_s:.1f} s; Ray: {args.workers} worker(s) x "
              f"{args.cpus_per_worker:g} CPU")
        results: dict[str, list[float]] = {"local": [], "ray": []}
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        try:
            for round_ in range(1, args.rounds + 1):
                out = {name: root / f"out-{name}-{round_}" for name in results}
                options = {name: InferOptions(out_dir=path, save=("mask",), batch=args.batch)
                           for name, path in out.items()}
                start = time.perf_counter()
                with Segmenter(model) as segmenter:  # opening the model counts, as it does in each Ray actor
                    local = run_infer(segmenter, source, options["local"])
                walls["local"].append(time.perf_counter() - start)
                start = time.perf_counter()
                remote = run_infer_ray(ModelSpec(model), source, options["ray"], ray_options)
                walls["ray"].append(time.perf_counter() - start)
                same = files(out["local"]) == files(out["ray"])
                results["local"].append(args.images / walls["local"][-1])
                results["ray"].append(args.images / walls["ray"][-1])
                print(f"round {round_}: local {results['local'][-1]:.2f} images/s ({walls['local'][-1]:.1f} s, "
                      f"runner {local.fps:.2f}), ray {results['ray'][-1]:.2f} images/s ({walls['ray'][-1]:.1f} s, "
                      f"runner {remote.fps:.2f}); Ray overhead {walls['ray'][-1] - walls['local'][-1]:+.1f} s; "
                      f"masks byte-identical: {same}; failures {len(local.failed)}/{len(remote.failed)}")
        finally:
            ray.shutdown()
        print(f"median over {args.rounds} rounds: local {statistics.median(results['local']):.2f} images/s, "
              f"ray {statistics.median(results['ray']):.2f} images/s "
              f"(wall time with model loading; ray.init {ray_start_s:.1f} s not included)")


if __name__ == "__main__":
    main()
