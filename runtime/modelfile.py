"""What a model file is: a PyTorch checkpoint, an ONNX export (unrolled / loop / split) or a TensorRT engine.

ONNX exports describe themselves through the deqflow metadata in `metadata_props` (written by `deqflow
export`, read with `export.metadata`, which needs only `onnx`). A split export is three files
(`model.encoder.onnx`, `model.step.onnx`, `model.decode.onnx`); any of them, or the base name `model.onnx`
given to the exporter, names the whole set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import FileFormatError, InputError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".tar")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
FULL_LAYOUTS = ("unrolled", "loop")


@dataclass
class ModelFile:
    """A resolved model: kind 'checkpoint' | 'onnx' | 'engine', layout, part paths and their metadata."""

    path: Path
    kind: str
    layout: str | None = None
    parts: dict[str, Path] = field(default_factory=dict)  # {'model': p} or {'encoder','step','decode'}
    metadata: dict[str, Any] = field(default_factory=dict)  # part -> export.metadata.ModelMetadata

    @property
    def is_split(self) -> bool:
        return self.layout == "split"

    @property
    def main(self) -> Any:
        """Metadata of the file that carries the solver settings (the model, or the split step)."""
        return self.metadata.get("model") or self.metadata.get("step")

    def describe(self) -> dict:
        m = self.main
        out = {"path": str(self.path), "kind": self.kind, "layout": self.layout,
               "parts": {k: str(v) for k, v in self.parts.items()}}
        if m is not None:
            out.update(variant=m.variant, iterations=m.iterations, tolerance=m.tolerance, stop_mode=m.stop_mode,
                       precision=m.precision, lookup=m.lookup, height=m.height, width=m.width, batch=m.batch,
                       dynamic=m.dynamic, checkpoint_sha256=m.checkpoint_sha256)
        return out


def read_onnx_metadata(path: str | os.PathLike):
    """export.metadata.read_metadata (the exporter's own reader; FileFormatError when absent)."""
    from export.metadata import read_metadata

    return read_metadata(path)


def open_model_file(path: str | os.PathLike) -> ModelFile:
    """Resolve `path` into a ModelFile; FileFormatError for missing files or ONNX files without metadata."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        if not p.is_file():
            raise FileFormatError(f"checkpoint not found: {p}")
        return ModelFile(path=p, kind="checkpoint", parts={"model": p})
    if suffix in ENGINE_SUFFIXES:
        from runtime.tensorrt_engine import resolve_engine_file

        return resolve_engine_file(p)
    if suffix != ".onnx":
        raise InputError(f"cannot tell what {p} is from its extension: expected a checkpoint "
                         f"({', '.join(CHECKPOINT_SUFFIXES)}), an ONNX export (.onnx) or a TensorRT engine "
                         f"({', '.join(ENGINE_SUFFIXES)})")
    if p.is_file():
        meta = read_onnx_metadata(p)
        if meta.layout in FULL_LAYOUTS:
            return ModelFile(path=p, kind="onnx", layout=meta.layout, parts={"model": p}, metadata={"model": meta})
        if meta.layout != "split":
            raise FileFormatError(f"{p}: unknown layout {meta.layout!r} in its deqflow metadata")
    from export.metadata import split_paths

    try:
        parts = split_paths(p)
    except FileFormatError:
        if not p.exists():
            raise FileFormatError(f"model file not found: {p} (nor a split export {p.stem}.encoder.onnx / "
                                  f".step.onnx / .decode.onnx beside it)") from None
        raise
    metas = {part: read_onnx_metadata(q) for part, q in parts.items()}
    for part, m in metas.items():
        if m.layout != "split" or m.part != part:
            raise FileFormatError(f"{parts[part]} should be the '{part}' part of a split export, but its metadata "
                                  f"says layout {m.layout!r}, part {m.part!r}")
    shas = {m.checkpoint_sha256 for m in metas.values()}
    if len(shas) > 1:
        raise FileFormatError(f"the split files beside {p} come from different checkpoints ({sorted(shas)}); "
                              "re-export them together")
    return ModelFile(path=p, kind="onnx", layout="split", parts=dict(parts), metadata=metas)
