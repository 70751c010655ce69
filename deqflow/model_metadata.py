"""Self-describing model files: the deqflow settings stored in an ONNX file's `metadata_props`, their typed
schema, reader and the naming of split exports and engines.

Written by `deqflow export`, read by the export checks and the runtime, which knows from them the input
convention, the solver and the layout of a file without guessing from tensor names. Torch-free; `onnx` is
imported only to read a file.
"""

from __future__ import annotations

import json
import os
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from deqflow.errors import FileFormatError
from deqflow.shapes import ShapeProfiles
from deqflow.solver_spec import StopRule

if typing.TYPE_CHECKING:
    import onnx

PREFIX = "deqflow."
FORMAT_VERSION = 1
INPUT_RANGE = "0-255"  # official DEQ-Flow/RAFT convention: float RGB in 0..255, channels first
PAD_MULTIPLE = 8

LAYOUTS = ("unrolled", "loop", "split")
FULL_LAYOUTS = ("unrolled", "loop")
"""Layouts whose one graph runs the whole solver (part 'model')."""
SPLIT_PARTS = ("encoder", "step", "decode")
"""The files of the split layout, in run order."""
IMAGE_PARTS = ("model", "encoder")
"""The parts that take the images (the only inputs with dynamic shapes, hence with a shape profile)."""
ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".tar")
REQUIRED = ("variant", "layout", "part", "iterations")
STOP_EXITS = {"unrolled": ("cap",), "loop": ("tolerance", "cap"), "split": ("tolerance", "stalled", "cap")}
"""What can end the solve of each layout: a graph cannot run the stagnation test (it needs the residual
history), so the Loop exits on its tolerance and its trip count only; the split layout's host loop does all."""


