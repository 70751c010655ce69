"""ONNX Runtime sessions: the one place they are created, and the split layout on plain host sessions.

`create_session` gives every caller (the runtime backend, the exporter's verification, the parity checks,
the scripts) the same options: intra/inter-op threads, graph optimization level, execution providers, the
low-memory mode (no CPU arena, no memory pattern) and worker-thread spinning, with warnings silenced and a
one-line error for a missing or unreadable model. `SessionStepParts` runs a split export's three sessions on
host arrays under the shared host loop (deqflow.host_solver). onnxruntime is imported lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deqflow.errors import DeqflowError, FileFormatError, InputError, MissingDependencyError
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
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(f"{needed_for} needs onnxruntime, which is not available here ({exc}). "
                                     "Install: pip install onnxruntime (CPU) or onnxruntime-gpu") from None
    return onnxruntime


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


def run_session(session, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run on host arrays: feeds the session does not take are dropped; returns {output name: array}."""
    wanted = {i.name for i in session.get_inputs()}
    names = outputs or [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in wanted})))


class SessionStepParts:
    """deqflow.host_solver.StepParts over the three plain sessions of a split export, numpy throughout."""

    def __init__(self, encoder, step, decode) -> None:
        self.encoder, self.step_session, self.decoder = encoder, step, decode
        step_inputs = {i.name: i for i in step.get_inputs()}
        self.hidden_dim = int(step_inputs["net"].shape[1])
        self.context = [o.name for o in encoder.get_outputs() if o.name in step_inputs]

    @classmethod
    def from_files(cls, paths: Sequence, config: SessionConfig = SessionConfig(),
                   providers: Sequence = CPU_PROVIDERS) -> SessionStepParts:
        """From the encoder, step and decode models (paths, bytes or ModelProtos), in that order."""
        encoder, step, decode = (create_session(p, config, providers) for p in paths)
        return cls(encoder, step, decode)

    def encode(self, image1: np.ndarray, image2: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ctx = run_session(self.encoder, {"image1": image1, "image2": image2}, self.context)
        return ctx, ctx["coords0"]

    def step(self, ctx: dict[str, np.ndarray], net: np.ndarray, coords1: np.ndarray):
        out = run_session(self.step_session, {**ctx, "net": net, "coords1": coords1},
                          ["net_next", "coords1_next", "residual", "residual_rel"])
        return out["net_next"], out["coords1_next"], out["residual"], out["residual_rel"]

    def decode(self, ctx: dict[str, np.ndarray], net: np.ndarray, coords1: np.ndarray):
        out = run_session(self.decoder, {"net": net, "coords1": coords1, "coords0": ctx["coords0"]},
                          ["flow", "flow_low"])
        return out["flow"], out["flow_low"]

    def to_host(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def from_host(self, x: np.ndarray) -> np.ndarray:
        return x


def run_split(parts: SessionStepParts, feed: dict[str, np.ndarray], spec: SolveSpec) -> dict[str, np.ndarray]:
    """A split export's outputs for `feed` under the host loop, named as the unrolled / Loop graphs name them
    (flow, flow_low, residual, residual_rel, iterations), so every layout is checked the same way."""
    result = solve(parts, feed["image1"], feed["image2"], spec, flow_init=feed.get("flow_init"))
    return {"flow": result.flow, "flow_low": result.flow_low, "residual": result.stats.final_abs,
            "residual_rel": result.stats.final_rel, "iterations": np.array([result.stats.iterations], np.int32)}


def run_export(models: dict[str, Any], feed: dict[str, np.ndarray], spec: SolveSpec,
               config: SessionConfig = SessionConfig()) -> dict[str, np.ndarray]:
    """Named outputs of an export on ONNX Runtime (CPU): `models` maps 'model' (unrolled / Loop) or 'encoder',
    'step', 'decode' (split; run under the host loop with `spec`) to a path, bytes or a ModelProto."""
    if "model" in models:
        return run_session(create_session(models["model"], config), feed)
    return run_split(SessionStepParts.from_files([models[p] for p in SPLIT_PARTS], config), feed, spec)
