"""Exporters: checkpoints to ONNX (FP32 / FP16, static or dynamic), TorchScript and .pt2,
and ONNX-to-ONNX steps (FP16 conversion, INT8 quantization). Every exporter verifies its
artifact against PyTorch before writing it."""

from .onnx import OnnxExportOptions, OnnxExportResult, export_onnx
from .torchscript import TorchScriptExportResult, export_torchscript

__all__ = ["OnnxExportOptions", "OnnxExportResult", "TorchScriptExportResult", "export_onnx", "export_torchscript"]
