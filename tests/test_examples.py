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
