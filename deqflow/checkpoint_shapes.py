"""A checkpoint's tensor shapes and model config, read without PyTorch and without reading its weights.

The memory plan needs the model's widths before anything heavy is loaded: torch.save's zip archive keeps the
pickled structure (`data.pkl`) apart from the tensor bytes (`data/N`), so unpickling that one member with the
tensors replaced by their shapes costs kilobytes whatever the model's size. Only plain containers, numbers,
strings and torch's tensor-rebuild functions are accepted; anything else is refused, as torch's own
weights_only loader does.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deqflow.errors import CheckpointError


@dataclass(frozen=True)
class TensorShape:
    """Stands in for a tensor: its shape only."""

    shape: tuple[int, ...]


def _rebuild_tensor(storage, offset, size, *rest) -> TensorShape:
    return TensorShape(tuple(int(s) for s in size))


def _rebuild_parameter(data, *rest):
    return data


class _Storage:
    """Stands in for torch's storage classes (FloatStorage, ...)."""


_TORCH_NAMES = {"_rebuild_tensor_v2": _rebuild_tensor, "_rebuild_tensor": _rebuild_tensor,
                "_rebuild_parameter": _rebuild_parameter, "_rebuild_parameter_with_state": _rebuild_parameter}
_SAFE = {("collections", "OrderedDict"): collections.OrderedDict, ("builtins", "set"): set,
         ("builtins", "frozenset"): frozenset, ("builtins", "complex"): complex}


class _ShapeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in _TORCH_NAMES:
            return _TORCH_NAMES[name]
        if module == "torch" and (name.endswith("Storage") or name in ("float32", "float16", "bfloat16")):
            return _Storage
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint")

    def persistent_load(self, pid: Any) -> None:
        return None


def read_structure(path: str | os.PathLike) -> Any:
    """The checkpoint's pickled object with every tensor replaced by its TensorShape (CheckpointError for files
    that are not torch.save zip archives or hold foreign objects)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if member is None:
                raise CheckpointError(f"{path} is not a torch.save archive (no data.pkl inside)")
            data = archive.read(member)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); it is not a "
                              "torch.save zip archive or it is damaged") from None
    try:
        return _ShapeUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # pickle raises many types on garbage
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None


def state_dict_shapes(obj: Any) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the state dict inside a read_structure object (deqflow format, official, wrappers),
    without the DataParallel `module.` prefix."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        return {}
    shapes = {str(k): v.shape for k, v in obj.items() if isinstance(v, TensorShape)}
    if shapes and all(k.startswith("module.") for k in shapes):
        shapes = {k[len("module."):]: v for k, v in shapes.items()}
    return shapes


def model_config_of(obj: Any) -> dict:
    """The stored model config of a deqflow checkpoint ({} for official state dicts)."""
    config = obj.get("model_config") if isinstance(obj, dict) else None
    return dict(config) if isinstance(config, dict) else {}
