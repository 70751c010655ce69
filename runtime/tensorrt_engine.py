"""TensorRT engines from deqflow's ONNX exports: build (profiles, TF32, timing cache, TRT 10 vs 11 typing),
cache (keyed by ONNX sha256 + TensorRT version + GPU + shapes + settings, atomic writes), compatibility
checks, and execution with the name-based API (TensorRT 10/11: `set_input_shape`, `set_tensor_address`,
`execute_async_v3` on a non-default stream), optional CUDA-graph capture with a fallback.

Nothing here imports tensorrt / torch / cuda-python at module level. The pure parts (cache key, profile
checks, sidecar compatibility, build-setting validation) are unit-tested without a GPU; everything that
touches TensorRT follows the TensorRT 10/11 Python API documentation and deployment.md section 3, but has
not been run on a GPU in this repository's CI (see docs/runtime.md, "GPU").

Precision: TensorRT 10.x builds float32 by default and lowers precision with `BuilderFlag.FP16` on weakly
typed networks ('fp16' here). TensorRT 11 is always strongly typed and has no FP16 flag: precision comes from
the graph, i.e. a `--precision mixed16` export built with precision 'graph' (on TensorRT 10 'graph' sets
`NetworkDefinitionCreationFlag.STRONGLY_TYPED`). Asking TensorRT 11 for 'fp16' is an error, never a silent
float32 engine (roboflow/rf-detr#1453).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deqflow.checkpoint import sha256_file
from deqflow.image_io import atomic_write_bytes
from runtime.errors import EngineMismatchError, FileFormatError, InputError, ProfileError, missing_dependency

PRECISIONS = ("fp32", "fp16", "graph")
SIDECAR_FORMAT = "deqflow-tensorrt-engine"
SIDECAR_VERSION = 1
DEFAULT_CACHE = Path(os.environ.get("DEQFLOW_ENGINE_CACHE", Path.home() / ".cache" / "deqflow" / "engines"))


def import_tensorrt():
    """The tensorrt module, or one MissingDependencyError saying what to install."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise missing_dependency("tensorrt", "the tensorrt backend / deqflow build", str(exc)) from None
    return trt


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


# --- settings, cache key, profiles (pure) ----------------------------------------------------------------


@dataclass
class BuildSettings:
    """How to build an engine. profiles: {'min'|'opt'|'max': {input name: shape}} for dynamic inputs."""

    profiles: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    precision: str = "fp32"  # 'fp32' | 'fp16' (TensorRT 10 weak typing) | 'graph' (strongly typed)
    tf32: bool = False  # float32 reference engines are built without TF32 (deployment.md 5.4)
    workspace_mb: int | None = None
    optimization_level: int | None = None  # builder_optimization_level 0..5 (TensorRT default 3)
    timing_cache: str | None = None  # file read before and written after the build

    def validate(self, trt_version: str | None = None, onnx_precision: str | None = None) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimization_level is not None and not 0 <= int(self.optimization_level) <= 5:
            raise InputError(f"builder optimization level must be 0..5, got {self.optimization_level}")
        if self.workspace_mb is not None and int(self.workspace_mb) < 1:
            raise InputError(f"workspace must be >= 1 MiB, got {self.workspace_mb}")
        if trt_version is not None and trt_major(trt_version) >= 11 and self.precision == "fp16":
            raise InputError(f"TensorRT {trt_version} is strongly typed and has no FP16 builder flag: export a "
                             "mixed-precision graph (deqflow export --precision mixed16) and build it with "
                             "--precision graph")
        if onnx_precision == "mixed16" and self.precision == "fp32":
            self.precision = "graph"  # a mixed16 graph carries its precision: build it strongly typed
        check_profiles(self.profiles)

    def key_dict(self) -> dict:
        """The settings that change the engine (the timing cache path does not)."""
        return {k: v for k, v in asdict(self).items() if k != "timing_cache"}


