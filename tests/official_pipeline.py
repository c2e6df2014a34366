"""An independent implementation of the official STDC-Seg evaluation pipeline, in torch as
the official evaluation.py does it: the reference the package's protocols are tested against."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stdc_deploy.models import IMAGENET_MEAN, IMAGENET_STD


def official_prediction(model, image_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Normalise at full size, align_corners=True resize in, logits, align_corners=True
    resize out, argmax."""
    rgb = image_bgr[:, :, ::-1].astype(np.float32) / 255.0
    x = torch.from_numpy(((rgb - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32))
                         .transpose(2, 0, 1).copy())[None]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    with torch.no_grad():
        logits = model(x)
    logits = F.interpolate(logits, size=image_bgr.shape[:2], mode="bilinear", align_corners=True)
    return logits.argmax(1)[0].numpy().astype(np.uint8)
