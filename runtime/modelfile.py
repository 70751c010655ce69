"""What a model file is: a PyTorch checkpoint, an ONNX export (unrolled / loop / split) or a TensorRT engine.

ONNX exports describe themselves through the deqflow metadata in `metadata_props` (deqflow.model_metadata,
which needs only `onnx`); engines carry the same metadata in their JSON sidecar. A split export is three
files (`model.encoder.onnx`, `model.step.onnx`, `model.decode.onnx`); any of them, or the base name
`model.onnx` given to the exporter, names the whole set (likewise `model.engine` for split engines).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from deqflow.errors import FileFormatError, InputError
from deqflow.model_metadata import (
    CHECKPOINT_SUFFIXES,
    ENGINE_SUFFIXES,
    FULL_LAYOUTS,
    ONNX_SUFFIX,
    ModelMetadata,
    split_paths,
)
from deqflow.onnx_integrity import load_onnx_checked
from runtime.tensorrt.cache import engine_metadata, split_engine_paths


@dataclass
class ModelFile:
    """A resolved model: kind 'checkpoint' | 'onnx' | 'engine', layout, part paths and their metadata."""

    path: Path
    kind: str
    layout: str | None = None
    parts: dict[str, Path] = field(default_factory=dict)  # {'model': p} or {'encoder','step','decode'}
    metadata: dict[str, ModelMetadata] = field(default_factory=dict)  # part -> its metadata (none: checkpoint)
    weights_digest: dict[str, str] = field(default_factory=dict)  # part -> sha256 of its weights (ONNX files)

    @property
    def digest(self) -> str:
        """One short identity of the weights for messages and manifests ('' when not computed)."""
        return "+".join(d[:12] for d in self.weights_digest.values())

    @property
    def is_split(self) -> bool:
        return self.layout == "split"

    @property
    def main(self) -> ModelMetadata | None:
        """Metadata of the file that carries the solver settings (the model, or the split step)."""
        return self.metadata.get("model") or self.metadata.get("step")

    def exported(self) -> ModelMetadata:
        """`main` of an ONNX export or engine (InputError for a checkpoint, which has no export metadata)."""
        if self.main is None:
            raise InputError(f"{self.path} is a {self.kind}, not an exported model (ONNX export or engine)")
        return self.main

    def describe(self) -> dict:
        m = self.main
        out = {"path": str(self.path), "kind": self.kind, "layout": self.layout,
               "parts": {k: str(v) for k, v in self.parts.items()}}
        if m is not None:
            out.update(variant=m.variant, iterations=m.iterations, tolerance=m.tolerance, stop_mode=m.stop_mode,
                       precision=m.precision, lookup=m.lookup, height=m.height, width=m.width, batch=m.batch,
                       dynamic=m.dynamic, checkpoint_sha256=m.checkpoint_sha256,
                       stop_rule=m.stop_rule().describe())
        return out


def open_model_file(path: str | os.PathLike) -> ModelFile:
    """Resolve `path` into a ModelFile; FileFormatError for missing files or ONNX files without metadata."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        if not p.is_file():
            raise FileFormatError(f"checkpoint not found: {p}")
        return ModelFile(path=p, kind="checkpoint", parts={"model": p})
    if suffix in ENGINE_SUFFIXES:
        return open_engine(p)
    if suffix != ONNX_SUFFIX:
        raise InputError(f"cannot tell what {p} is from its extension: expected a checkpoint "
                         f"({', '.join(CHECKPOINT_SUFFIXES)}), an ONNX export ({ONNX_SUFFIX}) or a TensorRT engine "
                         f"({', '.join(ENGINE_SUFFIXES)})")
    return open_onnx(p)


def open_onnx(p: Path) -> ModelFile:
    """An ONNX export: one full-layout file, or the split set named by any of its files or its base name."""
    if p.is_file():
        meta, digest = read_checked(p)
        if meta.layout in FULL_LAYOUTS:
            return ModelFile(path=p, kind="onnx", layout=meta.layout, parts={"model": p}, metadata={"model": meta},
                             weights_digest={"model": digest})
        if meta.layout != "split":
            raise FileFormatError(f"{p}: unknown layout {meta.layout!r} in its deqflow metadata")
    try:
        parts = split_paths(p)
    except FileFormatError:
        if not p.exists():
            raise FileFormatError(f"model file not found: {p} (nor a split export {p.stem}.encoder.onnx / "
                                  f".step.onnx / .decode.onnx beside it)") from None
        raise
    checked = {part: read_checked(q) for part, q in parts.items()}
    metas = {part: meta for part, (meta, _) in checked.items()}
    check_split_set(p, parts, metas)
    return ModelFile(path=p, kind="onnx", layout="split", parts=dict(parts), metadata=metas,
                     weights_digest={part: digest for part, (_, digest) in checked.items()})


def read_checked(p: Path) -> tuple[ModelMetadata, str]:
    """One full read of an ONNX file: its weights checked (deqflow.onnx_integrity: finite, digest) and its
    deqflow metadata, from the same parsed model."""
    model, digest = load_onnx_checked(p)
    props = {prop.key: prop.value for prop in model.metadata_props}
    return ModelMetadata.from_props(props, source=str(p)), digest


def open_engine(path: Path) -> ModelFile:
    """A TensorRT engine (`model.engine`) or a split set (`model.encoder.engine`, ... beside it)."""
    if path.is_file():
        meta = engine_metadata(path)
        return ModelFile(path=path, kind="engine", layout=meta.layout, parts={"model": path},
                         metadata={"model": meta})
    parts = split_engine_paths(path)
    if not all(p.is_file() for p in parts.values()):
        stem, suffix = path.name[: -len(path.suffix)], path.suffix
        raise FileFormatError(f"engine not found: {path} (nor a split set {stem}.encoder{suffix} / "
                              f".step / .decode beside it)")
    return ModelFile(path=path, kind="engine", layout="split", parts=parts,
                     metadata={part: engine_metadata(p) for part, p in parts.items()})


def check_split_set(p: Path, parts: dict[str, Path], metas: dict[str, ModelMetadata]) -> None:
    """FileFormatError unless the three files are the matching parts of one split export."""
    for part, m in metas.items():
        if m.layout != "split" or m.part != part:
            raise FileFormatError(f"{parts[part]} should be the '{part}' part of a split export, but its metadata "
                                  f"says layout {m.layout!r}, part {m.part!r}")
    shas = {m.checkpoint_sha256 for m in metas.values()}
    if len(shas) > 1:
        raise FileFormatError(f"the split files beside {p} come from different checkpoints ({sorted(shas)}); "
                              "re-export them together")
