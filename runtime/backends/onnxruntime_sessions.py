"""ONNX Runtime sessions and the one way deqflow runs them: the runtime backend, the exporter's verification,
the scripts and the tests all go through this module.

`create_session` gives every caller the same options: intra/inter-op threads, graph optimization level,
execution providers, the low-memory mode (no CPU arena, no memory pattern) and worker-thread spinning, with
warnings silenced and a one-line error for a missing or unreadable model. `OrtSession` runs one session on
host arrays or, with IO binding, on OrtValues that stay on the provider's device; `OrtStepParts` runs a split
export's encoder, step and decode under the shared host loop (deqflow.host_solver); `run_export` runs any
layout on the CPU provider with host arrays. onnxruntime is imported lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deqflow.errors import DeqflowError, FileFormatError, InputError
from deqflow.extras import require
from deqflow.host_solver import solve
from deqflow.solver_spec import SolveSpec

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
CPU_PROVIDERS = ("CPUExecutionProvider",)
SPLIT_PARTS = ("encoder", "step", "decode")
MODEL_LOAD_ERRORS = {"InvalidProtobuf", "InvalidGraph", "NoModel", "NoSuchFile", "ModelLoaded", "NotImplemented",
                     "Fail"}
"""onnxruntime's exception types that mean 'this model cannot be loaded' (rather than a provider failure)."""


@dataclass(frozen=True)
class SessionConfig:
    """Session options. threads: intra-op threads (None: ONNX Runtime's default); inter_threads likewise;
    spinning: whether idle intra-op workers busy-wait (None: ONNX Runtime's default); low_memory: allocate per
    tensor instead of a growing arena and a pre-planned memory pattern (CPU)."""

    threads: int | None = None
    inter_threads: int | None = None
    optimization: str = "all"
    spinning: bool | None = None
    low_memory: bool = False
    log_severity: int = 3  # errors only

    def __post_init__(self) -> None:
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise InputError(f"optimization must be one of {OPTIMIZATION_LEVELS}, got {self.optimization!r}")
        for name in ("threads", "inter_threads"):
            value = getattr(self, name)
            if value is not None and int(value) < 0:
                raise InputError(f"{name} must be >= 0 (0: ONNX Runtime's default), got {value}")


def import_onnxruntime(needed_for: str = "running ONNX models"):
    """The onnxruntime module, or MissingDependencyError saying what needs it and what to install."""
    return require("onnxruntime", needed_for)


