"""Building TensorRT engines from deqflow's ONNX exports: settings, optimization profiles, the builder.

Precision: TensorRT 10.x builds float32 by default and lowers precision with `BuilderFlag.FP16` on weakly
typed networks ('fp16' here). TensorRT 11 is always strongly typed and has no FP16 flag: precision comes from
the graph, i.e. a `--precision mixed16` export built with precision 'graph' (on TensorRT 10 'graph' sets
`NetworkDefinitionCreationFlag.STRONGLY_TYPED`). Asking TensorRT 11 for 'fp16' is an error, never a silent
float32 engine.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deqflow.checkpoint import sha256_file
from deqflow.errors import FileFormatError, InputError
from deqflow.fileio import atomic_write_bytes
from deqflow.model_metadata import ModelMetadata
from deqflow.onnx_integrity import verify_onnx_file
from deqflow.shapes import PROFILE_KEYS, ShapeProfiles
from runtime.tensorrt import import_tensorrt, trt_major
from runtime.tensorrt.cache import EngineCache, engine_cache_key, sidecar_info
from runtime.tensorrt.memory import gpu_identity, require_cuda_device

PRECISIONS = ("fp32", "fp16", "graph")


@dataclass
class BuildSettings:
    """How to build an engine. profiles: {'min'|'opt'|'max': {input name: shape}} for dynamic inputs."""

    profiles: ShapeProfiles = field(default_factory=dict)
    precision: str = "fp32"  # 'fp32' | 'fp16' (TensorRT 10 weak typing) | 'graph' (strongly typed)
    tf32: bool = False  # float32 reference engines are built without TF32
    workspace_mb: int | None = None
    optimization_level: int | None = None  # builder_optimization_level 0..5 (TensorRT default 3)
    timing_cache: str | None = None  # file read before and written after the build

    def validate(self, trt_version: str | None = None, onnx_precision: str | None = None) -> None:
        """InputError naming the first unusable setting; a mixed16 graph's 'fp32' request becomes 'graph'."""
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.optimization_level is not None and not 0 <= int(self.optimization_level) <= 5:
            raise InputError(f"builder optimization level must be 0..5, got {self.optimization_level}")
        if self.workspace_mb is not None and int(self.workspace_mb) < 1:
            raise InputError(f"workspace must be >= 1 MiB, got {self.workspace_mb}")
        if trt_version is not None and trt_major(trt_version) >= 11 and self.precision == "fp16":
            raise InputError(f"TensorRT {trt_version} is strongly typed and has no FP16 builder flag: export a "
                             "mixed-precision graph (deqflow export --precision mixed16) and build it with "
                             "deqflow build --engine-precision graph")
        if onnx_precision == "mixed16" and self.precision == "fp32":
            self.precision = "graph"  # a mixed16 graph carries its precision: build it strongly typed
        check_profiles(self.profiles)

    def key_dict(self) -> dict:
        """The settings that change the engine (the timing cache path does not)."""
        return {k: v for k, v in asdict(self).items() if k != "timing_cache"}


def check_profiles(profiles: ShapeProfiles) -> None:
    """InputError unless min <= opt <= max per input and dimension, with equal ranks."""
    if not profiles:
        return
    if set(profiles) != set(PROFILE_KEYS):
        raise InputError(f"an optimization profile needs 'min', 'opt' and 'max' shapes, got {sorted(profiles)}")
    for name in profiles["opt"]:
        shapes = [profiles[k].get(name) for k in PROFILE_KEYS]
        if any(s is None for s in shapes):
            raise InputError(f"profile: input {name} needs min, opt and max shapes")
        if len({len(s) for s in shapes}) != 1:
            raise InputError(f"profile: input {name} has shapes of different ranks {shapes}")
        if not all(a <= b <= c for a, b, c in zip(*shapes)):
            raise InputError(f"profile: input {name} must satisfy min <= opt <= max in every dimension, got "
                             f"min {shapes[0]}, opt {shapes[1]}, max {shapes[2]}")


def profiles_from_metadata(meta: ModelMetadata, names: list[str]) -> ShapeProfiles:
    """min/opt/max for the ONNX inputs `names` from the export's shape hints (dynamic full-graph exports)."""
    hints = meta.shape_hints
    out = {k: {n: list(hints[k][n]) for n in names if n in hints.get(k, {})} for k in PROFILE_KEYS}
    return out if out["opt"] else {}


def _parse_network(trt, builder, logger, onnx_path: str | os.PathLike, strongly_typed: bool):
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FileFormatError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors} (run deqflow export --check "
                              f"{onnx_path} for the TensorRT compatibility report)")
    return network, parser


def _builder_config(trt, builder, network, settings: BuildSettings, onnx_path: str | os.PathLike):
    config = builder.create_builder_config()
    if settings.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_mb) << 20)
    if settings.tf32:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default in 10 and 11
    if settings.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10 weak typing only (validated before)
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
            profile.set_shape(t.name, *(settings.profiles[k][t.name] for k in PROFILE_KEYS))
        config.add_optimization_profile(profile)
    return config


def build_serialized(onnx_path: str | os.PathLike, settings: BuildSettings, *, verbose: bool = False) -> bytes:
    """Parse an ONNX file and build a serialized engine (TensorRT 10 or 11)."""
    trt = import_tensorrt()
    settings.validate(trt.__version__)
    require_cuda_device()
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 11 networks are always strongly typed; on 10 'graph' asks for it
    strongly_typed = trt_major(trt.__version__) < 11 and settings.precision == "graph"
    network, parser = _parse_network(trt, builder, logger, onnx_path, strongly_typed)  # parser owns the weights
    config = _builder_config(trt, builder, network, settings, onnx_path)
    cache_file = Path(settings.timing_cache) if settings.timing_cache else None
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file and cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    del parser
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    if cache_file is not None:
        atomic_write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build_engine(onnx_path: str | os.PathLike, settings: BuildSettings, *, cache: EngineCache | None = None,
                 device_id: int = 0, verbose: bool = False) -> tuple[bytes, dict]:
    """(plan, sidecar info) for an ONNX file, from the engine cache when the key matches, else built and cached.
    A damaged ONNX file (unreadable, non-finite or altered weights) is refused before TensorRT sees it."""
    verify_onnx_file(onnx_path)
    trt = import_tensorrt()
    gpu, cc = gpu_identity(device_id)
    key = engine_cache_key(sha256_file(onnx_path), trt.__version__, gpu, settings, cc)
    if cache is not None:
        hit = cache.load(key)
        if hit is not None:
            return hit
    plan = build_serialized(onnx_path, settings, verbose=verbose)
    info = sidecar_info(onnx_path, settings.key_dict(), trt.__version__, gpu, cc, key)
    if cache is not None:
        cache.store(key, plan, info)
    return plan, info