def check_profiles(profiles: dict[str, dict[str, list[int]]]) -> None:
    """InputError unless min <= opt <= max per input and dimension, with equal ranks."""
    if not profiles:
        return
    if set(profiles) != {"min", "opt", "max"}:
        raise InputError(f"an optimization profile needs 'min', 'opt' and 'max' shapes, got {sorted(profiles)}")
    for name in profiles["opt"]:
        shapes = [profiles[k].get(name) for k in ("min", "opt", "max")]
        if any(s is None for s in shapes):
            raise InputError(f"profile: input {name} needs min, opt and max shapes")
        if len({len(s) for s in shapes}) != 1:
            raise InputError(f"profile: input {name} has shapes of different ranks {shapes}")
        if not all(a <= b <= c for a, b, c in zip(*shapes)):
            raise InputError(f"profile: input {name} must satisfy min <= opt <= max in every dimension, got "
                             f"min {shapes[0]}, opt {shapes[1]}, max {shapes[2]}")


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu: str, settings: BuildSettings | dict,
                     compute_capability: str = "") -> str:
    """Cache key of an engine: the ONNX bytes, the TensorRT version, the GPU and every build setting that
    changes the plan (shapes, precision, TF32, workspace, optimization level)."""
    key = settings.key_dict() if isinstance(settings, BuildSettings) else dict(settings)
    blob = json.dumps({"onnx": onnx_sha256, "tensorrt": str(trt_version), "gpu": str(gpu),
                       "cc": str(compute_capability), "build": key}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def check_profile(shapes: dict[str, tuple[int, ...]], profile: dict[str, tuple[list, list, list]],
                  where: str = "engine") -> None:
    """ProfileError (before anything runs) unless every input shape lies inside the engine's profile.

    profile: {input: (min, opt, max)} as TensorRT's `engine.get_tensor_profile_shape(name, 0)` reports it,
    or static shapes as (shape, shape, shape)."""
    for name, (lo, _, hi) in profile.items():
        if name not in shapes:
            raise ProfileError(f"{where}: input {name} is missing (the engine takes {', '.join(profile)})")
        actual = tuple(int(d) for d in shapes[name])
        if len(actual) != len(lo):
            raise ProfileError(f"{where}: input {name} has rank {len(actual)} ({list(actual)}), expected {len(lo)}")
        bad = [i for i, (a, mn, mx) in enumerate(zip(actual, lo, hi)) if not mn <= a <= mx]
        if bad:
            raise ProfileError(f"{where}: input {name} of shape {list(actual)} is outside the engine's "
                               f"optimization profile (min {list(lo)}, max {list(hi)}; dimension "
                               f"{', '.join(map(str, bad))}). Rebuild with deqflow build --min-shape/--max-shape "
                               "covering it, or export/build an engine for this size")


def profiles_from_metadata(meta, names: list[str]) -> dict[str, dict[str, list[int]]]:
    """min/opt/max for the ONNX inputs `names` from the export's shape hints (dynamic full-graph exports)."""
    hints = getattr(meta, "shape_hints", {}) or {}
    out = {k: {n: list(hints[k][n]) for n in names if n in hints.get(k, {})} for k in ("min", "opt", "max")}
    return out if out["opt"] else {}


def parse_shape_arg(text: str, batch: int = 1) -> list[int]:
    """'HxW' | 'BxHxW' | 'Bx3xHxW' -> [B,3,H,W] (the image inputs)."""
    parts = [int(v) for v in str(text).lower().replace(",", "x").split("x") if v.strip()]
    if len(parts) == 2:
        parts = [batch, 3, *parts]
    elif len(parts) == 3:
        parts = [parts[0], 3, parts[1], parts[2]]
    if len(parts) != 4 or parts[1] != 3 or min(parts) < 1:
        raise InputError(f"shape {text!r} must look like HxW, BxHxW or Bx3xHxW")
    if parts[2] % 8 or parts[3] % 8:
        raise InputError(f"shape {text!r}: H and W must be multiples of 8 (pad the images)")
    return parts


def image_profiles(min_shape: list[int], opt_shape: list[int], max_shape: list[int],
                   flow_init: bool = True) -> dict[str, dict[str, list[int]]]:
    out = {}
    for key, s in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        shapes = {"image1": list(s), "image2": list(s)}
        if flow_init:
            shapes["flow_init"] = [s[0], 2, s[2] // 8, s[3] // 8]
        out[key] = shapes
    return out


# --- engine files and their sidecars ------------------------------------------------------------------


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{engine}.json")


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


def read_sidecar(engine: str | os.PathLike) -> dict:
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


def resolve_engine_file(path: Path):
    """ModelFile for an engine (`model.engine`) or a split set (`model.encoder.engine`, ... beside it)."""
    from export.metadata import ModelMetadata
    from runtime.modelfile import ModelFile

    stem = path.name[: -len(path.suffix)]
    if path.is_file():
        info = read_sidecar(path)
        meta = ModelMetadata.from_props(info.get("metadata", {}), str(path))
        return ModelFile(path=path, kind="engine", layout=meta.layout, parts={"model": path}, metadata={"model": meta})
    parts = {part: path.with_name(f"{stem}.{part}{path.suffix}") for part in ("encoder", "step", "decode")}
    if not all(p.is_file() for p in parts.values()):
        raise FileFormatError(f"engine not found: {path} (nor a split set {stem}.encoder{path.suffix} / "
                              f".step / .decode beside it)")
    metas = {part: ModelMetadata.from_props(read_sidecar(p).get("metadata", {}), str(p)) for part, p in parts.items()}
    return ModelFile(path=path, kind="engine", layout="split", parts=parts, metadata=metas)


def split_engine_paths(output: str | os.PathLike) -> dict[str, Path]:
    out = Path(output)
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    suffix = out.suffix or ".engine"
    return {part: out.with_name(f"{stem}.{part}{suffix}") for part in ("encoder", "step", "decode")}


class EngineCache:
    """Serialized engines by cache key in a folder (plan + JSON sidecar), written atomically."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else DEFAULT_CACHE

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.engine"

    def load(self, key: str) -> tuple[bytes, dict] | None:
        p = self.path(key)
        if not p.is_file() or not sidecar_path(p).is_file():
            return None
        return p.read_bytes(), read_sidecar(p)

    def store(self, key: str, plan: bytes, info: dict) -> Path:
        p = self.path(key)
        atomic_write_bytes(p, plan)
        atomic_write_bytes(sidecar_path(p), json.dumps(info, indent=2).encode())
        return p


def write_engine(path: str | os.PathLike, plan: bytes, info: dict) -> Path:
    """Engine + sidecar, each written atomically (plan first, so a sidecar never describes a missing plan)."""
    atomic_write_bytes(path, plan)
    atomic_write_bytes(sidecar_path(path), json.dumps(info, indent=2).encode())
    return Path(path)


# --- GPU and memory ------------------------------------------------------------------------------------


def gpu_identity(device_id: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability 'major.minor') via torch or cuda-python; MissingDependencyError if none."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device_id)
            return torch.cuda.get_device_name(device_id), f"{major}.{minor}"
    except ImportError:
        pass
    cudart = _import_cudart()
    if cudart is not None:
        err, props = cudart.cudaGetDeviceProperties(device_id)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return name.rstrip("\x00"), f"{props.major}.{props.minor}"
    raise missing_dependency("gpu", "the tensorrt backend", "no CUDA device found through torch or cuda-python")


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


class TorchMemory:
    """Device memory as torch CUDA tensors (zero-copy: TensorRT reads/writes them through data_ptr())."""

    kind = "torch"

    def __init__(self, device_id: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise missing_dependency("gpu", "the tensorrt backend", "torch.cuda.is_available() is False")
        self.torch, self.device = torch, torch.device("cuda", device_id)
        self.stream = torch.cuda.Stream(self.device)  # non-default: enqueueV3 on the default stream syncs

    @property
    def handle(self) -> int:
        return self.stream.cuda_stream

    def empty(self, shape, dtype) -> Any:
        return self.torch.empty(tuple(shape), dtype=_torch_dtype(self.torch, dtype), device=self.device)

    def upload(self, array: np.ndarray, out: Any = None) -> Any:
        src = self.torch.from_numpy(np.ascontiguousarray(array))
        with self.torch.cuda.stream(self.stream):
            if out is None:
                return src.to(self.device, non_blocking=False)
            out.copy_(src)
            return out

    def download(self, x: Any) -> np.ndarray:
        self.stream.synchronize()
        return x.detach().cpu().numpy()

    @staticmethod
    def ptr(x: Any) -> int:
        return int(x.data_ptr())

    def synchronize(self) -> None:
        self.stream.synchronize()

    def capture(self, enqueue):
        """CUDA graph of `enqueue()` on this stream -> replay function, or None when capture fails."""
        try:
            graph = self.torch.cuda.CUDAGraph()
            with self.torch.cuda.graph(graph, stream=self.stream):
                if not enqueue():
                    return None
            return graph.replay
        except RuntimeError:
            return None


class _DeviceArray:
    """A cudaMalloc'd buffer (cuda-python) with shape and dtype; freed when garbage-collected."""

    def __init__(self, cudart, shape, dtype) -> None:
        self.cudart, self.shape, self.dtype = cudart, tuple(int(s) for s in shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        err, self.ptr = cudart.cudaMalloc(max(self.nbytes, 1))
        _check_cuda(err, "cudaMalloc")

    def __del__(self) -> None:
        try:
            self.cudart.cudaFree(self.ptr)
        except Exception:  # interpreter shutdown
            pass


class CudaPythonMemory:
    """Device memory and stream through NVIDIA's cuda-python (cuda.bindings.runtime)."""

    kind = "cuda-python"

    def __init__(self, device_id: int = 0) -> None:
        cudart = _import_cudart()
        if cudart is None:
            raise missing_dependency("cuda", "the tensorrt backend without torch")
        self.cudart = cudart
        _check_cuda(cudart.cudaSetDevice(device_id)[0], "cudaSetDevice")
        err, self.stream = cudart.cudaStreamCreate()
        _check_cuda(err, "cudaStreamCreate")

    @property
    def handle(self):
        return self.stream

    def empty(self, shape, dtype) -> _DeviceArray:
        return _DeviceArray(self.cudart, shape, dtype)

    def upload(self, array: np.ndarray, out: _DeviceArray | None = None) -> _DeviceArray:
        array = np.ascontiguousarray(array)
        out = out or self.empty(array.shape, array.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check_cuda(self.cudart.cudaMemcpyAsync(out.ptr, array.ctypes.data, array.nbytes, kind, self.stream)[0],
                    "cudaMemcpyAsync")
        self.synchronize()  # the host array may be freed after we return
        return out

    def download(self, x: _DeviceArray) -> np.ndarray:
        host = np.empty(x.shape, x.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check_cuda(self.cudart.cudaMemcpyAsync(host.ctypes.data, x.ptr, x.nbytes, kind, self.stream)[0],
                    "cudaMemcpyAsync")
        self.synchronize()
        return host

    @staticmethod
    def ptr(x: _DeviceArray) -> int:
        return int(x.ptr)

    def synchronize(self) -> None:
        _check_cuda(self.cudart.cudaStreamSynchronize(self.stream)[0], "cudaStreamSynchronize")

    def capture(self, enqueue):
        c = self.cudart
        mode = c.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        if int(c.cudaStreamBeginCapture(self.stream, mode)[0]) != 0:
            return None
        ok = bool(enqueue())
        err, graph = c.cudaStreamEndCapture(self.stream)
        if not ok or int(err) != 0:
            return None
        err, exec_graph = c.cudaGraphInstantiate(graph, 0)
        if int(err) != 0:
            return None

        def replay():
            _check_cuda(c.cudaGraphLaunch(exec_graph, self.stream)[0], "cudaGraphLaunch")

        return replay


class PycudaMemory:
    """Legacy pycuda memory (its context handling conflicts with torch's; prefer torch or cuda-python)."""

    kind = "pycuda"

    def __init__(self, device_id: int = 0) -> None:
        try:
            import pycuda.driver as cuda
        except ImportError as exc:
            raise missing_dependency("cuda", "the tensorrt backend without torch", str(exc)) from None
        cuda.init()
        self.cuda = cuda
        self.ctx = cuda.Device(device_id).retain_primary_context()
        self.ctx.push()
        self.stream = cuda.Stream()

    @property
    def handle(self) -> int:
        return self.stream.handle

    def empty(self, shape, dtype):
        from pycuda import gpuarray

        return gpuarray.empty(tuple(shape), np.dtype(dtype))

    def upload(self, array: np.ndarray, out=None):
        array = np.ascontiguousarray(array)
        out = out if out is not None else self.empty(array.shape, array.dtype)
        out.set(array, stream=self.stream)
        self.stream.synchronize()
        return out

    def download(self, x) -> np.ndarray:
        self.stream.synchronize()
        return x.get()

    @staticmethod
    def ptr(x) -> int:
        return int(x.gpudata)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def capture(self, enqueue):
        return None  # no CUDA-graph capture through pycuda here: run eagerly


MEMORY = {"torch": TorchMemory, "cuda-python": CudaPythonMemory, "pycuda": PycudaMemory}


def device_memory(kind: str = "auto", device_id: int = 0):
    """Device memory provider: torch (zero-copy), cuda-python or pycuda; 'auto' takes the first that works."""
    if kind != "auto":
        if kind not in MEMORY:
            raise InputError(f"memory must be one of auto, {', '.join(MEMORY)}; got {kind!r}")
        return MEMORY[kind](device_id)
    errors = []
    for name in ("torch", "cuda-python", "pycuda"):
        try:
            return MEMORY[name](device_id)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise missing_dependency("cuda", "the tensorrt backend (device memory)", "; ".join(errors))


def _check_cuda(err, what: str) -> None:
    if int(err) != 0:
        raise RuntimeError(f"{what} failed with CUDA error {err}")


def _torch_dtype(torch, dtype):
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
            np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64,
            np.dtype(np.bool_): torch.bool}[np.dtype(dtype)]


# --- build and load --------------------------------------------------------------------------------------


def build_serialized(onnx_path: str | os.PathLike, settings: BuildSettings, *, verbose: bool = False) -> bytes:
    """Parse an ONNX file and build a serialized engine (TensorRT 10 or 11)."""
    trt = import_tensorrt()
    major = trt_major(trt.__version__)
    settings.validate(trt.__version__)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major < 11 and settings.precision == "graph":
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # TRT 11: always strongly typed
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FileFormatError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors} (run deqflow export --check "
                              f"{onnx_path} for the TensorRT compatibility report)")
    config = builder.create_builder_config()
    if settings.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_mb) << 20)
    if settings.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default in 10 and 11
    if settings.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10 weak typing only (validated above)
    if settings.optimization_level is not None:
        config.builder_optimization_level = int(settings.optimization_level)
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if dynamic:
        missing = [t.name for t in dynamic if t.name not in settings.profiles.get("opt", {})]
        if missing:
            raise InputError(f"{onnx_path} has dynamic inputs {', '.join(missing)}: give their min/opt/max shapes "
                             "(deqflow build --min-shape/--opt-shape/--max-shape)")
        profile = builder.create_optimization_profile()
        for t in dynamic:
            profile.set_shape(t.name, *(settings.profiles[k][t.name] for k in ("min", "opt", "max")))
        config.add_optimization_profile(profile)
    cache_file = Path(settings.timing_cache) if settings.timing_cache else None
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file and cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    if cache_file is not None:
        atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def engine_info(onnx_path: str | os.PathLike, settings: BuildSettings, trt_version: str, gpu: str, cc: str,
                key: str) -> dict:
    from runtime.modelfile import read_onnx_metadata
    from runtime.versions import version_info

    meta = read_onnx_metadata(onnx_path)
    return {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION, "tensorrt": trt_version, "gpu": gpu,
            "compute_capability": cc, "onnx": str(onnx_path), "onnx_sha256": sha256_file(onnx_path),
            "cache_key": key, "build": settings.key_dict(), "metadata": meta.to_props(), "layout": meta.layout,
            "part": meta.part, "versions": version_info()}


def build_engine(onnx_path: str | os.PathLike, settings: BuildSettings, *, cache: EngineCache | None = None,
                 device_id: int = 0, verbose: bool = False) -> tuple[bytes, dict]:
    """(plan, sidecar info) for an ONNX file, from the engine cache when the key matches, else built and cached."""
    trt = import_tensorrt()
    gpu, cc = gpu_identity(device_id)
    sha = sha256_file(onnx_path)
    key = engine_cache_key(sha, trt.__version__, gpu, settings, cc)
    if cache is not None:
        hit = cache.load(key)
        if hit is not None:
            return hit
    plan = build_serialized(onnx_path, settings, verbose=verbose)
    info = engine_info(onnx_path, settings, trt.__version__, gpu, cc, key)
    if cache is not None:
        cache.store(key, plan, info)
    return plan, info


def deserialize(plan: bytes, path: str = "engine"):
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise EngineMismatchError(f"TensorRT {trt.__version__} could not deserialize {path} (built by another "
                                  "TensorRT version or for another GPU, or corrupt): rebuild it with deqflow build")
    return engine


class TrtRunner:
    """One engine + execution context: name-based I/O, output ring buffers (stable addresses), optional CUDA
    graphs captured per (shapes, addresses) with a fallback to plain enqueues when capture fails."""

    RING = 2  # outputs alternate between two buffer sets, so a step may read the previous step's outputs

    def __init__(self, engine, memory, *, name: str = "engine", cuda_graph: bool = False) -> None:
        trt = import_tensorrt()
        self.trt, self.engine, self.memory, self.name = trt, engine, memory, name
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.profile: dict[str, tuple[list, list, list]] = {}
        for n in self.inputs:
            shape = list(engine.get_tensor_shape(n))
            if -1 in shape:
                lo, opt, hi = engine.get_tensor_profile_shape(n, 0)
                self.profile[n] = (list(lo), list(opt), list(hi))
            else:
                self.profile[n] = (shape, shape, shape)
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, Any] = {}
        self._graph_failed = False
        self._staging: dict[str, Any] = {}
        self._rings: dict[tuple, list[dict[str, Any]]] = {}
        self._turn = 0

    def _device_input(self, name: str, value: Any) -> Any:
        if not isinstance(value, np.ndarray):
            return value
        value = np.ascontiguousarray(value, self.dtypes[name])
        buf = self._staging.get(name)
        if buf is None or tuple(getattr(buf, "shape", ())) != value.shape:
            buf = self._staging[name] = self.memory.empty(value.shape, value.dtype)
        return self.memory.upload(value, buf)

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """feeds: numpy (uploaded into staging buffers) or device tensors -> device outputs (ring buffers)."""
        shapes = {n: tuple(int(d) for d in feeds[n].shape) for n in self.inputs if n in feeds}
        check_profile(shapes, self.profile, self.name)  # before anything runs
        ctx = self.context
        device = {n: self._device_input(n, feeds[n]) for n in self.inputs}
        for n in self.inputs:
            ctx.set_input_shape(n, shapes[n])
            ctx.set_tensor_address(n, self.memory.ptr(device[n]))
        key_shapes = tuple(sorted(shapes.items()))
        ring = self._rings.get(key_shapes)
        if ring is None:
            ring = self._rings[key_shapes] = [
                {n: self.memory.empty(tuple(ctx.get_tensor_shape(n)), self.dtypes[n]) for n in self.outputs}
                for _ in range(self.RING)]
        outs = ring[self._turn % self.RING]
        self._turn += 1
        for n in self.outputs:
            ctx.set_tensor_address(n, self.memory.ptr(outs[n]))
        handle = self.memory.handle

        def enqueue() -> bool:
            return bool(ctx.execute_async_v3(handle))

        if self.cuda_graph and not self._graph_failed:
            key = (key_shapes, tuple(self.memory.ptr(device[n]) for n in self.inputs),
                   tuple(self.memory.ptr(outs[n]) for n in self.outputs))
            replay = self._graphs.get(key)
            if replay is None:
                if not enqueue():  # one plain run first, so capture does not record initialisation work
                    raise RuntimeError(f"{self.name}: TensorRT execute_async_v3 failed")
                replay = self.memory.capture(enqueue)
                if replay is None:
                    self._graph_failed = True  # not capturable (as trtexec): keep running without graphs
                else:
                    self._graphs[key] = replay
            else:
                replay()
        elif not enqueue():
            raise RuntimeError(f"{self.name}: TensorRT execute_async_v3 failed")
        return dict(outs)
