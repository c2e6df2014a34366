"""Exporters: checkpoints to ONNX (FP32 / FP16, static or dynamic), TorchScript and .pt2,
and ONNX-to-ONNX steps (FP16 conversion, INT8 quantization). Every exporter verifies its
artifact against PyTorch (or the FP32 model) before writing it, through
:func:`~stdc_deploy.export.common.write_verified`, and returns an :class:`ExportResult`."""

from .common import ExportResult
from .onnx import OnnxExportOptions, export_onnx
from .torchscript import export_torchscript

OnnxExportResult = ExportResult  # earlier name, kept for existing imports

__all__ = ["ExportResult", "OnnxExportOptions", "OnnxExportResult", "export_onnx", "export_torchscript"]