def session_options(config: SessionConfig = SessionConfig()):
    """onnxruntime.SessionOptions for `config`."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    if config.low_memory:
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
    if config.spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.spinning else "0")
    opts.log_severity_level = int(config.log_severity)
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[config.optimization]
    if config.threads:
        opts.intra_op_num_threads = int(config.threads)
    if config.inter_threads:
        opts.inter_op_num_threads = int(config.inter_threads)
    return opts


def create_session(model: str | os.PathLike | bytes | Any, config: SessionConfig = SessionConfig(),
                   providers: Sequence = CPU_PROVIDERS):
    """An onnxruntime.InferenceSession of `model` (a path, serialized bytes or an onnx.ModelProto).

    `providers`: the providers list in priority order (names or (name, options) pairs). A missing file is an
    InputError and a file ONNX Runtime cannot load a FileFormatError, each in one line."""
    ort = import_onnxruntime()
    if hasattr(model, "SerializeToString"):
        model, label = model.SerializeToString(), "<in-memory model>"
    elif isinstance(model, bytes):
        label = "<in-memory model>"
    else:
        path = Path(model)
        if not path.is_file():
            raise InputError(f"ONNX model not found: {path}")
        model, label = str(path), str(path)
    try:
        return ort.InferenceSession(model, session_options(config), providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, EPFail, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if type(exc).__name__ in MODEL_LOAD_ERRORS:
            raise FileFormatError(f"ONNX Runtime cannot load {label}: {reason}") from None
        raise DeqflowError(f"ONNX Runtime cannot create a session for {label} with providers "
                           f"{[p if isinstance(p, str) else p[0] for p in providers]}: {reason}") from None


class OrtSession:
    """One InferenceSession run with IO binding on its provider's device, or with host arrays."""

    def __init__(self, session, *, device: str = "cpu", device_id: int = 0, io_binding: bool = False,
                 path: Path | None = None) -> None:
        self.ort, self.path, self.session = import_onnxruntime(), path, session
        self.options = session.get_session_options()
        self.device, self.device_id, self.io_binding = device, device_id, io_binding
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def value(self, x: Any):
        """numpy -> OrtValue on the session's device (CPU values share the numpy buffer)."""
        if isinstance(x, self.ort.OrtValue):
            return x
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), self.device, self.device_id)

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, Any]:
        """Feeds (numpy or OrtValue; those the session does not take are dropped) -> {name: OrtValue} with IO
        binding, or numpy without it."""
        outputs = outputs or self.output_names
        if not self.io_binding:
            host = {k: (v.numpy() if isinstance(v, self.ort.OrtValue) else v) for k, v in feeds.items()
                    if k in self.inputs}
            return dict(zip(outputs, self.session.run(outputs, host)))
        binding = self.session.io_binding()
        for name, v in feeds.items():
            if name in self.inputs:
                binding.bind_ortvalue_input(name, self.value(v))
        for name in outputs:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        return dict(zip(outputs, binding.get_outputs()))

    def run_host(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """`run` with every output brought to the host."""
        return {name: self.host(v) for name, v in self.run(feeds, outputs).items()}

    @staticmethod
    def host(x: Any) -> np.ndarray:
        return x if isinstance(x, np.ndarray) else x.numpy()


def open_session(model: str | os.PathLike | bytes | Any, config: SessionConfig = SessionConfig(),
                 providers: Sequence = CPU_PROVIDERS, **placement: Any) -> OrtSession:
    """`create_session` wrapped in an OrtSession; `placement`: device, device_id, io_binding (default: host
    arrays on the CPU)."""
    path = Path(model) if isinstance(model, str | os.PathLike) else None
    return OrtSession(create_session(model, config, providers), path=path, **placement)


class OrtStepParts:
    """deqflow.host_solver.StepParts over the three sessions of a split export."""

    def __init__(self, encoder: OrtSession, step: OrtSession, decode: OrtSession, context: list[str],
                 hidden_dim: int) -> None:
        self.encoder, self.step_session, self.decoder = encoder, step, decode
        self.context, self.hidden_dim = context, hidden_dim

    @classmethod
    def from_sessions(cls, encoder: OrtSession, step: OrtSession, decode: OrtSession) -> OrtStepParts:
        """Context names and hidden size read from the graphs (the encoder outputs the step takes)."""
        context = [name for name in encoder.output_names if name in step.inputs]
        return cls(encoder, step, decode, context, int(step.inputs["net"].shape[1]))

    @classmethod
    def from_files(cls, paths: Sequence, config: SessionConfig = SessionConfig()) -> OrtStepParts:
        """From the encoder, step and decode models (paths, bytes or ModelProtos), in that order, on the CPU
        provider with host arrays."""
        encoder, step, decode = (open_session(p, config) for p in paths)
        return cls.from_sessions(encoder, step, decode)

    def encode(self, image1, image2):
        out = self.encoder.run({"image1": image1, "image2": image2}, self.context)
        return out, self.encoder.host(out["coords0"])

    def step(self, ctx, net, coords1):
        out = self.step_session.run({**ctx, "net": net, "coords1": coords1},
                                    ["net_next", "coords1_next", "residual", "residual_rel"])
        return (out["net_next"], out["coords1_next"], self.step_session.host(out["residual"]),
                self.step_session.host(out["residual_rel"]))

    def decode(self, ctx, net, coords1):
        out = self.decoder.run_host({"net": net, "coords1": coords1, "coords0": ctx["coords0"]},
                                    ["flow", "flow_low"])
        return out["flow"], out["flow_low"]

    def to_host(self, x):
        return self.step_session.host(x)

    def from_host(self, x):
        return self.step_session.value(x) if self.step_session.io_binding else x

    @property
    def compactable(self) -> bool:
        """The host loop steps only the samples still solving (deqflow.host_solver.fixed_point_loop) when the
        step graph's batch axis is dynamic and it runs on the CPU. On a GPU the batch keeps its shape (masked),
        which CUDA graphs and fixed TensorRT profiles need; decided on paper, checked by scripts/gpu_acceptance.py."""
        return not isinstance(self.step_session.inputs["net"].shape[0], int) and self.step_session.device == "cpu"

    def select(self, ctx, rows):
        """The context of the samples `rows`: per-sample inputs by their batch axis, the flattened correlation
        rows (batch x pixels first) by the same samples' blocks."""
        n = int(self.to_host(ctx["coords0"]).shape[0])
        return {name: self.from_host(_rows_of(self.to_host(value), n, rows)) for name, value in ctx.items()}

    def take(self, x, positions):
        return self.from_host(np.ascontiguousarray(self.to_host(x)[positions]))


def _rows_of(x: np.ndarray, n: int, rows) -> np.ndarray:
    """The samples `rows` of an array whose first axis is the batch (n) or n blocks of equal length."""
    if x.shape[0] == n:
        return np.ascontiguousarray(x[rows])
    return np.ascontiguousarray(x.reshape(n, -1, *x.shape[1:])[rows].reshape(-1, *x.shape[1:]))


def run_split(parts: OrtStepParts, feed: dict[str, np.ndarray], spec: SolveSpec) -> dict[str, np.ndarray]:
    """A split export's outputs for `feed` under the host loop, named as the unrolled / Loop graphs name them
    (flow, flow_low, residual, residual_rel, iterations), so every layout is checked the same way."""
    result = solve(parts, feed["image1"], feed["image2"], spec, flow_init=feed.get("flow_init"))
    return {"flow": result.flow, "flow_low": result.flow_low, "residual": result.stats.final_abs,
            "residual_rel": result.stats.final_rel, "iterations": np.array([result.stats.iterations], np.int32)}


def run_export(models: dict[str, Any], feed: dict[str, np.ndarray], spec: SolveSpec,
               config: SessionConfig = SessionConfig()) -> dict[str, np.ndarray]:
    """Named outputs of an export on ONNX Runtime (CPU, host arrays): `models` maps 'model' (unrolled / Loop)
    or 'encoder', 'step', 'decode' (split; run under the host loop with `spec`) to a path, bytes or a
    ModelProto."""
    if "model" in models:
        return open_session(models["model"], config).run_host(feed)
    return run_split(OrtStepParts.from_files([models[p] for p in SPLIT_PARTS], config), feed, spec)
