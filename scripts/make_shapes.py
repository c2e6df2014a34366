#!/usr/bin/env python
"""Write the procedural shapes data set (3 classes: background, disc, block) in the generic
layout `stdc train` and `stdc eval` read: ROOT/images/{train,val}/NNNN.png and
ROOT/masks/{train,val}/NNNN.png. Train and val images come from different seeds.

Usage::

    python scripts/make_shapes.py data/shapes --train 64 --val 32 --size 128x128
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stdc_deploy.train.shapes import CLASS_NAMES, write_shapes_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--train", type=int, default=64, help="training images")
    ap.add_argument("--val", type=int, default=32, help="validation images")
    ap.add_argument("--size", default="128x128", help="HEIGHTxWIDTH")
    ap.add_argument("--seed", type=int, default=0, help="seed of the training images (val: seed + 1)")
    args = ap.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))
    for split, count, seed in (("train", args.train, args.seed), ("val", args.val, args.seed + 1)):
        images, masks = write_shapes_dataset(args.root, count, height, width, seed=seed, split=split)
        print(f"{split}: {count} images in {images}, masks in {masks}")
    print(f"classes: {', '.join(f'{i} {n}' for i, n in enumerate(CLASS_NAMES))}")


if __name__ == "__main__":
    main()
