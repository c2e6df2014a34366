#!/usr/bin/env python
"""The accuracy cost of every deployment precision on a trained model, measured with
`stdc eval --max-drop` (the README's precision table comes from this script).

From one checkpoint: the FP32 and FP16 ONNX exports, INT8 Q/DQ models for both `stdc
quantize` targets and every calibration method (calibrated on ``--calib``, never on the
evaluation images), then one `stdc eval` of all ONNX files in ONNX Runtime against the FP32
export with ``--max-drop``, and OpenVINO runs (BF16 on the FP32 file where the CPU has it,
INT8 on the `cpu` target's minmax file and on the NNCF file, with its float layers in f32
and in bf16) and `--precision auto` on the FP32 file (what the default CPU path picks; it
also leaves the network's final upsampling to post-processing). Then FP32 and auto again on
the evaluation set enlarged ``--frame-scale`` times (images bilinear, masks nearest), where
auto's single resize from 1/8 to the frame replaces the official two (1/8 -> input -> frame).
Prints one table: artifact, runtime, mIoU, drop.

Usage::

    python scripts/precision_accuracy.py --checkpoint runs/shapes_best.pth \\
        --images data/shapes/images/val --masks data/shapes/masks/val --num-classes 3 \\
        --calib data/shapes/images/train --size 128x128

``--reuse --workdir DIR`` evaluates the files an earlier run left in DIR (no checkpoint needed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TARGETS = ("cpu", "tensorrt")
METHODS = ("minmax", "entropy", "percentile")


def stdc(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "stdc_deploy", *args], capture_output=True, text=True)
    if result.returncode not in (0, 1):
        sys.exit(f"stdc {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def evaluate(models: list[Path], data: list[str], out: Path, *extra: str) -> tuple[list[dict], str]:
    args = ["eval", *(a for m in models for a in ("-m", str(m))), *data, "--json", str(out), "--overwrite", *extra]
    result = stdc(*args)
    if not out.is_file():
        sys.exit(f"stdc eval wrote no scores:\n{result.stderr}")
    return json.loads(out.read_text())["models"], result.stdout + result.stderr


def enlarge(images: Path, masks: Path, out: Path, scale: float) -> tuple[Path, Path]:
    """The evaluation set at ``scale`` times its size: images bilinear, masks nearest."""
    import cv2

    for folder, src, interpolation in (("images", images, cv2.INTER_LINEAR), ("masks", masks, cv2.INTER_NEAREST)):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted(src.iterdir()):
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                continue
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            cv2.imwrite(str(out / folder / path.name), cv2.resize(image, size, interpolation=interpolation))
    return out / "images", out / "masks"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="the trained checkpoint (not needed with --reuse)")
    ap.add_argument("--images", required=True, help="evaluation images (generic layout)")
    ap.add_argument("--masks", required=True)
    ap.add_argument("--num-classes", required=True)
    ap.add_argument("--calib", required=True, help="calibration images (e.g. the training images)")
    ap.add_argument("--size", default="128x128", help="export size HxW")
    ap.add_argument("--max-drop", default="0.5", help="the gate, in mIoU points")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--reuse", action="store_true", help="keep the ONNX files already in --workdir")
    ap.add_argument("--frame-scale", type=float, default=2.0, help="enlarged frames for the resize check (0: skip)")
    args = ap.parse_args()
    if not args.reuse and not args.checkpoint:
        ap.error("--checkpoint is required (or --reuse --workdir DIR)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stdc-precision-"))
    work.mkdir(parents=True, exist_ok=True)
    data = ["--images", args.images, "--masks", args.masks, "--num-classes", args.num_classes]

    fp32, fp16 = work / "fp32.onnx", work / "fp16.onnx"

    def make(path: Path, *args: str) -> subprocess.CompletedProcess | None:
        return None if reuse and path.is_file() else stdc(*args, "-o", str(path), "--overwrite")

    reuse = args.reuse
    make(fp32, "export", "onnx", str(args.checkpoint), "--size", args.size)
    make(fp16, "export", "onnx", str(args.checkpoint), "--size", args.size, "--precision", "fp16")
    int8 = {}
    for target in TARGETS:
        for method in METHODS:
            path = work / f"int8-{target}-{method}.onnx"
            make(path, "quantize", str(fp32), "--calib", args.calib, "--target", target, "--method", method)
            int8[(target, method)] = path
    nncf = work / "int8-openvino-nncf.onnx"
    made = make(nncf, "quantize", str(fp32), "--calib", args.calib, "--target", "openvino")
    if made is not None and made.returncode:
        print(f"NNCF: not run ({made.stderr.strip().splitlines()[-1]})")
    onnx_models = [fp32, fp16, *int8.values()]
    scores, output = evaluate(onnx_models, data, work / "eval.json", "--max-drop", args.max_drop)
    gate = next((line for line in output.splitlines() if line.startswith("error:")), "all within the gate")
    rows = [(s["model"], s["backend"], s["miou"]) for s in scores]
    openvino = [("bf16", fp32, ["--backend", "openvino", "--precision", "bf16"]),
                ("int8", int8[("cpu", "minmax")], ["--backend", "openvino"])]
    if nncf.is_file():
        openvino += [("int8", nncf, ["--backend", "openvino"]),
                     ("int8 + bf16", nncf, ["--backend", "openvino", "--precision", "bf16"])]
    openvino.append(("auto", fp32, ["--precision", "auto"]))
    for i, (name, path, extra) in enumerate(openvino):
        result, text = evaluate([path], data, work / f"eval-{i}.json", *extra)
        if result:
            chosen = next((line for line in text.splitlines() if line.startswith("CPU path:")), "")
            if chosen:
                print(chosen)
            rows.append((f"{path.name} ({name})", result[0]["backend"], result[0]["miou"]))
        else:
            print(f"OpenVINO {name}: not run ({text.strip().splitlines()[-1]})")

    if args.frame_scale:
        enlarged = enlarge(Path(args.images), Path(args.masks), work / f"x{args.frame_scale:g}", args.frame_scale)
        big = ["--images", str(enlarged[0]), "--masks", str(enlarged[1]), "--num-classes", args.num_classes]
        for i, (name, extra) in enumerate((("fp32", []), ("auto", ["--precision", "auto"]))):
            result, _ = evaluate([fp32], big, work / f"eval-x{i}.json", *extra)
            rows.append((f"{fp32.name} ({name}, frames x{args.frame_scale:g})", result[0]["backend"], result[0]["miou"]))

    print(f"checkpoint {args.checkpoint}; {args.images}; export {args.size}")
    print(f"{'artifact':<40} {'runtime':<12} {'mIoU %':>7} {'drop (points)':>14}")
    reference = rows[0][2]
    for name, backend, miou in rows:
        if "frames x" in name and "(fp32," in name:
            reference = miou  # the enlarged frames' rows: against FP32 on the same frames
        print(f"{name:<40} {backend:<12} {miou * 100:7.2f} {(reference - miou) * 100:14.2f}")
    print(f"stdc eval --max-drop {args.max_drop}: {gate}")


if __name__ == "__main__":
    main()
