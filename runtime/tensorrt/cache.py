"""Engine files and the engine cache. Every engine has a JSON sidecar (`model.engine.json`) with the
TensorRT version, GPU, build settings and the export's model metadata; the cache keys engines by the ONNX
bytes, TensorRT version, GPU and build settings. Plans and sidecars are written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from deqflow.checkpoint import sha256_file
from deqflow.errors import EngineMismatchError, FileFormatError
from deqflow.fileio import atomic_write_bytes
from deqflow.model_metadata import ModelMetadata, read_metadata, split_part_names
from runtime.versions import version_info

SIDECAR_FORMAT = "deqflow-tensorrt-engine"
SIDECAR_VERSION = 1
DEFAULT_ENGINE_SUFFIX = ".engine"
DEFAULT_CACHE = Path(os.environ.get("DEQFLOW_ENGINE_CACHE", Path.home() / ".cache" / "deqflow" / "engines"))


class KeyedSettings(Protocol):
    def key_dict(self) -> dict:
        """The settings that change the engine."""


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu: str, settings: KeyedSettings | Mapping,
                     compute_capability: str = "") -> str:
    """Cache key of an engine: the ONNX bytes, the TensorRT version, the GPU and every build setting that
    changes the plan (shapes, precision, TF32, workspace, optimization level)."""
    key = dict(settings) if isinstance(settings, Mapping) else settings.key_dict()
    blob = json.dumps({"onnx": onnx_sha256, "tensorrt": str(trt_version), "gpu": str(gpu),
                       "cc": str(compute_capability), "build": key}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{engine}.json")


def sidecar_info(onnx_path: str | os.PathLike, build: dict, trt_version: str, gpu: str, cc: str, key: str) -> dict:
    """The sidecar of an engine built from `onnx_path` with the build settings `build` (their key_dict)."""
    meta = read_metadata(onnx_path)
    return {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "tensorrt": trt_version, "gpu": gpu,
            "compute_capability": cc, "onnx": str(onnx_path), "onnx_sha256": sha256_file(onnx_path),
            "cache_key": key, "build": build, "metadata": meta.to_props(), "layout": meta.layout,
            "part": meta.part, "versions": version_info()}


def read_sidecar(engine: str | os.PathLike) -> dict:
    """The sidecar of `engine`; FileFormatError when it is missing or not a deqflow engine description."""
    p = sidecar_path(engine)
    if not p.is_file():
        raise FileFormatError(f"{engine} has no {p.name} beside it: deqflow keeps the engine's TensorRT version, "
                              "GPU, shapes and model metadata there; rebuild with deqflow build")
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise FileFormatError(f"{p} is not readable JSON ({exc})") from None
    if info.get("format") != SIDECAR_FORMAT:
        raise FileFormatError(f"{p} is not a deqflow engine description (format {info.get('format')!r})")
    return info


def engine_metadata(engine: str | os.PathLike) -> ModelMetadata:
    """The export metadata an engine's sidecar carries."""
    return ModelMetadata.from_props(read_sidecar(engine).get("metadata", {}), str(engine))


def write_engine(path: str | os.PathLike, plan: bytes, info: dict) -> Path:
    """Engine + sidecar, each written atomically (plan first, so a sidecar never describes a missing plan)."""
    atomic_write_bytes(path, plan)
    atomic_write_bytes(sidecar_path(path), json.dumps(info, indent=2).encode())
    return Path(path)


def split_engine_paths(output: str | os.PathLike) -> dict[str, Path]:
    """`out/model.engine` -> {'encoder': out/model.encoder.engine, 'step': ..., 'decode': ...}."""
    out = Path(output)
    names = split_part_names(out, out.suffix or DEFAULT_ENGINE_SUFFIX)
    return {part: out.with_name(name) for part, name in names.items()}


def check_engine_compat(info: dict, trt_version: str, gpu: str, compute_capability: str = "",
                        path: str = "engine") -> None:
    """EngineMismatchError when an engine was built by another TensorRT version or for another GPU."""
    problems = []
    if info.get("tensorrt") and str(info["tensorrt"]) != str(trt_version):
        problems.append(f"TensorRT {info['tensorrt']} (this is {trt_version})")
    if info.get("gpu") and gpu and str(info["gpu"]) != str(gpu):
        problems.append(f"GPU {info['gpu']} (this is {gpu})")
    elif info.get("compute_capability") and compute_capability and \
            str(info["compute_capability"]) != str(compute_capability):
        problems.append(f"compute capability {info['compute_capability']} (this is {compute_capability})")
    if problems:
        onnx = info.get("onnx")
        how = (f"rebuild it: deqflow build --onnx {onnx} --output {path}" if onnx else
               "rebuild it from its ONNX export with deqflow build")
        raise EngineMismatchError(f"{path} was built for {' and '.join(problems)}; TensorRT engines only run on "
                                  f"the TensorRT version and GPU they were built with: {how} (or pass "
                                  "rebuild=True / --rebuild to rebuild automatically from the ONNX file)")


class EngineCache:
    """Serialized engines by cache key in a folder (plan + JSON sidecar)."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else DEFAULT_CACHE

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{DEFAULT_ENGINE_SUFFIX}"

    def load(self, key: str) -> tuple[bytes, dict] | None:
        p = self.path(key)
        if not p.is_file() or not sidecar_path(p).is_file():
            return None
        return p.read_bytes(), read_sidecar(p)

    def store(self, key: str, plan: bytes, info: dict) -> Path:
        return write_engine(self.path(key), plan, info)