@dataclass
class ModelMetadata:
    """What a deqflow ONNX file says about itself (one per file; the split layout has three files).

    layout: 'unrolled' | 'loop' | 'split'; part: 'model' for unrolled/loop, else 'encoder'|'step'|'decode'.
    parts: for split, {part: file name} of the sibling files (same folder).
    iterations: unrolled: steps written out; loop: trip count M (the cap); split: recommended host cap.
    tolerance: loop: early-exit threshold inside the graph (0 = never); split: recommended host stop rule.
    stall_window / stall_margin: split: the host loop's stagnation exit (0 = off); always 0 for unrolled and
    loop files, whose graphs cannot do it (`stop_exits` lists what ends their solve).
    flow_tol: split: the host loop's flow-step exit (StopRule.flow_tol; 0 = off, also when a file lacks it).
    warm_flow_tol: split: the model's own flow-step exit of warm-started solves (StopRule.warm_flow_tol; 0 = none:
    warm starts follow the cold rule, also when a file lacks it).
    context_names: split: encoder outputs that the step graph takes unchanged (besides net, coords1).
    shape_hints: dynamic exports: {'min'|'opt'|'max': {input name: shape}}; static: the fixed shapes.
    """

    variant: str
    layout: str
    part: str
    iterations: int
    solver: str = "fixed_point"
    tolerance: float = 0.0
    stop_mode: str = "abs"
    stall_window: int = 0
    stall_margin: float = 0.01
    flow_tol: float = 0.0
    warm_flow_tol: float = 0.0
    stop_exits: list[str] = field(default_factory=list)
    precision: str = "fp32"
    lookup: str = "gather"
    opset: int = 17
    dynamic: bool = False
    batch: int = 1
    height: int = 0
    width: int = 0
    shape_hints: ShapeProfiles = field(default_factory=dict)
    input_range: str = INPUT_RANGE
    pad_multiple: int = PAD_MULTIPLE
    flow_init: bool = True
    hidden_dim: int = 0
    corr_levels: int = 4
    corr_radius: int = 4
    parts: dict[str, str] = field(default_factory=dict)
    context_names: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    checkpoint: str = ""
    checkpoint_sha256: str = ""
    toolkit_version: str = ""
    exporter: str = ""
    format_version: int = FORMAT_VERSION

    def to_props(self) -> dict[str, str]:
        """Flat string key/values for `metadata_props` (JSON for lists, dicts and booleans)."""
        return {PREFIX + k: json.dumps(v) if isinstance(v, (list, dict, bool)) else str(v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        """The metadata in `props` (FileFormatError when absent, malformed or from a newer toolkit)."""
        types = typing.get_type_hints(cls)
        values = {f.name: _parse_value(types[f.name], props[PREFIX + f.name], f"{source}: metadata {PREFIX}{f.name}")
                  for f in fields(cls) if PREFIX + f.name in props}
        missing = [n for n in REQUIRED if n not in values]
        if missing:
            keys = ", ".join(PREFIX + m for m in missing)
            raise FileFormatError(f"{source} carries no deqflow export metadata (missing {keys}); was it written "
                                  "by `deqflow export`?")
        version = int(values.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise FileFormatError(f"{source}: metadata format {version} is newer than this toolkit understands "
                                  f"({FORMAT_VERSION}); update deqflow")
        return cls(**values)

    def stop_rule(self) -> StopRule:
        """The stop rule this file's solve follows (the graph's own, or the split layout's recommendation)."""
        split = self.layout == "split"
        return StopRule(tol=self.tolerance if self.layout != "unrolled" else 0.0, stop_mode=self.stop_mode,
                        max_iter=self.iterations, stall_window=self.stall_window if split else 0,
                        stall_margin=self.stall_margin, flow_tol=self.flow_tol if split else 0.0,
                        warm_flow_tol=self.warm_flow_tol if split else 0.0)

    def sibling_paths(self, path: str | os.PathLike) -> dict[str, Path]:
        """Split layout: {part: path} of the three files, resolved next to `path`."""
        folder = Path(path).parent
        return {part: folder / name for part, name in self.parts.items()}


def _parse_value(kind: type, raw: str, where: str) -> int | float | str | bool | list | dict:
    """One metadata string as the schema's type: int / float / str as written, the rest as JSON."""
    try:
        if kind in (int, float, str):
            return kind(raw)
        value = json.loads(raw)
    except ValueError as exc:
        raise FileFormatError(f"{where}={raw!r} is malformed ({exc})") from None
    expected = typing.get_origin(kind) or kind
    if not isinstance(value, expected):
        raise FileFormatError(f"{where}={raw!r} is malformed (expected {expected.__name__})")
    return value


def load_model_proto(path: str | os.PathLike, load_weights: bool = True) -> onnx.ModelProto:
    """onnx.load with a FileFormatError for missing, empty, truncated or non-ONNX files."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"ONNX file not found: {path}")
    if path.stat().st_size == 0:
        raise FileFormatError(f"{path} is empty (0 bytes), not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except (DecodeError, RuntimeError, ValueError, OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{path} is not a readable ONNX model (corrupt or truncated?): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    except Exception as exc:  # protobuf raises a few other types on garbage
        raise FileFormatError(f"{path} is not a readable ONNX model: {type(exc).__name__}: {exc}") from None
    if model.ir_version <= 0 or not model.opset_import or not model.graph.output:
        raise FileFormatError(f"{path} is not an ONNX model (no IR version, opset or graph outputs: corrupt, "
                              "truncated, or another file type)")
    return model


def read_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The deqflow metadata of an exported file (any layout/part). Raises FileFormatError if absent."""
    model = load_model_proto(path, load_weights=False)
    props = {p.key: p.value for p in model.metadata_props}
    return ModelMetadata.from_props(props, source=str(path))


def split_part_names(path: str | os.PathLike, suffix: str = ONNX_SUFFIX) -> dict[str, str]:
    """`out/model.onnx` -> {'encoder': 'model.encoder.onnx', 'step': 'model.step.onnx', 'decode': ...};
    with suffix '.engine': `model.engine` -> 'model.encoder.engine', ..."""
    name = Path(path).name
    stem = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
    return {part: f"{stem}.{part}{suffix}" for part in SPLIT_PARTS}


def split_paths(path: str | os.PathLike) -> dict[str, Path]:
    """Paths of the split layout's encoder/step/decode files, from the base name given to the exporter
    (`model.onnx` -> `model.encoder.onnx`, ...) or from any of the three files."""
    path = Path(path)
    if path.is_file():
        meta = read_metadata(path)
        if meta.layout != "split":
            raise FileFormatError(f"{path} is a '{meta.layout}' export, not a split one")
        return meta.sibling_paths(path)
    found = {part: path.parent / name for part, name in split_part_names(path).items()}
    if not all(p.is_file() for p in found.values()):
        missing = ", ".join(str(p) for p in found.values() if not p.is_file())
        raise FileFormatError(f"no split export at {path}: missing {missing}")
    return found
