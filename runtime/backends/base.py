"""The interface every backend implements, and the result it returns."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deqflow.errors import InputError
from deqflow.finite_check import check_finite_outputs
from deqflow.host_solver import HOST_METHODS, StepParts, WarmState, solve
from deqflow.model_metadata import ModelMetadata
from deqflow.solver_spec import SolveOverrides, SolveSpec, StopRule
from runtime.modelfile import ModelFile, open_model_file
from runtime.preprocessing import check_model_inputs
from runtime.warm_start import WARM_START_NEEDS, check_warm_start


@dataclass
class TensorSpec:
    """One model input: name, shape (ints; strings for dynamic axes), element type."""

    name: str
    shape: list
    dtype: str = "float32"

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class InferenceResult:
    """Flow plus solver statistics of one `infer` call (padded size: unpad with the preprocessing padder)."""

    flow: np.ndarray  # (N,2,H,W) float32
    flow_low: np.ndarray | None  # (N,2,H/8,W/8)
    iterations: int  # solver steps of the batch: its longest per-sample solve
    residual: np.ndarray  # (N,) final ||f(z) - z|| (abs), NaN when the model does not output it
    residual_rel: np.ndarray | None = None  # (N,) final relative residual
    residual_known: bool = True  # False when the model has no residual output (then `residual` is NaN)
    abs_trace: np.ndarray | None = None  # (N, iterations) when the solver runs on the host / in torch
    rel_trace: np.ndarray | None = None
    state: WarmState | None = None  # fixed point for warm-starting the next frame (split layout / torch)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    stalled: np.ndarray | None = None  # (N,) bool when the stagnation test ran (split layout / torch)
    stop_reason: str = ""  # deqflow.solver_spec.STOP_REASONS (the batch's worst); '' when a graph ran the solve
    sample_iterations: np.ndarray | None = None  # (N,) each pair's own solver steps (None: `iterations` each)
    stop_reasons: list[str] | None = None  # (N,) why each pair's solve ended

    def __post_init__(self) -> None:
        n = len(self.flow)
        if self.sample_iterations is None:
            self.sample_iterations = np.full(n, int(self.iterations), np.int64)
        if self.stop_reasons is None:
            self.stop_reasons = [self.stop_reason] * n

    def outputs(self) -> dict[str, np.ndarray]:
        """Named outputs for comparison (same names as the ONNX graphs)."""
        out = {"flow": self.flow, "residual": np.asarray(self.residual, np.float32),
               "iterations": np.array([self.iterations], np.int32)}
        if self.flow_low is not None:
            out["flow_low"] = self.flow_low
        if self.residual_rel is not None:
            out["residual_rel"] = np.asarray(self.residual_rel, np.float32)
        return out

    def stats(self) -> dict:
        return {"iterations": int(self.iterations), "sample_iterations": [int(k) for k in self.sample_iterations],
                "final_abs_residual": [float(v) for v in np.asarray(self.residual).ravel()],
                "final_rel_residual": None if self.residual_rel is None
                else [float(v) for v in np.asarray(self.residual_rel).ravel()],
                "seconds": self.seconds, "stop_reason": self.stop_reason or None,
                "stalled": None if self.stalled is None else [bool(v) for v in np.asarray(self.stalled).ravel()]}


class Backend(ABC):
    """Load a model file, describe its inputs, infer, close. Subclasses set `name` and implement `_infer`.

    `infer(image1, image2, flow_init=None, state=None)`: float32 (N,3,H,W) images in 0..255 with H, W
    multiples of 8 (runtime.preprocessing.prepare pads them), optional flow_init (N,2,H/8,W/8) added to the
    initial flow, optional warm-start `state` from a previous result (split layout / torch backend).

    Every attribute callers read is declared here: `settings` (the SolveOverrides asked for), `resolved` (the
    SolveSpec that runs: the model's own spec changed by `settings` and checked against the model by
    `configure`; None where the solve runs elsewhere, e.g. on a server), `levels` (correlation levels, which
    set the smallest input size) and `supports_warm_start`.
    """

    name: str = "backend"
    supports_warm_start: bool = False
    no_warm_start: str = (f"warm start (--warm-start) needs {WARM_START_NEEDS}; this model runs its whole solver "
                          "inside one graph (flow_init still works)")
    """Why this backend cannot start from a previous fixed point (runtime.warm_start.check_warm_start)."""
    allow_nonfinite: bool = False
    """Return NaN/Inf outputs instead of raising NonFiniteOutputError (for debugging a model)."""
    model_path: Any
    settings: SolveOverrides
    resolved: SolveSpec | None
    levels: int

    def __init__(self, model: Any, *, settings: SolveOverrides | None = None) -> None:
        self.model_path = model
        self.settings = settings or SolveOverrides()
        self.resolved = None  # until the subclass calls configure() on its loaded model
        self.levels = 4
        self._closed = False

    # ---- description
    @property
    @abstractmethod
    def inputs(self) -> list[TensorSpec]:
        """The model's inputs (name, shape, dtype)."""

    def describe(self) -> dict:
        """Backend, model and settings, JSON-ready."""
        return {"backend": self.name, "model": str(self.model_path), "inputs": [s.as_dict() for s in self.inputs],
                "settings": self.settings.as_dict(), "warm_start": self.supports_warm_start}

    @property
    def label(self) -> str:
        """How reports name this backend; the same text `label_for` gives before it is created."""
        return self.label_for({}, None)

    @classmethod
    def label_for(cls, options: dict, layout: str | None) -> str:
        """The label of this backend created with constructor `options` on a model of `layout` (None: not an
        export): the one source of backend labels, also for backends a bench creates later or that failed."""
        return cls.name + (f" ({layout})" if layout else "")

    # ---- inference
    def infer(self, image1: np.ndarray, image2: np.ndarray, flow_init: np.ndarray | None = None, *,
              state: WarmState | None = None) -> InferenceResult:
        if self._closed:
            raise InputError(f"{self.label}: infer() after close()")
        check_model_inputs(image1, image2, flow_init, levels=self.levels)
        if state is not None:
            check_warm_start(self)
        t0 = time.perf_counter()
        result = self._infer(np.ascontiguousarray(image1, np.float32), np.ascontiguousarray(image2, np.float32),
                             None if flow_init is None else np.ascontiguousarray(flow_init, np.float32), state)
        result.seconds = time.perf_counter() - t0
        if not self.allow_nonfinite:
            self.check_finite(result)
        return result

    @property
    def identity(self) -> str:
        """Short identity of the model this backend runs, for messages and run manifests: the digest of its
        weights where the backend knows it ('' when unknown)."""
        return ""

    def check_finite(self, result: InferenceResult) -> None:
        """NonFiniteOutputError naming the model and its digest when the flow or the residual is NaN/Inf."""
        outputs = {"flow": result.flow}
        if result.residual_known:
            outputs["residual"] = np.asarray(result.residual)
        if result.residual_rel is not None:
            outputs["residual_rel"] = np.asarray(result.residual_rel)
        check_finite_outputs(outputs, str(self.model_path), self.identity)

    @abstractmethod
    def _infer(self, image1: np.ndarray, image2: np.ndarray, flow_init: np.ndarray | None,
               state: WarmState | None) -> InferenceResult: ...

    def configure(self, settings: SolveOverrides) -> SolveSpec | None:
        """Change the solve (validated against the model); returns the spec that runs."""
        self.settings = settings
        self.resolved = self._resolve(settings)
        return self.resolved

    def _resolve(self, settings: SolveOverrides) -> SolveSpec | None:
        return None

    def solve_dict(self) -> dict:
        """What runs (the resolved spec), or what was asked where the solve runs elsewhere; JSON-ready."""
        return self.settings.as_dict() if self.resolved is None else self.resolved.as_dict()

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def resolve_for_file(settings: SolveOverrides, file: ModelFile) -> SolveSpec:
    """The spec for an ONNX export / engine: the split layout takes any (defaults from its metadata), a full
    graph only what is baked into it. The runtime returns the last iterate unless asked otherwise."""
    meta = file.exported()
    if file.is_split:
        method = meta.solver if meta.solver in HOST_METHODS else "fixed_point"
        return settings.apply(SolveSpec(method=method, stop=meta.stop_rule(), return_final=True))
    return graph_spec(settings, meta, str(file.path))


