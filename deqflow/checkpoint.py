"""Checkpoint files: reading (safely, with integrity checks), recognising official DEQ-Flow state dicts,
writing atomically.

torch is imported inside the functions only, so `deqflow` stays importable without PyTorch.
Checkpoints are always read with `weights_only=True`: a checkpoint must never execute code.
A checkpoint is refused when its zip archive fails a CRC check, when a floating tensor holds NaN/Inf,
or when deqflow's own weights digest (recorded by `make_payload`) no longer matches: torch.load accepts
such files silently and the model then computes NaN.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deqflow.errors import CheckpointError
from deqflow.fileio import atomic_outputs

SHIPPED_CHECKPOINT = Path("checkpoints", "deqflow-T-synthetic.pth")
"""The shipped model, relative to the repository root (where `make demo` runs); its model card is the .md
next to it."""

FORMAT_NAME = "deqflow"
FORMAT_VERSION = 1
OFFICIAL_PREFIX = "module."
DIGEST_KEY = "weights_sha256"  # meta entry written by make_payload, verified by split_checkpoint
# write_checkpoint's temp names: <target>.<host hash>-<pid>.<8 random chars>.tmp (older: no host-pid part)
_LOCAL_HEADER = b"PK\x03\x04"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_checkpoint_file(path: str | os.PathLike) -> Any:
    """torch.load with weights_only=True and clear errors for missing, truncated, damaged or foreign files.

    The file is read once; a zip archive (torch.save's format) has every member's CRC checked before the
    same bytes are unpickled."""
    return read_checkpoint_and_sha256(path)[0]


def read_checkpoint_and_sha256(path: str | os.PathLike) -> tuple[Any, str]:
    """read_checkpoint_file's object and the sha256 of the bytes it read (the file is still read once)."""
    import torch

    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt*") if p.is_file())[:5]
        hint = f"; it holds {', '.join(inside)}: give one of them" if inside else ": give the checkpoint file's path"
        raise CheckpointError(f"{path} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    if not data.startswith((_LOCAL_HEADER, b"\x80")):  # torch's zip format, or a legacy pickle (protocol 2+)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is neither a zip archive (torch.save) "
                              f"nor a pickle (it starts with {data[:4]!r})")
    if data.startswith(_LOCAL_HEADER):
        verify_archive(data, path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), hashlib.sha256(data).hexdigest()
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors...
        raise _load_error(path, exc) from None


def _load_error(path: str | os.PathLike, exc: Exception) -> CheckpointError:
    text = str(exc)
    if "Unsupported operand" in text:  # an opcode the safe unpickler lacks: garbage bytes, or an old-style object
        return CheckpointError(f"cannot read checkpoint {path}: its pickle data is corrupt, or holds Python objects "
                               f"that deqflow refuses to unpickle (weights_only=True){_refusal_reason(text)}")
    if "Weights only load failed" in text or "Unsupported global" in text:
        return CheckpointError(
            f"{path} holds Python objects beyond tensors and plain containers; deqflow refuses to unpickle them "
            f"(weights_only=True){_refusal_reason(text)}. Re-save the state_dict alone.")
    msg = text.splitlines()[0] if text else type(exc).__name__
    return CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated, or not a "
                           f"PyTorch checkpoint ({type(exc).__name__}: {msg})")


def _refusal_reason(text: str) -> str:
    """The line of torch's weights-only refusal that names the object, e.g. ': Unsupported global: GLOBAL
    print was not an allowed global by default' (torch's message is many lines with advice for torch.load)."""
    for line in text.splitlines():
        if "unsupported" in line.lower():
            reason = line.strip().removeprefix("WeightsUnpickler error:").strip()
            return ": " + reason.split(". ")[0].rstrip(".")
    return ""


