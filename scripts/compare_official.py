#!/usr/bin/env python
"""Pixel agreement of ``stdc infer`` with the official STDC-Seg evaluation pipeline.

Builds a random-weight STDC1 checkpoint in the official key layout, loads it into the
official ``BiSeNet`` model (imported from a checkout of MichaelFan01/STDC-Seg given by
``--official``), runs the official single-scale evaluation steps (``MscEvalV0``) on a
synthetic street-like image, and compares its labels with

* ``stdc infer`` on an exported static ONNX model, ``official`` protocol (images' default);
* ``stdc infer --protocol fast``;
* this package's PyTorch model with ``preprocess.normalize(protocol="official")`` and
  ``postprocess.labels_official`` (cross-check).

It also separates model parity from protocol differences: the network input built by
both pre-processings, and the logits of both models on one and the same input tensor.

The official model code needs two things that are not installed here: the compiled
InPlaceABN CUDA extension (``modules.bn``) and ``torchvision`` (imported, unused by the
model). Both are replaced by small in-memory modules before the official code is
imported; see ``_install_stubs``. The official code itself is imported, never copied.

Usage::

    python scripts/compare_official.py --official /path/to/STDC-Seg --size 1024x2048 --scale 0.5 --seed 0

Standalone: not imported by the package or the tests.
"""

from __future__ import annotations

import argparse
import copy
import glob
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the official cityscapes.py Normalize
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- stubs

class _InPlaceABNEval(nn.Module):
    """Inference-mode stand-in for the official ``modules.bn.InPlaceABN(Sync)``.

    Same constructor, parameters and buffers as the official ``ABN`` base class
    (``weight``, ``bias``, ``running_mean``, ``running_var``; no ``num_batches_tracked``),
    so official checkpoints load strictly. The forward is the extension's eval-mode
    arithmetic (``forward_cpu`` / the CUDA kernel: the scale is ``|weight| + eps``, not
    ``weight``), followed by the configured activation. ``plain_scale = True`` uses
    ``weight`` instead (plain BatchNorm), for the diagnostics only.
    """

    plain_scale = False

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, activation="leaky_relu", slope=0.01):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.activation, self.slope = affine, activation, slope
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        if self.training:
            raise RuntimeError("this InPlaceABN stand-in implements inference only")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if not self.affine:
            gamma = torch.ones_like(self.running_var)
        else:
            gamma = self.weight if self.plain_scale else self.weight.abs() + self.eps
        mul = torch.rsqrt(self.running_var + self.eps) * gamma
        x = (x - self.running_mean.view(shape)) * mul.view(shape)
        if self.affine:
            x = x + self.bias.view(shape)
        if self.activation == "leaky_relu":
            return F.leaky_relu(x, self.slope)
        if self.activation == "elu":
            return F.elu(x)
        if self.activation == "relu":
            return F.relu(x)
        if self.activation == "none":
            return x
        raise ValueError(f"unknown activation {self.activation!r}")


def _install_stubs() -> None:
    """Fake ``modules``/``modules.bn`` (avoids compiling the CUDA extension on import) and
    an empty ``torchvision`` (``models/model_stages.py`` imports it but uses nothing)."""
    pkg = types.ModuleType("modules")
    pkg.__path__ = []  # a package with nothing else importable in it
    bn = types.ModuleType("modules.bn")
    bn.ABN = bn.InPlaceABN = bn.InPlaceABNSync = _InPlaceABNEval
    pkg.bn = bn
    sys.modules["modules"] = pkg
    sys.modules["modules.bn"] = bn
    if "torchvision" not in sys.modules:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            sys.modules["torchvision"] = types.ModuleType("torchvision")


def import_official(root: Path):
    """``models.model_stages.BiSeNet`` from the official checkout at ``root``."""
    _install_stubs()
    for name in ("models", "models.model_stages", "nets", "nets.stdcnet"):
        sys.modules.pop(name, None)
    sys.path.insert(0, str(root))
    try:
        import models.model_stages as model_stages
    finally:
        sys.path.remove(str(root))
    where = Path(model_stages.__file__).resolve()
    if root.resolve() not in where.parents:
        raise RuntimeError(f"imported {where}, not the official code under {root}")
    return model_stages


# ----------------------------------------------------------------------------- official pipeline

