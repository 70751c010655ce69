"""Checks run after every export and by `deqflow export --check FILE`: onnx.checker (full), strict shape
inference, the TensorRT compatibility report, node statistics; plus optional onnxslim simplification.

Only onnx (and onnxslim when simplifying) is imported here, so the runtime can check files without torch.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from deqflow.extras import require
from deqflow.model_metadata import ModelMetadata, load_model_proto
from deqflow.onnx_integrity import check_onnx_weights
from export.trt_compat import TrtReport, trt_compatibility

_PROTO_LIMIT = 2**31 - 1  # models above 2 GB must be checked by path (external data)


@dataclass
class CheckReport:
    """Outcome of `check_model`. `ok`: the checker and shape inference passed and TensorRT shows no error."""

    path: str
    checker_error: str | None = None
    shape_error: str | None = None
    trt: TrtReport = field(default_factory=TrtReport)
    nodes: int = 0  # all nodes, subgraphs included
    top_level_nodes: int = 0
    op_histogram: dict[str, int] = field(default_factory=dict)
    metadata: ModelMetadata | None = None
    metadata_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.checker_error is None and self.shape_error is None and self.trt.ok

    def format(self) -> str:
        lines = [f"{self.path}: {'OK' if self.ok else 'FAILED'}",
                 f"  onnx.checker (full): {'ok' if self.checker_error is None else 'FAILED: ' + self.checker_error}",
                 f"  shape inference (strict): {'ok' if self.shape_error is None else 'FAILED: ' + self.shape_error}",
                 f"  nodes: {self.nodes} ({self.top_level_nodes} top level); "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.op_histogram.items(), key=lambda kv: -kv[1])[:12])]
        if self.metadata is not None:
            m = self.metadata
            lines.append(f"  deqflow: variant {m.variant}, layout {m.layout}/{m.part}, {m.iterations} iterations, "
                         f"{m.precision}, lookup {m.lookup}, opset {m.opset}, "
                         f"{'dynamic' if m.dynamic else f'{m.batch}x3x{m.height}x{m.width}'}")
        else:
            lines.append(f"  deqflow metadata: none ({self.metadata_error})")
        lines.append("  " + self.trt.format().replace("\n", "\n  "))
        return "\n".join(lines)


def count_nodes(graph) -> int:
    """Nodes of a graph including those inside Loop/If/Scan bodies."""
    n = 0
    for node in graph.node:
        n += 1
        for a in node.attribute:
            if a.g is not None and a.g.node:
                n += count_nodes(a.g)
            for g in a.graphs:
                n += count_nodes(g)
    return n


def op_histogram(graph) -> dict[str, int]:
    hist: Counter[str] = Counter()

    def visit(g) -> None:
        for node in g.node:
            hist[node.op_type] += 1
            for a in node.attribute:
                if a.g is not None and a.g.node:
                    visit(a.g)
                for sub in a.graphs:
                    visit(sub)

    visit(graph)
    return dict(hist)


def check_model(model_or_path, path: str | os.PathLike | None = None) -> CheckReport:
    """Run every check on a ModelProto or a file. A non-ONNX or corrupt file raises FileFormatError."""
    import onnx

    if isinstance(model_or_path, (str, os.PathLike)):
        path = model_or_path
        model = load_model_proto(path)
        check_onnx_weights(model, path, Path(path).parent)  # non-finite or altered weights: FileFormatError
    else:
        model = model_or_path
        check_onnx_weights(model, path or "<model>")
    report = CheckReport(path=str(path) if path is not None else "<model>")
    try:
        if path is not None and model.ByteSize() > _PROTO_LIMIT:
            onnx.checker.check_model(str(path), full_check=True)
        else:
            onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises ValidationError, InferenceError, ...
        report.checker_error = _first_line(exc)
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        report.shape_error = _first_line(exc)
    report.trt = trt_compatibility(model)
    report.nodes = count_nodes(model.graph)
    report.top_level_nodes = len(model.graph.node)
    report.op_histogram = op_histogram(model.graph)
    props = {p.key: p.value for p in model.metadata_props}
    try:
        report.metadata = ModelMetadata.from_props(props, source=report.path)
    except Exception as exc:
        report.metadata_error = _first_line(exc)
    return report


def simplify(model):
    """onnxslim (constant folding, dead-code and redundant-node removal); keeps our metadata_props."""
    onnxslim = require("onnxslim", "--simplify")
    props = [(p.key, p.value) for p in model.metadata_props]
    slim = onnxslim.slim(model)
    del slim.metadata_props[:]
    for k, v in props:
        entry = slim.metadata_props.add()
        entry.key, entry.value = k, v
    return slim


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def check_files(paths: list[str | os.PathLike]) -> list[CheckReport]:
    """Check each file; a split export's base name (`model.onnx`) expands to its three parts."""
    from deqflow.model_metadata import split_paths

    out = []
    for p in paths:
        p = Path(p)
        if not p.exists() and p.suffix == ".onnx":
            try:
                parts = split_paths(p)
            except Exception:
                parts = None
            if parts:
                out.extend(check_model(q) for q in parts.values())
                continue
        out.append(check_model(p))
    return out
