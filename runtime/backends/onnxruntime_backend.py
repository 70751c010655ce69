"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers, IO binding, all three layouts.

Unrolled / Loop exports run as one session. Split exports run as three sessions (encoder, step, decode)
driven by the shared host solver (deqflow.host_solver): stop on tolerance, warm start, Anderson. The sessions and
their feeds are runtime.backends.onnxruntime_sessions', the one ONNX Runtime path (the exporter's verification,
the scripts and the tests run it too). With IO binding the context (correlation pyramid, features) and the
state stay on the provider's device between steps; only the (N,) residuals come back to the host each step.

Provider notes: the CUDA provider benchmarks convolution algorithms on its first run (EXHAUSTIVE), so warm
up before timing; cuDNN 9 uses TF32 for convolutions unless NVIDIA_TF32_OVERRIDE=0 is set in the
environment (use_tf32=0 alone does not disable it); a `Loop` on the CUDA provider syncs with the host every
iteration and blocks CUDA graphs, which need IO binding and a graph without Loop/If. The TensorRT provider
caches engines and timing data (the cache prefix here carries the model's sha256, so another model never
hits a stale engine) and needs explicit min/opt/max shapes for dynamic inputs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deqflow.errors import InputError, ProfileError
from deqflow.extras import missing
from deqflow.model_metadata import IMAGE_PARTS
from deqflow.shapes import ShapeProfiles
from deqflow.solver_spec import SolveOverrides
from runtime.backends import onnxruntime_sessions
from runtime.backends.base import ExportedModelBackend, InferenceResult, TensorSpec
from runtime.backends.onnxruntime_sessions import (
    OPTIMIZATION_LEVELS,
    OrtSession,
    OrtStepParts,
    SessionConfig,
    open_session,
)
from runtime.modelfile import ModelFile

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def import_onnxruntime():
    return onnxruntime_sessions.import_onnxruntime("the onnxruntime backend")


