"""Label maps for a Ray Dataset of images the caller already has.

    import ray
    from stdc_deploy.scaleout import BatchSegmenter

    ds = ray.data.read_images("s3://bucket/frames/")            # column "image", RGB
    ds = ds.map_batches(BatchSegmenter, fn_constructor_kwargs={"model": "/shared/stdc1.onnx"},
                        compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1, batch_size=8)
    ds.write_parquet(...)                                       # adds column "labels"

Nothing here imports Ray: the class is a plain callable over a dict of numpy columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InvalidValue
from .stages import Batch, ModelSpec, object_column

COLOR_ORDERS = ("rgb", "bgr")


class BatchSegmenter:
    """A callable for ``Dataset.map_batches``: adds a ``labels`` column to batches of images.

    The model is opened once per instance (per actor). ``image_column`` holds HxWx3 uint8
    images in ``color_order``: ``rgb`` is what ``ray.data.read_images`` gives, ``bgr`` what
    OpenCV gives. Images may differ in size; each label map (HxW uint8 train ids) has its
    image's size. ``protocol``: see :mod:`stdc_deploy.preprocess` (``official`` gives the
    labels ``stdc infer`` and ``stdc eval`` give). The other arguments are those of
    :class:`~stdc_deploy.segmenter.Segmenter`.
    """

    def __init__(self, model: str | Path, *, backend: str | None = None, device: str | None = None,
                 precision: str = "fp32", size: tuple[int, int] | None = None, threads: int | None = None,
                 protocol: str = "official", color_order: str = "rgb", image_column: str = "image",
                 labels_column: str = "labels"):
        if color_order not in COLOR_ORDERS:
            raise InvalidValue("color_order", f"{color_order!r}: choose one of {', '.join(COLOR_ORDERS)}")
        self.rgb = color_order == "rgb"
        self.image_column, self.labels_column = image_column, labels_column
        self.segmenter = ModelSpec(Path(model), backend, device, precision, size, threads).open(protocol)

    def __call__(self, batch: Batch) -> Batch:
        if self.image_column not in batch:
            raise InvalidValue("image_column", f"no column {self.image_column!r} in the batch "
                                               f"(columns: {', '.join(batch) or 'none'})")
        images = [np.ascontiguousarray(image[..., ::-1]) if self.rgb else image for image in batch[self.image_column]]
        labels = self.segmenter.predict_batch(images)
        out = dict(batch)
        same_size = len({lab.shape for lab in labels}) <= 1
        out[self.labels_column] = np.stack(labels) if labels and same_size else object_column(labels)
        return out

    def __del__(self):
        segmenter = getattr(self, "segmenter", None)
        if segmenter is not None:
            segmenter.close()