def official_input(png: Path, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cityscapes.py: PIL RGB (OpenCV when Pillow is absent) -> ToTensor -> Normalize; MscEvalV0: bilinear resize,
    align_corners=True, to int(H*scale) x int(W*scale). Returns (full-size, resized)."""
    try:
        from PIL import Image
    except ImportError:  # PNG decoding is lossless: OpenCV gives the same 8-bit RGB values
        rgb = cv2.cvtColor(cv2.imread(str(png), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    else:
        rgb = np.array(Image.open(png).convert("RGB"), dtype=np.uint8)
    # torchvision ToTensor on an RGB image: HWC uint8 -> CHW float / 255
    t = torch.from_numpy(rgb).permute(2, 0, 1).contiguous().float().div(255)
    # torchvision Normalize: sub_(mean).div_(std) per channel
    t = t.sub(torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).div(torch.tensor(IMAGENET_STD).view(3, 1, 1))
    imgs = t[None]
    _, _, h, w = imgs.shape
    new_hw = [int(h * scale), int(w * scale)]
    return imgs, F.interpolate(imgs, new_hw, mode="bilinear", align_corners=True)


def official_labels(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """MscEvalV0: logits resized (bilinear, align_corners=True) to the label size, softmax, argmax."""
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    return torch.argmax(torch.softmax(logits, dim=1), dim=1)[0]


# ----------------------------------------------------------------------------- helpers

def parse_size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name):
        timer = self

        class _Span:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[name] = time.perf_counter() - self.t0

        return _Span()


def run_cli(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stdc_deploy", *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"stdc {' '.join(args)} failed with exit code {proc.returncode}")
    return elapsed


def read_mask(out_dir: Path) -> np.ndarray:
    found = sorted(glob.glob(str(out_dir / "*_mask.png")))
    if len(found) != 1:
        raise SystemExit(f"expected one *_mask.png in {out_dir}, found {found}")
    mask = cv2.imread(found[0], cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2:
        raise SystemExit(f"{found[0]}: not a single-channel label PNG")
    return mask


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise SystemExit(f"label maps differ in shape: {a.shape} vs {b.shape}")
    return float((a.astype(np.int64) == b.astype(np.int64)).mean() * 100)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, type=Path, help="checkout of MichaelFan01/STDC-Seg")
    ap.add_argument("--size", default="1024x2048", help="test image HEIGHTxWIDTH")
    ap.add_argument("--scale", type=float, default=0.5, help="evaluation scale (0.5 = Seg50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--image-seed", type=int, default=5, help="seed of the synthetic image")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write files (default: a temp folder)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="an STDC1 checkpoint in the official layout (e.g. one `stdc train` wrote) instead of "
                         "random weights")
    args = ap.parse_args()

    from stdc_deploy.checkpoint import load_model
    from stdc_deploy.postprocess import labels_fast, labels_official
    from stdc_deploy.preprocess import normalize
    from stdc_deploy.synthetic import random_model, synthetic_images, to_official_state_dict

    height, width = parse_size(args.size)
    net_h, net_w = int(height * args.scale), int(width * args.scale)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="stdc-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    torch.set_grad_enabled(False)

    # checkpoint (official key layout) and image
    if args.checkpoint is not None:
        ckpt = args.checkpoint
        num_classes = int(torch.load(ckpt, map_location="cpu", weights_only=True)["conv_out.conv_out.weight"].shape[0])
    else:
        ckpt = work / "stdc1-random.pth"
        num_classes = 19
        torch.save(to_official_state_dict(random_model("stdc1", seed=args.seed)), ckpt)
    png = work / "street.png"
    image = synthetic_images(1, height, width, seed=args.image_seed)[0]
    cv2.imwrite(str(png), image)

    # official model, strict load
    model_stages = import_official(args.official)
    official = model_stages.BiSeNet(backbone="STDCNet813", n_classes=num_classes, use_boundary_2=False,
                                    use_boundary_4=False, use_boundary_8=True, use_boundary_16=False,
                                    use_conv_last=False)
    result = official.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True), strict=True)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    official.eval()
    abn = [m for m in official.modules() if isinstance(m, _InPlaceABNEval)]
    negative = sum(int((m.weight < 0).any()) for m in abn)

    # official pipeline
    with timer("official: read + ToTensor/Normalize + resize"):
        _, x_off = official_input(png, args.scale)
    with timer("official: forward"):
        logits_off = official(x_off)[0]
    with timer("official: resize logits + softmax + argmax"):
        ref = official_labels(logits_off, (height, width)).numpy()

    # this package, PyTorch
    ours, _ = load_model(ckpt)
    with timer("ours torch: normalize(official)"):
        x_ours = torch.from_numpy(normalize(image, size=(net_h, net_w), protocol="official"))
    with timer("ours torch: forward"):
        logits_ours = ours(x_ours)
    with timer("ours torch: labels_official"):
        lab_torch = labels_official(logits_ours[0].numpy(), (height, width))
    logits_ours_same_in = ours(x_off)
    # protocol decomposition with our model: which half of "fast" moves the labels
    x_fast = torch.from_numpy(normalize(image, size=(net_h, net_w), protocol="fast"))
    lab_fastpre = labels_official(ours(x_fast)[0].numpy(), (height, width))
    lab_fastpost = labels_fast(logits_ours[0].numpy(), (height, width))
    # model parity in float64, with the InPlaceABN scale |w| + eps and with plain w
    off64, ours64, x64 = copy.deepcopy(official).double(), copy.deepcopy(ours).double(), x_off.double()
    ref64 = ours64(x64)
    diff64_abn = (off64(x64)[0] - ref64).abs().max().item()
    for m in off64.modules():
        if isinstance(m, _InPlaceABNEval):
            m.plain_scale = True
    diff64_plain = (off64(x64)[0] - ref64).abs().max().item()
    del off64, ours64

    # this package, CLI on ONNX
    onnx_path = work / f"stdc1-{net_h}x{net_w}.onnx"
    onnx_path.unlink(missing_ok=True)  # written by an earlier run in the same work dir
    timer.times["stdc export onnx (process)"] = run_cli(
        ["export", "onnx", str(ckpt), "-o", str(onnx_path), "--size", f"{net_h}x{net_w}"])
    dirs = {p: work / f"infer-{p}" for p in ("official", "fast")}
    for protocol, out_dir in dirs.items():
        extra = [] if protocol == "official" else ["--protocol", "fast"]
        timer.times[f"stdc infer, {protocol} (process)"] = run_cli(
            ["infer", str(png), "-m", str(onnx_path), "-d", str(out_dir), "--save", "mask", "--no-progress",
             "--overwrite", "--precision", "fp32", *extra])
    masks = {p: read_mask(d) for p, d in dirs.items()}

    # report
    print(f"official code: {args.official}  image {height}x{width} (seed {args.image_seed}), "
          f"scale {args.scale} -> network input {net_h}x{net_w}, weights seed {args.seed}")
    print(f"strict load into official BiSeNet(STDCNet813): missing {len(missing)} {missing[:5]}, "
          f"unexpected {len(unexpected)} {unexpected[:5]}; {len(abn)} InPlaceABN layers stubbed, "
          f"{negative} with negative weights")
    print(f"official labels: {len(np.unique(ref))} classes present; work dir {work}")
    print()
    rows = [
        ("stdc infer (ONNX), official protocol", agreement(masks["official"], ref)),
        ("stdc infer (ONNX), fast protocol", agreement(masks["fast"], ref)),
        ("ours torch: normalize(official) + labels_official", agreement(lab_torch, ref)),
        ("ours torch: normalize(fast) + labels_official", agreement(lab_fastpre, ref)),
        ("ours torch: normalize(official) + labels_fast", agreement(lab_fastpost, ref)),
        ("labels_official on the official logits", agreement(labels_official(logits_off[0].numpy(),
                                                                             (height, width)), ref)),
    ]
    width0 = max(len(r[0]) for r in rows)
    print(f"{'vs official labels':<{width0}}  agreement")
    for name, value in rows:
        print(f"{name:<{width0}}  {value:8.4f} %   ({int(round((100 - value) / 100 * height * width))} px differ)")
    print()
    print("parity diagnostics")
    print(f"  network input, normalize(official) vs official: max abs diff "
          f"{(x_ours - x_off).abs().max().item():.3e}")
    diff = (logits_ours_same_in - logits_off).abs()
    print(f"  logits at {net_h}x{net_w}, our model vs official model, same input: max abs diff "
          f"{diff.max().item():.3e} (max |logit| {logits_off.abs().max().item():.2f}); "
          f"argmax agreement {agreement(logits_ours_same_in.argmax(1).numpy(), logits_off.argmax(1).numpy()):.4f} %")
    print(f"  logits, same input, float64: max abs diff {diff64_abn:.3e} with InPlaceABN scale |w|+eps "
          f"(the official extension), {diff64_plain:.3e} with scale w (plain BatchNorm)")
    print(f"  network input, normalize(fast) vs official: max abs diff {(x_fast - x_off).abs().max().item():.3e}, "
          f"mean {(x_fast - x_off).abs().mean().item():.3e}")
    print(f"  stdc infer official vs fast: {agreement(masks['official'], masks['fast']):.4f} %; "
          f"official vs ours torch: {agreement(masks['official'], lab_torch):.4f} %")
    print()
    print(f"{'step':<{width0}}  seconds")
    for name, seconds in timer.times.items():
        print(f"{name:<{width0}}  {seconds:8.3f}")


if __name__ == "__main__":
    main()
