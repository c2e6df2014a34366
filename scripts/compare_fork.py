#!/usr/bin/env python
"""Parity of this package with the mgchen fork of STDC-Seg (chen1234520/STDC-Seg) on its
speed variants, through ONNX Runtime.

For the fork's ``cut`` network (``BiSeNet_cutNet``, STDC1 and STDC2), its ``del`` network
(``BiSeNet_delNet``, STDC1) and its ``DW`` network (``BiSeNet_DW``, STDC1: it should be the
plain network) with 2 and 4 classes, the script

1. builds the fork's training network with the fork's own code (imported from ``--fork``),
   gives every BatchNorm random affine weights (some negative) and running statistics
   measured in train mode on varied synthetic images, then switches to eval mode;
2. saves its bare ``state_dict()`` with ``torch.save``, as the fork's training scripts do;
3. loads that file with ``stdc_deploy.checkpoint.load_model`` (no options) and checks the
   detected architecture, variant and class count;
4. exports ONNX at each size (``export_onnx``, verified against our PyTorch model) and
   compares ONNX Runtime logits with the fork network's own logits on other images:
   max abs error and label agreement (targets: <= 2e-3 and >= 99.95 %).

The fork's model files are imported from their paths (its package ``__init__`` imports
modules that do not exist at HEAD); ``torchvision``, imported but unused by them, is
replaced by an empty module when it is not installed. The fork's code is imported, never
copied.

Usage::

    python scripts/compare_fork.py --fork /path/to/STDC-Seg [--sizes 320x320 96x128] [--keep DIR]

Exit status 1 when a row misses a target. Standalone: not imported by the package or the tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn

MAX_ABS_ERROR = 2e-3
MIN_AGREEMENT = 0.9995

# (fork module, class, backbone name in the fork, our arch, expected variant)
NETWORKS = (
    ("model_stages_modifies", "BiSeNet_cutNet", "STDCNet813", "stdc1", "cut"),
    ("model_stages_modifies", "BiSeNet_cutNet", "STDCNet1446", "stdc2", "cut"),
    ("model_stages_del", "BiSeNet_delNet", "STDCNet813Del", "stdc1", "del"),
    ("model_stages_DW", "BiSeNet_DW", "STDCNet813", "stdc1", "plain"),
)


def import_fork(root: Path) -> dict[str, types.ModuleType]:
    """The fork's ``lib/models`` files as modules of an in-memory package."""
    models = root / "lib" / "models"
    if not (models / "stdcnet.py").exists():
        raise SystemExit(f"{root}: no lib/models/stdcnet.py; pass a checkout of chen1234520/STDC-Seg")
    stub = importlib.util.find_spec("torchvision") is None
    if stub:  # imported, never used by the models; removed again afterwards (torch.onnx probes for it)
        sys.modules["torchvision"] = types.ModuleType("torchvision")
    package = types.ModuleType("stdc_fork_models")
    package.__path__ = [str(models)]
    sys.modules[package.__name__] = package
    loaded = {}
    try:
        for name in ("stdcnet", "model_stages_modifies", "model_stages_del", "model_stages_DW"):
            spec = importlib.util.spec_from_file_location(f"{package.__name__}.{name}", models / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
    finally:
        if stub:
            del sys.modules["torchvision"]
    return loaded


def normalized(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    from stdc_deploy.preprocess import normalize
    from stdc_deploy.synthetic import synthetic_images

    return torch.from_numpy(normalize(synthetic_images(count, height, width, seed=seed)))


@torch.no_grad()
def trained_like(net: nn.Module, seed: int) -> nn.Module:
    """Random BN affine weights (a fifth of them negative) and running statistics measured in
    train mode on synthetic images (cumulative average over the batches); eval mode."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        sign = torch.where(torch.rand(bn.num_features, generator=gen) < 0.2, -1.0, 1.0)
        bn.weight.copy_(sign * torch.empty(bn.num_features).uniform_(0.5, 1.5, generator=gen))
        bn.bias.copy_(torch.empty(bn.num_features).uniform_(-0.3, 0.3, generator=gen))
        bn.reset_running_stats()
        bn.momentum = None
    net.train()
    for i, (h, w) in enumerate(((128, 128), (96, 160), (160, 96), (128, 192))):
        net(normalized(4, h, w, seed=seed * 10 + i))
    for bn in bns:
        bn.momentum = 0.1
    return net.eval()


def fork_logits(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = net(x)
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def short_reason(reason: str) -> str:
    for word, short in (("training-only", "heads"), ("aliases", "alias"), ("ImageNet", "imnet"), ("1/32", "1/32")):
        if word in reason:
            return short
    return reason


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fork", type=Path, required=True, help="checkout of chen1234520/STDC-Seg")
    parser.add_argument("--sizes", nargs="+", default=["320x320", "96x128"], help="HxW export sizes")
    parser.add_argument("--classes", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--keep", type=Path, default=None, help="keep checkpoints and ONNX files here")
    args = parser.parse_args()

    import onnxruntime as ort

    from stdc_deploy.checkpoint import load_model
    from stdc_deploy.core.artifacts import read_onnx_metadata
    from stdc_deploy.export import OnnxExportOptions, export_onnx

    torch.set_num_threads(max(1, torch.get_num_threads()))
    fork = import_fork(args.fork.resolve())
    sizes = [parse_size(s) for s in args.sizes]
    work = tempfile.TemporaryDirectory(prefix="stdc-fork-")
    root = args.keep or Path(work.name)
    root.mkdir(parents=True, exist_ok=True)

    header = (f"{'fork network':<28} {'cls':>3} {'detected':<11} {'dropped':<30} {'size':>7} "
              f"{'max|logit|':>10} {'max abs err':>11} {'agree %':>8} {'meta':<5} ok")
    print(header)
    print("-" * len(header))
    failures = 0
    for seed, (module, cls_name, backbone, arch, variant) in enumerate(NETWORKS):
        for classes in args.classes:
            torch.manual_seed(seed * 100 + classes)
            net = getattr(fork[module], cls_name)(backbone, classes)
            trained_like(net, seed * 100 + classes)
            path = root / f"fork-{cls_name}-{backbone}-{classes}.pth"
            torch.save(net.state_dict(), path)  # what the fork's training scripts save

            model, info = load_model(path)
            detected = f"{info.arch}/{info.variant}"
            dropped = " ".join(f"{short_reason(r)} {n}" for r, n in info.dropped.items())
            detected_ok = (info.arch, info.variant, info.num_classes) == (arch, variant, classes)
            for h, w in sizes:
                onnx_path = root / f"{path.stem}-{h}x{w}.onnx"
                export_onnx(model, onnx_path, OnnxExportOptions(height=h, width=w), checkpoint=info)
                session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
                x = normalized(1, h, w, seed=1000 + seed)
                ours = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
                ref = fork_logits(net, x)
                err = float(np.abs(ours - ref).max())
                agree = float((ours.argmax(1) == ref.argmax(1)).mean())
                meta = read_onnx_metadata(onnx_path).variant
                ok = detected_ok and err <= MAX_ABS_ERROR and agree >= MIN_AGREEMENT
                failures += not ok
                print(f"{cls_name + ' ' + backbone:<28} {classes:>3} {detected:<11} {dropped:<30} {h:>3}x{w:<3} "
                      f"{float(np.abs(ref).max()):>10.2f} {err:>11.2e} {100 * agree:>8.3f} {meta:<5} "
                      f"{'yes' if ok else 'NO'}")
    print(f"targets: max abs error <= {MAX_ABS_ERROR:g}, label agreement >= {100 * MIN_AGREEMENT:g} %; "
          "meta = the variant recorded in the ONNX metadata")
    print("dropped: tensors ignored on load: heads = training-only heads, alias = backbone stage aliases, "
          "imnet = ImageNet head, 1/32 = the backbone stage the del variant does not run")
    work.cleanup()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
