#!/usr/bin/env python
"""What post-processing costs from full-size logits and from the network's 1/8 logits.

For each frame: the logits of the whole network (at the input size) and of the network
without its final upsampling (what ``--precision auto`` runs), then the official labels at the
frame size from each (one thread, median of 5), their agreement, and the share of 1/8 cells
that hold a label boundary (where post-processing interpolates every pixel).

Usage::

    python scripts/post_cost.py --model models/stdc1.onnx --frames frames/ [--size 1024x2048]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stdc_deploy.backends import open_backend  # noqa: E402
from stdc_deploy.bench.timing import LatencyStats, time_steps  # noqa: E402
from stdc_deploy.postprocess import argmax_classes, labels_official  # noqa: E402
from stdc_deploy.preprocess import normalize  # noqa: E402


def median_ms(fn, runs: int = 5) -> float:
    return LatencyStats.from_seconds(time_steps(fn, warmup=1, iters=runs, seconds=None)).p50_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an ONNX export")
    ap.add_argument("--frames", required=True, type=Path, help="a folder of images")
    ap.add_argument("--size", default=None, help="frame size HxW (default: each image's own)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--max-frames", type=int, default=8)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    paths = sorted(p for p in args.frames.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    with open_backend(args.model, args.backend) as whole, open_backend(args.model, args.backend,
                                                                        native_logits=True) as cut:
        size_in = (whole.metadata.input_height or whole.metadata.opt_height,
                   whole.metadata.input_width or whole.metadata.opt_width)
        print(f"{'frame':<20} {'boundary cells':>14} {'from full ms':>12} {'from 1/8 ms':>11} {'agree %':>9}")
        for path in paths[:args.max_frames]:
            image = cv2.imread(str(path))
            if args.size:
                h, w = (int(v) for v in args.size.lower().split("x"))
                image = cv2.resize(image, (w, h))
            x = normalize([image], whole.metadata.mean, whole.metadata.std, size=size_in)
            full, low = whole.infer(x)[0], cut.infer(x)[0]
            size = image.shape[:2]
            a, b = labels_official(full, size), labels_official(low, size)
            labels = argmax_classes(low)
            corners = np.ones((2, 2), np.uint8)
            mixed = (cv2.dilate(labels, corners, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)
                     != cv2.erode(labels, corners, anchor=(0, 0), borderType=cv2.BORDER_REPLICATE)).mean()
            print(f"{path.name:<20} {mixed * 100:13.1f}% {median_ms(lambda: labels_official(full, size)):12.1f} "
                  f"{median_ms(lambda: labels_official(low, size)):11.1f} {(a == b).mean() * 100:9.3f}")


if __name__ == "__main__":
    main()
