"""Training and fine-tuning STDC-Seg with the official recipe (``stdc train``).

:func:`train` runs a :class:`TrainConfig`; :mod:`.data` holds the samples and augmentation,
:mod:`.losses` the recipe's losses, :mod:`.schedule` the optimiser and learning rate,
:mod:`.weights` initialisation and the checkpoint layouts, :mod:`.shapes` a procedural data
set for trying it all without downloads.
"""

from .trainer import Monitor, Run, RunFiles, TrainConfig, TrainResult, read_state, train

__all__ = ["Monitor", "Run", "RunFiles", "TrainConfig", "TrainResult", "read_state", "train"]
