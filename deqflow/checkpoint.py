"""Checkpoint files: reading (safely), recognising official DEQ-Flow state dicts, writing atomically.

torch is imported inside the functions only, so `deqflow` stays importable without PyTorch.
Checkpoints are always read with `weights_only=True`: a checkpoint must never execute code.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deqflow.errors import CheckpointError
from deqflow.fileio import atomic_outputs

FORMAT_NAME = "deqflow"
FORMAT_VERSION = 1
OFFICIAL_PREFIX = "module."

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True and clear errors for missing, truncated or foreign files."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip format, or a legacy pickle (protocol 2+)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is neither a zip archive (torch.save) "
                              f"nor a pickle (it starts with {head!r})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Unsupported global" in str(exc) or "Unsupported operand" in str(exc):
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors and plain containers; deqflow refuses to "
                f"unpickle them (weights_only=True). Re-save the state_dict alone. ({msg})") from None
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated, or not a "
                              f"PyTorch checkpoint ({type(exc).__name__}: {msg})") from None


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = OFFICIAL_PREFIX) -> dict[str, Any]:
    """Remove a DataParallel/DDP `module.` prefix when every key has it."""
    keys = list(state_dict)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def split_checkpoint(obj: Any, path: str = "checkpoint") -> tuple[dict[str, Any], dict | None, dict]:
    """-> (state_dict without prefix, model config dict or None, metadata).

    Accepts the toolkit format, an official DEQ-Flow state dict, and the common wrappers
    {'state_dict': ...} / {'model': ...}.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not contain a state dict (found {type(obj).__name__})")
    if obj.get("format") == FORMAT_NAME:
        for key in ("state_dict", "model_config"):
            if key not in obj:
                raise CheckpointError(f"{path} is a deqflow checkpoint without '{key}'; it is damaged")
        return strip_prefix(obj["state_dict"]), dict(obj["model_config"]), dict(obj.get("meta", {}))
    for wrapper in ("state_dict", "model"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            return strip_prefix(obj[wrapper]), None, {}
    import torch

    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is neither a deqflow checkpoint nor a state dict: non-tensor entries "
                              f"{bad[:5]}")
    return strip_prefix(obj), None, {"source_format": "official"}


def write_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """torch.save, atomically (deqflow.fileio): a killed run never leaves a half-written checkpoint under
    the final name."""
    import torch

    with atomic_outputs(path) as (tmp,):
        torch.save(dict(payload), tmp)
    return Path(path)


def make_payload(state_dict: Mapping[str, Any], model_config: Mapping[str, Any],
                 meta: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The toolkit's checkpoint envelope: weights + the config to rebuild the model + metadata."""
    from deqflow import __version__

    meta = {"toolkit_version": __version__, **(meta or {})}
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_config": dict(model_config),
            "state_dict": dict(state_dict), "meta": meta, **extra}
