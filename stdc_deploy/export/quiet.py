"""Silence third-party chatter (exporter warnings, quantizer hints) unless asked for.

With ``--verbose`` the CLI sets the root logger to INFO; then nothing is silenced here.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

_CHATTY = ("torch.onnx", "torch.export", "torch._export", "torch._inductor", "torch.jit", "onnxscript", "onnx_ir",
           "onnxslim", "onnxruntime", "root")


@contextlib.contextmanager
def quiet_exporter():
    """The exporter warns about optional torchvision ops and deprecations: not ours to show."""
    if logging.getLogger().isEnabledFor(logging.INFO):  # --verbose: show everything
        yield
        return
    loggers = [logging.getLogger(name) for name in _CHATTY]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
