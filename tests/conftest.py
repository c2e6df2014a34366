from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stdc_deploy.synthetic import to_official_state_dict
from stdc_deploy.preprocess import normalize
from stdc_deploy.synthetic import random_model, synthetic_images

torch.set_num_threads(2)


def shape_str(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) if t.ndim else "scalar"


@pytest.fixture(scope="session")
def models_by_arch():
    """Random-weight models (with training heads) whose BN statistics were measured on images."""
    return {arch: random_model(arch, seed=i) for i, arch in enumerate(("stdc1", "stdc2"))}


@pytest.fixture(scope="session")
def official_checkpoints(models_by_arch, tmp_path_factory) -> dict[str, Path]:
    """Bare state_dicts in the official key format, as the official training code writes them."""
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for arch, model in models_by_arch.items():
        paths[arch] = root / f"{arch}_official.pth"
        torch.save(to_official_state_dict(model), paths[arch])
    return paths


@pytest.fixture(scope="session")
def sample_input() -> torch.Tensor:
    return torch.from_numpy(normalize(synthetic_images(2, 96, 160, seed=7)))


def logits_of(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.fixture(scope="session")
def dynamic_onnx(official_checkpoints, tmp_path_factory) -> Path:
    """Dynamic ONNX export (verified at 64x128) of the random-weight STDC1 checkpoint."""
    from stdc_deploy.checkpoint import load_model
    from stdc_deploy.export import OnnxExportOptions, export_onnx

    path = tmp_path_factory.mktemp("dynamic-onnx") / "stdc1-dynamic.onnx"
    model, info = load_model(official_checkpoints["stdc1"])
    export_onnx(model, path, OnnxExportOptions(height=64, width=128, dynamic=True), checkpoint=info)
    return path