def shape_string(shapes: dict[str, list[int]]) -> str:
    """{'image1': [1,3,440,1024], ...} -> 'image1:1x3x440x1024,...' (the TensorRT provider's profile format)."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in shape)}" for name, shape in shapes.items())


def provider_options(provider: str = "cpu", *, device_id: int = 0, fp16: bool = False, tf32: bool = False,
                     cache_dir: str | os.PathLike | None = None, cache_prefix: str = "deqflow",
                     profile: dict[str, dict[str, list[int]]] | None = None, cuda_graph: bool = False,
                     workspace_mb: int | None = None, builder_optimization_level: int | None = None,
                     gpu_mem_limit_mb: int | None = None) -> list:
    """The `providers=` list for onnxruntime.InferenceSession, in priority order (pure: no onnxruntime import).

    provider: 'cpu' | 'cuda' | 'tensorrt'. `profile`: {'min'|'opt'|'max': {input: shape}} (explicit TensorRT
    profile shapes; all dynamic inputs must be listed). `cache_dir`: TensorRT engine + timing caches.
    """
    if provider not in PROVIDERS:
        raise InputError(f"unknown onnxruntime provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    cuda: dict[str, Any] = {"device_id": int(device_id), "cudnn_conv_algo_search": "EXHAUSTIVE",
                            "do_copy_in_default_stream": True,  # a Loop on CUDA needs copies on the compute stream
                            "use_tf32": int(bool(tf32))}
    if gpu_mem_limit_mb:
        cuda["gpu_mem_limit"] = int(gpu_mem_limit_mb) << 20
    if cuda_graph and provider == "cuda":
        cuda["enable_cuda_graph"] = True
    providers: list = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    if provider == "cuda":
        return providers
    trt: dict[str, Any] = {"device_id": int(device_id), "trt_fp16_enable": bool(fp16),
                           "trt_engine_cache_enable": cache_dir is not None,
                           "trt_timing_cache_enable": cache_dir is not None}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        trt.update(trt_engine_cache_path=str(cache_dir), trt_timing_cache_path=str(cache_dir),
                   trt_engine_cache_prefix=cache_prefix)
    if workspace_mb:
        trt["trt_max_workspace_size"] = int(workspace_mb) << 20
    if builder_optimization_level is not None:
        trt["trt_builder_optimization_level"] = int(builder_optimization_level)
    if cuda_graph:
        trt["trt_cuda_graph_enable"] = True
    if profile:
        for key in ("min", "opt", "max"):
            trt[f"trt_profile_{key}_shapes"] = shape_string(profile[key])
    return [("TensorrtExecutionProvider", trt), *providers]


def check_available(provider: str, available: list[str]) -> None:
    """MissingDependencyError when the installed onnxruntime lacks the provider (e.g. the CPU-only wheel)."""
    wanted = PROVIDERS[provider]
    if wanted not in available:
        raise missing("onnxruntime-gpu", f"the onnxruntime {provider} provider ({wanted})",
                                 f"this onnxruntime offers {', '.join(available)}")


def check_static_shape(what: str, spec_shape: list, actual: tuple, hints: dict | None = None,
                       name: str = "image1") -> None:
    """ProfileError when an input does not fit a static export (or the min/max hints of a dynamic one)."""
    fixed = [d if isinstance(d, int) and d > 0 else None for d in spec_shape]
    if len(fixed) == len(actual) and all(f is None or f == a for f, a in zip(fixed, actual)):
        if hints and name in hints.get("min", {}):
            lo, hi = hints["min"][name], hints["max"][name]
            if not all(a_ >= lo_ and a_ <= hi_ for a_, lo_, hi_ in zip(actual, lo, hi)):
                raise ProfileError(f"{what}: input {name} of shape {list(actual)} is outside the export's shape "
                                   f"range min {lo} .. max {hi}; re-export with wider --min-shape/--max-shape")
        return
    want = "x".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in spec_shape)
    raise ProfileError(f"{what}: input {name} has shape {'x'.join(map(str, actual))}, but the model was exported "
                       f"for {want}. Export it at this size (deqflow export --height H --width W, sizes padded to "
                       "a multiple of 8) or with --dynamic")


@dataclass
class SessionSettings:
    """How the sessions of an export are created: provider and its options, threads, optimization, IO binding.

    spinning: intra-op worker threads busy-wait between runs; None = off for the split layout (its three
    sessions each keep a thread pool, and a pool spinning after its run takes the cores the next session and
    the host solver need), ONNX Runtime's default (on) otherwise. low_memory (CPU): no memory arena and no
    memory pattern: less host memory for some latency (docs/runtime.md has the measurements).
    """

    provider: str = "cpu"
    device_id: int = 0
    threads: int | None = None
    io_binding: bool = True
    optimization: str = "all"
    fp16: bool = False
    tf32: bool = False
    cache_dir: str | os.PathLike | None = None
    profile: ShapeProfiles | None = None
    cuda_graph: bool = False
    workspace_mb: int | None = None
    spinning: bool | None = None
    low_memory: bool = False

    @property
    def device(self) -> str:
        return "cpu" if self.provider == "cpu" else "cuda"

    def validate(self, file: ModelFile) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise InputError(f"optimization must be one of {OPTIMIZATION_LEVELS}, got {self.optimization!r}")
        if self.provider not in PROVIDERS:
            raise InputError(f"unknown onnxruntime provider {self.provider!r}; choose one of {', '.join(PROVIDERS)}")
        if self.cuda_graph and file.layout == "loop":
            raise InputError("CUDA graphs need a graph without Loop/If: use the unrolled or split layout, or drop "
                             "cuda_graph")


def load_sessions(file: ModelFile, s: SessionSettings) -> dict[str, OrtSession]:
    """The loader: one session per part of `file` (the image inputs of the model / encoder get the profile)."""
    ort = import_onnxruntime()
    check_available(s.provider, ort.get_available_providers())
    meta = file.exported()
    prefix = "deqflow_" + (meta.checkpoint_sha256[:12] or hashlib.sha256(str(file.path).encode()).hexdigest()[:12])
    hints = s.profile or (meta.shape_hints if meta.dynamic else None)
    spinning = False if s.spinning is None and file.is_split else s.spinning
    sessions = {}
    for part, path in file.parts.items():
        part_profile = hints if (hints and part in IMAGE_PARTS) else None
        if part_profile and part == "encoder":
            part_profile = {k: {n: v for n, v in shapes.items() if n != "flow_init"}
                            for k, shapes in part_profile.items()}
        providers = provider_options(s.provider, device_id=s.device_id, fp16=s.fp16, tf32=s.tf32,
                                     cache_dir=s.cache_dir, cache_prefix=f"{prefix}_{part}", profile=part_profile,
                                     cuda_graph=s.cuda_graph, workspace_mb=s.workspace_mb)
        config = SessionConfig(threads=s.threads, optimization=s.optimization, spinning=spinning,
                               low_memory=s.low_memory)
        sessions[part] = open_session(path, config, providers, device=s.device, device_id=s.device_id,
                                      io_binding=s.io_binding)
    return sessions


class OnnxRuntimeBackend(ExportedModelBackend):
    """`onnxruntime` backend. Options (SessionSettings): provider ('cpu' | 'cuda' | 'tensorrt'), device_id,
    threads, io_binding (default on), optimization ('disable'|'basic'|'extended'|'all'), fp16 (TensorRT
    provider), tf32, cache_dir (TensorRT provider engine/timing caches), profile (explicit min/opt/max shapes;
    default from the export's shape hints), cuda_graph, workspace_mb, spinning, low_memory."""

    name = "onnxruntime"
    kinds = ("onnx",)

    def __init__(self, model: str | os.PathLike | ModelFile, *, settings: SolveOverrides | None = None,
                 provider: str = "cpu", device_id: int = 0, threads: int | None = None, io_binding: bool = True,
                 optimization: str = "all", fp16: bool = False, tf32: bool = False,
                 cache_dir: str | os.PathLike | None = None, profile: ShapeProfiles | None = None,
                 cuda_graph: bool = False, workspace_mb: int | None = None, spinning: bool | None = None,
                 low_memory: bool = False) -> None:
        super().__init__(model, settings=settings)
        session_settings = SessionSettings(
            provider=provider, device_id=device_id, threads=threads, io_binding=io_binding, optimization=optimization,
            fp16=fp16, tf32=tf32, cache_dir=cache_dir, profile=profile, cuda_graph=cuda_graph,
            workspace_mb=workspace_mb, spinning=spinning, low_memory=low_memory)
        session_settings.validate(self.file)
        self.provider = provider
        self.sessions = load_sessions(self.file, session_settings)
        first = self.sessions.get("model") or self.sessions["encoder"]
        inputs = [TensorSpec(i.name, list(i.shape), _dtype(i.type)) for i in first.session.get_inputs()]
        self.attach_runner(inputs, self._split_parts() if self.file.is_split else None)

    @classmethod
    def wrong_kind(cls, file: ModelFile) -> str:
        return (f"the onnxruntime backend runs ONNX exports; {file.path} is a {file.kind} (use --backend torch "
                "for checkpoints, tensorrt for engines)")

    def _split_parts(self) -> OrtStepParts:
        step = self.sessions["step"]
        hidden = self.meta.hidden_dim or int(step.inputs["net"].shape[1])
        return OrtStepParts(self.sessions["encoder"], step, self.sessions["decode"], list(self.meta.context_names),
                            hidden)

    def describe(self) -> dict:
        out = super().describe()
        out.update(provider=self.provider, layout=self.file.layout, precision=self.meta.precision,
                   model_file=self.file.describe(),
                   providers_in_use={k: s.session.get_providers() for k, s in self.sessions.items()},
                   resolved_settings=self.solve_dict())
        return out

    def _check_shape(self, image1: np.ndarray) -> None:
        spec = self._inputs[0]
        hints = self.meta.shape_hints if (self.meta.dynamic and self.provider == "tensorrt") else None
        check_static_shape(str(self.file.path), spec.shape, tuple(image1.shape), hints, spec.name)

    def _infer(self, image1, image2, flow_init, state) -> InferenceResult:
        self._check_shape(image1)
        if self.file.is_split:
            return self._solve_split(image1, image2, flow_init, state)
        session = self.sessions["model"]
        feeds = self._graph_feeds(session.inputs, image1, image2, flow_init)
        return self._graph_result(session.run_host(feeds), image1.shape[0])

    def close(self) -> None:
        self.sessions.clear()
        super().close()


def _dtype(onnx_type: str) -> str:
    return {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int32)": "int32",
            "tensor(int64)": "int64"}.get(onnx_type, onnx_type)