def graph_spec(settings: SolveOverrides, meta: ModelMetadata, path: str) -> SolveSpec:
    """The spec of an unrolled / Loop graph, whose solver is baked in: requests it cannot honour are refused
    (rather than silently ignored)."""
    where = f"{path} ({meta.layout}, {meta.iterations} iterations" + \
        (f", tolerance {meta.tolerance:g} {meta.stop_mode})" if meta.tolerance > 0 else ")")
    s = settings
    if s.max_iter is not None and int(s.max_iter) != meta.iterations:
        raise InputError(f"{where} cannot run {s.max_iter} iterations: re-export with --iters {s.max_iter}, or "
                         "use the split layout (the host runs any number)")
    if s.tol is not None and float(s.tol) != float(meta.tolerance) and not (s.tol <= 0 and meta.tolerance <= 0):
        raise InputError(f"{where} cannot stop at tolerance {s.tol:g}: its stopping rule is in the graph; "
                         "use the split layout or re-export the loop layout with --tolerance")
    if s.stall_window or s.flow_tol or s.warm_flow_tol:
        raise InputError(f"{where} exits on its tolerance and trip count only: the stagnation and flow-step exits "
                         "need the split layout or the torch backend")
    if s.method not in (None, "fixed_point") or s.return_final is False:
        raise InputError(f"{where} runs plain fixed-point steps and returns the last iterate; Anderson or "
                         "lowest-residual selection needs the split layout")
    stop_mode = s.stop_mode or meta.stop_mode
    return SolveSpec(stop=StopRule(tol=float(meta.tolerance if s.tol is None else s.tol), stop_mode=stop_mode,
                                   max_iter=int(meta.iterations)))


