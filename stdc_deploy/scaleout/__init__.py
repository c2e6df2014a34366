"""Running ``stdc infer`` across processes and machines.

:mod:`~stdc_deploy.scaleout.stages` holds what every worker runs (plain functions over
batches of rows, no cluster library needed to import or test them);
:mod:`~stdc_deploy.scaleout.ray` runs a job on a Ray cluster (``stdc infer --executor
ray``); :class:`~stdc_deploy.scaleout.batch.BatchSegmenter` is the entry point for a Ray
Dataset of images a user already has. Ray is imported only where a cluster is used.
"""

from __future__ import annotations

from .batch import BatchSegmenter
from .stages import ModelSpec

__all__ = ["BatchSegmenter", "ModelSpec"]
