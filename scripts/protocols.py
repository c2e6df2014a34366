"""Cost and label difference of the two protocols, step by step, on one model and image.

    python scripts/protocols.py [--model M.onnx] [--image-size 1024x2048] [--runs 5]

Without --model a random-weight STDC1 512x1024 ONNX is exported to a temporary folder.
Prints milliseconds per step (median of --runs) for the official and fast protocols and
the fraction of pixels on which their label maps agree.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from stdc_deploy.postprocess import to_labels
from stdc_deploy.preprocess import normalize
from stdc_deploy.segmenter import Segmenter
from stdc_deploy.synthetic import synthetic_images


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def random_onnx(folder: Path) -> Path:
    from stdc_deploy.export import OnnxExportOptions, export_onnx
    from stdc_deploy.synthetic import random_model

    return export_onnx(random_model("stdc1", seed=0, aux_heads=False), folder / "stdc1-512x1024.onnx",
                       OnnxExportOptions(height=512, width=1024)).path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--image-size", default="1024x2048")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=3, help="synthetic images to measure agreement on")
    args = parser.parse_args()
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or random_onnx(Path(scratch))
        with Segmenter(model) as seg:
            meta, size = seg.metadata, seg.input_size
            images = synthetic_images(args.images, height, width, seed=5)
            image = images[0]
            print(f"{model.name}: network input {size[0]}x{size[1]}, image {height}x{width}, "
                  f"median of {args.runs} runs")
            logits = seg.infer(normalize(image, meta.mean, meta.std, size=size, protocol="official"))[0]
            rows = []
            for protocol in ("official", "fast"):
                pre = median_ms(lambda: normalize(image, meta.mean, meta.std, size=size, protocol=protocol), args.runs)
                post = median_ms(lambda: to_labels(logits, (height, width), protocol), args.runs)
                rows.append((protocol, pre, post))
            infer_ms = median_ms(lambda: seg.infer(normalize(image, meta.mean, meta.std, size=size)), args.runs)
            agreement = [float(np.mean(seg.predict(im, "official") == seg.predict(im, "fast"))) for im in images]
        print(f"{'protocol':<10}{'pre ms':>8}{'post ms':>9}")
        for protocol, pre, post in rows:
            print(f"{protocol:<10}{pre:>8.1f}{post:>9.1f}")
        print(f"inference (model only, same backend): {infer_ms:.1f} ms")
        print(f"fast vs official labels: {100 * np.mean(agreement):.2f}% of pixels agree "
              f"(per image: {', '.join(f'{100 * a:.2f}%' for a in agreement)})")


if __name__ == "__main__":
    main()
