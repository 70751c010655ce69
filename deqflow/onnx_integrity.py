"""ONNX model files: readable, every weight finite and, for deqflow's own exports, unchanged since export.

Bit rot inside a weight tensor keeps the protobuf readable and passes onnx.checker; ONNX Runtime then
computes NaN or a silently wrong flow. The weights are the graph's initializers (Loop/If/Scan bodies
included, external data resolved) and the tensors held by node attributes (Constant nodes). `deqflow
export` records their digest in `metadata_props`; the loaders verify it when present. onnx is imported
inside the functions and numpy is the only other dependency: the runtime uses this without PyTorch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deqflow.errors import FileFormatError
from deqflow.finite_check import count_nonfinite

DIGEST_PROP = "deqflow.weights_sha256"  # same key scheme as export.metadata's other props


def iter_weights(graph: Any, scope: str = "") -> Iterator[tuple[str, str, Any]]:
    """(kind, name, TensorProto) of every weight of `graph` and of its subgraphs, in graph order.

    kind: 'initializer' or 'constant' (a node's tensor attribute, named `<node>/<attribute>`); weights of
    a Loop/If/Scan body are prefixed with `<node>/<attribute>/`."""
    from onnx import AttributeProto

    for tensor in graph.initializer:
        yield "initializer", scope + tensor.name, tensor
    for sparse in graph.sparse_initializer:
        yield "initializer", scope + sparse.values.name, sparse.values
    for index, node in enumerate(graph.node):
        where = f"{scope}{node.name or f'{node.op_type}#{index}'}/"
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield "constant", where + attr.name, attr.t
            elif attr.type == AttributeProto.TENSORS:
                for j, tensor in enumerate(attr.tensors):
                    yield "constant", f"{where}{attr.name}[{j}]", tensor
            elif attr.type == AttributeProto.GRAPH:
                yield from iter_weights(attr.g, f"{where}{attr.name}/")
            elif attr.type == AttributeProto.GRAPHS:
                for j, sub in enumerate(attr.graphs):
                    yield from iter_weights(sub, f"{where}{attr.name}[{j}]/")


def scan_weights(model: Any, source: str | os.PathLike = "model", base_dir: str | os.PathLike = "") -> str:
    """Digest of the model's weights (sha256 over kind, name, type, shape and bytes of each, in graph
    order); FileFormatError naming the first weight that holds NaN/Inf or cannot be read. External data
    not loaded into the model is read from `base_dir`."""
    from onnx import numpy_helper

    digest = hashlib.sha256()
    for kind, name, tensor in iter_weights(model.graph):
        try:
            array = numpy_helper.to_array(tensor, str(base_dir))
        except Exception as exc:  # missing or short external data file, malformed tensor
            raise FileFormatError(f"{source}: cannot read ONNX {kind} '{name}' ({type(exc).__name__}: "
                                  f"{_first_line(exc)}); the file or its external data is damaged") from None
        bad = None if array.dtype.kind == "O" else count_nonfinite(array)
        if bad is not None:
            raise FileFormatError(f"{source} is damaged: ONNX {kind} '{name}' holds {bad[0]} NaN and {bad[1]} Inf "
                                  f"of {array.size} values; export the model again")
        digest.update(f"{kind}\0{name}\0{tensor.data_type}\0{tuple(tensor.dims)}\0".encode())
        digest.update(b"\0".join(tensor.string_data) if array.dtype.kind == "O" else array.tobytes())
    return digest.hexdigest()


def record_weights_digest(model: Any) -> str:
    """Store the weights digest in the model's metadata_props (replacing an older one); call it last before
    saving, after every graph change. Returns the digest."""
    value = scan_weights(model, "the exported model")
    for prop in model.metadata_props:
        if prop.key == DIGEST_PROP:
            prop.value = value
            return value
    entry = model.metadata_props.add()
    entry.key, entry.value = DIGEST_PROP, value
    return value


def recorded_digest(model: Any) -> str | None:
    """The digest recorded at export, or None (files written by other tools or older deqflow versions)."""
    return next((p.value for p in model.metadata_props if p.key == DIGEST_PROP), None) or None


def check_onnx_weights(model: Any, source: str | os.PathLike = "model", base_dir: str | os.PathLike = "") -> str:
    """Every weight finite, and the recorded digest (when there is one) matching; returns the digest.

    FileFormatError with one line naming `source` and the weight or the digests otherwise."""
    actual = scan_weights(model, source, base_dir)
    recorded = recorded_digest(model)
    if recorded is not None and recorded != actual:
        raise FileFormatError(f"{source} was modified or damaged after export: its weights no longer match the "
                              f"digest recorded by deqflow export ({DIGEST_PROP} {recorded[:12]}..., now "
                              f"{actual[:12]}...); export the model again")
    return actual


def load_onnx_checked(path: str | os.PathLike):
    """onnx.load (external data included) with a one-line FileFormatError, then check_onnx_weights.

    Returns (model, weights digest)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, RuntimeError, UnicodeDecodeError, ... on damaged bytes
        raise FileFormatError(f"{path} is not a readable ONNX model (corrupt or truncated?): "
                              f"{type(exc).__name__}: {_first_line(exc)}") from None
    return model, check_onnx_weights(model, path, path.parent)


def verify_onnx_file(path: str | os.PathLike) -> str:
    """Refuse a damaged ONNX file (unreadable, a non-finite weight, a digest mismatch) before it is run;
    returns its weights digest (for error messages and run manifests)."""
    return load_onnx_checked(path)[1]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
