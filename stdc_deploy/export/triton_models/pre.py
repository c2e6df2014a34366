"""stdc_pre: encoded images (TYPE_STRING, one per batch item) -> the network input at the
network size and each image's (height, width). Decoding and pre-processing are those of
stdc-deploy (``stdc_ops`` beside this file is its copy); an image that cannot be decoded
fails its own request only."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from stdc_ops.preprocess import normalize  # noqa: E402
from stdc_ops.shared import error_response, model_metadata  # noqa: E402


def decode(data: bytes) -> np.ndarray | None:
    """BGR uint8 HxWx3 as stdc-deploy reads images, or None if the bytes are not an image."""
    buffer = np.frombuffer(data, np.uint8)
    if buffer.size == 0:
        return None
    try:
        return cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:
        return None


class TritonPythonModel:
    def initialize(self, args):
        metadata = model_metadata(args)
        self.size = (int(metadata["input_height"]), int(metadata["input_width"]))
        self.mean, self.std, self.protocol = metadata["mean"], metadata["std"], metadata["protocol"]

    def execute(self, requests):
        return [self.answer(request) for request in requests]

    def answer(self, request):
        try:
            items = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            images = [decode(data) for data in items]
            bad = [i for i, image in enumerate(images) if image is None]
            if bad:
                raise ValueError(f"image {bad[0]} of this request is not a readable image "
                                 "(corrupt or unsupported encoding)")
            batch = normalize(images, self.mean, self.std, size=self.size, protocol=self.protocol)
            sizes = np.array([image.shape[:2] for image in images], np.int32)
        except Exception as exc:  # noqa: BLE001 - fails this request only, not the others in the batch
            return error_response(pb_utils, exc)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("input", batch),
                                                          pb_utils.Tensor("size", sizes)])