class ExportedModelBackend(Backend):
    """A backend running an exported model file (ONNX layouts or engines). The constructor of a subclass
    wires a loader (sessions or engines for the file's parts) to a runner (`attach_runner`): one graph, or
    the split layout's encoder / step / decode under the shared host solver (`parts`). The solver settings
    it can honour come from the file's metadata."""

    kinds: tuple[str, ...] = ("onnx", "engine")
    """The model-file kinds this backend runs."""

    @property
    def identity(self) -> str:
        return self.file.digest

    @property
    def label(self) -> str:
        return self.label_for({"provider": getattr(self, "provider", None)}, self.file.layout)

    @classmethod
    def label_for(cls, options: dict, layout: str | None) -> str:
        """'onnxruntime:cuda (split)', 'tensorrt (unrolled)': the execution provider for a backend that takes one."""
        head = f"{cls.name}:{options['provider']}" if options.get("provider") else cls.name
        return head + (f" ({layout})" if layout else "")

    file: ModelFile
    meta: ModelMetadata
    parts: StepParts | None
    """Split layout: the encoder / step / decode the host solver drives; None for a whole-solver graph."""

    def __init__(self, model: str | os.PathLike | ModelFile, *, settings: SolveOverrides | None = None) -> None:
        super().__init__(model, settings=settings)
        self.file = model if isinstance(model, ModelFile) else open_model_file(model)
        if self.file.kind not in self.kinds:
            raise InputError(self.wrong_kind(self.file))
        self.meta = self.file.exported()
        self.levels = self.meta.corr_levels
        self.parts = None
        self._inputs: list[TensorSpec] = []

    @classmethod
    def wrong_kind(cls, file: ModelFile) -> str:
        """The message for a model file this backend cannot run."""
        return f"the {cls.name} backend runs {' or '.join(cls.kinds)} files; {file.path} is a {file.kind}"

    def attach_runner(self, inputs: list[TensorSpec], parts: StepParts | None) -> None:
        """Finish construction: the model's inputs, the split layout's parts (None: one graph), the settings."""
        self._inputs, self.parts = inputs, parts
        self.supports_warm_start = parts is not None
        self.configure(self.settings)

    def _resolve(self, settings: SolveOverrides) -> SolveSpec:
        return resolve_for_file(settings, self.file)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self._inputs

    def _solve_split(self, image1: np.ndarray, image2: np.ndarray, flow_init: np.ndarray | None,
                     state: WarmState | None) -> InferenceResult:
        """Split layout: the shared host solver over the subclass's encoder / step / decode (`self.parts`)."""
        if self.parts is None:
            raise InputError(f"{self.file.path} is a {self.file.layout} export, not a split one")
        r = solve(self.parts, image1, image2, self.resolved, flow_init, state)
        return InferenceResult(flow=r.flow, flow_low=r.flow_low, iterations=r.stats.iterations,
                               residual=r.stats.final_abs, residual_rel=r.stats.final_rel,
                               abs_trace=r.stats.abs_trace, rel_trace=r.stats.rel_trace, state=r.state,
                               timings=r.timings, stalled=r.stats.stalled, stop_reason=r.stats.reason,
                               sample_iterations=r.stats.sample_iterations, stop_reasons=r.stats.reasons)

    def _graph_feeds(self, input_names, image1: np.ndarray, image2: np.ndarray,
                     flow_init: np.ndarray | None) -> dict[str, np.ndarray]:
        """Feeds of a whole-solver graph (unrolled / Loop): zeros for its optional flow_init input."""
        feeds = {"image1": image1, "image2": image2}
        if "flow_init" in input_names:
            n, _, h, w = image1.shape
            feeds["flow_init"] = flow_init if flow_init is not None else np.zeros((n, 2, h // 8, w // 8), np.float32)
        elif flow_init is not None:
            raise InputError(f"{self.file.path} was exported without a flow_init input (--no-flow-init)")
        return feeds

    def _graph_result(self, out: dict[str, np.ndarray], n: int) -> InferenceResult:
        """InferenceResult from a whole-solver graph's host outputs (iteration count from the graph or metadata)."""
        iterations = int(out["iterations"].ravel()[0]) if "iterations" in out else int(self.meta.iterations)
        return InferenceResult(flow=out["flow"], flow_low=out.get("flow_low"), iterations=iterations,
                               residual=out.get("residual", np.full(n, np.nan, np.float32)),
                               residual_rel=out.get("residual_rel"), residual_known="residual" in out)
