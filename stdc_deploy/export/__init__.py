"""Exporters: ONNX (static or dynamic, simplified, verified)."""

from .metadata import ArtifactMetadata
from .onnx import OnnxExportOptions, OnnxExportResult, export_onnx, read_onnx_metadata

__all__ = ["ArtifactMetadata", "OnnxExportOptions", "OnnxExportResult", "export_onnx", "read_onnx_metadata"]
