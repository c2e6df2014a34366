"""The ``model.py`` files of a Triton model repository (``stdc export triton``).

Each module here is copied as ``<model>/1/model.py`` and runs only inside Triton's Python
backend (it imports ``triton_python_backend_utils``), so none of them is imported by the
package. They need numpy and OpenCV (and ONNX Runtime for ``net``), never stdc_deploy or
PyTorch: the pre- and post-processing they call is the package's own, copied beside them
as the ``stdc_ops`` package (:func:`stdc_deploy.export.triton.write_ops`).

``pre``: encoded images -> network input and image sizes; ``post``: logits and sizes ->
label maps; ``net``: the network in ONNX Runtime on the CPU; ``shared``: helpers they all
use, copied as ``stdc_ops/shared.py``.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE_DIR = Path(__file__).parent
