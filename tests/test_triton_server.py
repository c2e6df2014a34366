"""A real Triton server (the CPU ``tritonserver`` of the nvidia-pytriton wheel, in its own
venv named by STDC_TRITON_VENV) serves an exported repository: labels over HTTP and gRPC
equal ``Segmenter``'s exactly. The work is ``scripts/triton_check.py``'s, which prints the
same checks; run with ``-m slow``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
pytest.importorskip("tritonclient.http", reason="tritonclient[http] is not installed")

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "triton_check.py"


def _script():
    spec = importlib.util.spec_from_file_location("triton_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_triton_serves_the_labels_of_segmenter(request, tmp_path):
    check = _script()
    venv = check.find_venv()
    if venv is None:
        pytest.skip(check.missing_venv_reason())
    report = check.run_check(request.getfixturevalue("dynamic_onnx"), venv, tmp_path)
    assert report.triton_version
    assert report.stop_code == 0  # stopped cleanly: every model unloaded
    assert sum(line.startswith("http:") for line in report.checks) == 5
    assert sum(line.startswith("grpc:") for line in report.checks) == 4
