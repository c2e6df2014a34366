"""Export a checkpoint to verified ONNX and segment an image, using the Python API.

    python examples/python_api.py CHECKPOINT IMAGE [--size 512x1024] [--out-dir models]

Writes OUT_DIR/<checkpoint>.onnx and OUT_DIR/<image>_overlay.png. Everything the `stdc`
command does is available like this.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from stdc_deploy import Segmenter, StdcError, load_model
from stdc_deploy.export import OnnxExportOptions, export_onnx


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("--size", default="512x1024")
    parser.add_argument("--out-dir", type=Path, default=Path("models"))
    args = parser.parse_args()
    height, width = map(int, args.size.lower().split("x"))

    try:
        model, info = load_model(args.checkpoint)  # architecture and classes come from the file
        result = export_onnx(model, args.out_dir / f"{args.checkpoint.stem}.onnx",
                             OnnxExportOptions(height=height, width=width), checkpoint=info)
    except StdcError as exc:
        print(f"error: {exc}")
        return 1
    print(f"{result.path}: {result.parity[0].describe()}")

    image = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
    if image is None:
        print(f"error: {args.image}: not a readable image")
        return 1
    # mean/std, input size and classes travel with the model; the fastest installed runtime runs it
    with Segmenter(result.path) as segmenter:
        labels = segmenter.predict(image)  # HxW uint8 train ids at the image's size (official protocol)
        out = args.out_dir / f"{args.image.stem}_overlay.png"
        cv2.imwrite(str(out), segmenter.overlay(image, labels))
    names = [segmenter.class_names[c] for c in sorted(set(labels.flatten().tolist()))]
    print(f"{out}: {len(names)} classes present ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
