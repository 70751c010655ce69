"""DEQ-Flow -> ONNX export: unrolled, Loop and split layouts, fp32 / mixed fp16, checks and metadata.

Importing this package does not import torch: the checks (export.checks, export.trt_compat) run on
machines without PyTorch, and the model-file metadata they read is deqflow.model_metadata (shared with the
runtime). `export_onnx` imports the torch-side exporter when called.
"""

from __future__ import annotations

from deqflow.model_metadata import LAYOUTS, ModelMetadata, read_metadata, split_paths
from deqflow.shapes import ImageShape, ShapeHints
from export.checks import CheckReport, check_files, check_model
from export.config import LOOKUPS, PRECISIONS, ExportConfig
from export.trt_compat import TrtIssue, TrtReport, trt_compatibility


def export_onnx(source, output, config: ExportConfig | None = None, **settings):
    """Export a checkpoint path or DEQFlow model to ONNX; see export.exporter.export_onnx."""
    from export.exporter import export_onnx as _export

    return _export(source, output, config, **settings)


__all__ = [
    "LAYOUTS", "LOOKUPS", "PRECISIONS", "CheckReport", "ExportConfig", "ImageShape", "ModelMetadata",
    "ShapeHints", "TrtIssue", "TrtReport", "check_files", "check_model", "export_onnx", "read_metadata",
    "split_paths", "trt_compatibility",
]
