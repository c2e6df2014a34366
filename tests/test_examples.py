import subprocess
import sys
from pathlib import Path

import cv2

from stdc_deploy.synthetic import synthetic_images

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_python_api_example(official_checkpoints, tmp_path):
    image = tmp_path / "street.jpg"
    cv2.imwrite(str(image), synthetic_images(1, 90, 160, seed=3)[0])
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "python_api.py"), str(official_checkpoints["stdc1"]), str(image),
         "--size", "64x128", "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "label agreement" in proc.stdout and "classes present" in proc.stdout
    overlay = cv2.imread(str(tmp_path / "out" / "street_overlay.png"))
    assert overlay.shape == (90, 160, 3)


def test_cpp_example_segments_like_python(official_checkpoints, tmp_path):
    """examples/cpp: built against the LibTorch inside the torch wheel, run on a TorchScript export."""
    import shutil

    import numpy as np
    import pytest
    import torch

    from stdc_deploy.checkpoint import load_model
    from stdc_deploy.export import export_torchscript
    from stdc_deploy.preprocess import normalize
    from stdc_deploy.postprocess import labels_official

    if not (shutil.which("cmake") and (shutil.which("c++") or shutil.which("g++"))):
        pytest.skip("no C++ toolchain (cmake and a C++ compiler)")
    build = tmp_path / "build"
    configure = subprocess.run(["cmake", "-S", str(EXAMPLES / "cpp"), "-B", str(build),
                                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                               capture_output=True, text=True, timeout=300)
    if configure.returncode != 0:
        pytest.skip(f"LibTorch not usable from CMake here: {configure.stderr.strip().splitlines()[-1:]}")
    compiled = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, timeout=600)
    assert compiled.returncode == 0, compiled.stdout[-2000:] + compiled.stderr[-2000:]

    model, info = load_model(official_checkpoints["stdc1"])
    ts = export_torchscript(model, tmp_path / "m.ts", 64, 128, checkpoint=info).path
    image = synthetic_images(1, 90, 150, seed=8)[0]
    ppm = tmp_path / "frame.ppm"
    ppm.write_bytes(b"P6\n# synthetic\n150 90\n255\n" + image[:, :, ::-1].tobytes())
    out = tmp_path / "labels.pgm"
    run = subprocess.run([str(build / "stdc_segment"), str(ts), str(ppm), str(out), "64", "128"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert '"arch": "stdc1"' in run.stdout or "stdc1" in run.stdout
    labels = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    with torch.no_grad():
        logits = model(torch.from_numpy(normalize(image, size=(64, 128), protocol="official"))).numpy()
    expected = labels_official(logits[0], (90, 150))
    assert labels.shape == (90, 150) and np.mean(labels == expected) > 0.999
    bad = subprocess.run([str(build / "stdc_segment"), str(ts), str(tmp_path / "m.ts"), str(out)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "not a binary 8-bit PPM" in bad.stderr

