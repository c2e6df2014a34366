"""stdc_post: logits and image sizes -> label maps (uint8 train ids) at each image's own
size, by stdc-deploy's post-processing (``stdc_ops`` beside this file is its copy). The
images of one request must share a size, as their label maps form one tensor."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from stdc_ops.postprocess import to_labels  # noqa: E402
from stdc_ops.shared import error_response, model_metadata  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.protocol = model_metadata(args)["protocol"]

    def execute(self, requests):
        return [self.answer(request) for request in requests]

    def answer(self, request):
        try:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            sizes = pb_utils.get_input_tensor_by_name(request, "size").as_numpy().reshape(-1, 2)
            if len({(int(h), int(w)) for h, w in sizes}) > 1:
                raise ValueError("the images of one request differ in size, so their label maps cannot form "
                                 "one tensor; send one image per request")
            labels = np.stack([to_labels(logits[i], (int(h), int(w)), self.protocol)
                               for i, (h, w) in enumerate(sizes)])
        except Exception as exc:  # noqa: BLE001 - fails this request only, not the others in the batch
            return error_response(pb_utils, exc)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("labels", labels)])