def verify_archive(data: bytes, path: str | os.PathLike = "checkpoint") -> None:
    """CheckpointError naming the first zip member whose bytes fail their CRC-32 (or whose header is
    damaged). torch.save stores members uncompressed, so each is checked in place in `data`."""
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, struct.error) as exc:  # truncated, most often
        raise _load_error(path, exc) from None
    view = memoryview(data)
    for member in members:
        start = member.header_offset
        if view[start:start + 4] != _LOCAL_HEADER:
            raise CheckpointError(f"checkpoint {path} is corrupt: the header of archive member "
                                  f"'{member.filename}' is damaged; restore or download the file again")
        name_len, extra_len = struct.unpack_from("<HH", data, start + 26)
        begin = start + 30 + name_len + extra_len
        if member.compress_type == zipfile.ZIP_STORED:
            good = zlib.crc32(view[begin:begin + member.compress_size]) == member.CRC
        else:
            good = _compressed_member_ok(data, member)
        if not good:
            raise CheckpointError(f"checkpoint {path} is corrupt: archive member '{member.filename}' fails its "
                                  "CRC check (the file changed after it was written); restore or download it again")


def _compressed_member_ok(data: bytes, member: zipfile.ZipInfo) -> bool:
    """zipfile checks the CRC while it inflates a compressed member (not written by torch.save)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            archive.read(member)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError):
        return False
    return True


def weights_digest(state_dict: Mapping[str, Any]) -> str:
    """sha256 over the tensors of a state dict, sorted by key: name, dtype, shape and bytes of each.

    Independent of dict order and of how a tensor is laid out in memory; recorded by make_payload."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor):
            h.update(f"{key}\0{type(value).__name__}\0".encode())
            continue
        t = value.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{key}\0{t.dtype}\0{tuple(value.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().data)
    return h.hexdigest()


def check_finite_weights(state_dict: Mapping[str, Any], path: str | os.PathLike = "checkpoint") -> None:
    """CheckpointError naming the first floating tensor that holds NaN or Inf.

    A tensor's sum is NaN/Inf when any value is (or when the sum overflows): only then is it checked value
    by value, which is slower."""
    import torch

    for key, value in state_dict.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        if not bool(torch.isfinite(value.sum())) and not bool(torch.isfinite(value).all()):
            nan = int(torch.isnan(value).sum())
            inf = int(torch.isinf(value).sum())
            raise CheckpointError(f"checkpoint {path} is damaged: tensor '{key}' holds {nan} NaN and {inf} Inf "
                                  f"of {value.numel()} values; restore the file or use another checkpoint")


def verify_weights(state_dict: Mapping[str, Any], meta: Mapping[str, Any],
                   path: str | os.PathLike = "checkpoint") -> None:
    """Every floating tensor finite, and the weights digest in `meta` (deqflow's own files) still matching.
    Files without a digest (official checkpoints, older deqflow files) get the finiteness check only."""
    check_finite_weights(state_dict, path)
    recorded = meta.get(DIGEST_KEY)
    if recorded:
        actual = weights_digest(state_dict)
        if actual != recorded:
            raise CheckpointError(f"checkpoint {path} was modified or damaged after it was written: its weights "
                                  f"no longer match their recorded digest ({DIGEST_KEY} {str(recorded)[:12]}..., "
                                  f"now {actual[:12]}...); restore the file or use another checkpoint")


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = OFFICIAL_PREFIX) -> dict[str, Any]:
    """Remove a DataParallel/DDP `module.` prefix when every key has it."""
    keys = list(state_dict)
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def split_checkpoint(obj: Any, path: str = "checkpoint") -> tuple[dict[str, Any], dict | None, dict]:
    """-> (state_dict without prefix, model config dict or None, metadata), weights verified.

    Accepts the toolkit format, an official DEQ-Flow state dict, and the common wrappers
    {'state_dict': ...} / {'model': ...}.
    """
    state_dict, config, meta = _unwrap(obj, path)
    verify_weights(state_dict, meta, path)
    return state_dict, config, meta


def _unwrap(obj: Any, path: str) -> tuple[dict[str, Any], dict | None, dict]:
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
    the final name, and the next write removes the temporary file a killed writer left behind."""
    import torch

    with atomic_outputs(path) as (tmp,):
        torch.save(dict(payload), tmp)
    return Path(path)


def make_payload(state_dict: Mapping[str, Any], model_config: Mapping[str, Any],
                 meta: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The toolkit's checkpoint envelope: weights + the config to rebuild the model + metadata (with the
    weights digest that the reader verifies)."""
    from deqflow import __version__

    meta = {"toolkit_version": __version__, **(meta or {}), DIGEST_KEY: weights_digest(strip_prefix(state_dict))}
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model_config": dict(model_config),
            "state_dict": dict(state_dict), "meta": meta, **extra}
