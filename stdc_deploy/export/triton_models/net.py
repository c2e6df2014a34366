"""stdc_net for CPU-only Triton: the network (``model.onnx`` beside this file) in ONNX
Runtime on the CPU. The requests of one call that share an input shape run as one batch."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from stdc_ops.shared import error_response  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        groups = {}  # input shape without the batch -> [(request index, input)]
        for i, request in enumerate(requests):
            batch = pb_utils.get_input_tensor_by_name(request, "input").as_numpy()
            groups.setdefault(batch.shape[1:], []).append((i, batch))
        responses = [None] * len(requests)
        for members in groups.values():
            indices, batches = zip(*members)
            try:
                logits = self.session.run(["logits"], {"input": np.concatenate(batches)})[0]
            except Exception as exc:  # noqa: BLE001 - fails the requests of this batch only
                for i in indices:
                    responses[i] = error_response(pb_utils, exc)
                continue
            parts = np.split(logits, np.cumsum([len(b) for b in batches])[:-1])
            for i, part in zip(indices, parts):
                tensor = pb_utils.Tensor("logits", np.ascontiguousarray(part))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses
