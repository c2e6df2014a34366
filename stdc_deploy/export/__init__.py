"""Exporters: ONNX (static or dynamic, simplified, verified) and TorchScript."""

from .metadata import ArtifactMetadata
from .onnx import OnnxExportOptions, OnnxExportResult, export_onnx, read_onnx_metadata
from .torchscript import TorchScriptExportResult, export_torchscript, read_torchscript_metadata

__all__ = ["ArtifactMetadata", "OnnxExportOptions", "OnnxExportResult", "TorchScriptExportResult", "export_onnx",
           "export_torchscript", "read_onnx_metadata", "read_torchscript_metadata"]
