"""DEQ-Flow -> ONNX export: unrolled, Loop and split layouts, fp32 / mixed fp16, checks and metadata.

Importing this package does not import torch: the metadata reader and the checks (export.metadata,
export.checks, export.trt_compat) serve the runtime on machines without PyTorch. `export_onnx` imports
the torch-side exporter when called.
"""

from __future__ import annotations

from export.checks import CheckReport, check_files, check_model
from export.config import LAYOUTS, LOOKUPS, PRECISIONS, ExportConfig, ImageShape, ShapeHints
from export.metadata import ModelMetadata, read_metadata, split_paths
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
