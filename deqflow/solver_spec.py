"""The fixed-point solver vocabulary as plain data, shared by the torch solvers, the host-side solver of the
split ONNX layout, the export metadata and the CLI: names, stop modes and per-solver options.

Torch-free on purpose: configs, exports and the runtime validate solver settings without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from deqflow.errors import InputError

STOP_MODES = ("abs", "rel")
"""`abs`: per-sample ||f(z) - z||; `rel`: that divided by ||f(z)|| + REL_EPS."""

REL_EPS = 1e-8
"""Denominator guard of the relative residual (the official code's value)."""

SOLVER_ALIASES = {"naive_solver": "fixed_point"}
"""Official flag values accepted for the canonical names."""


@dataclass(frozen=True)
class FixedPointOptions:
    """Plain (damped) iteration: z <- (1 - damping) z + damping f(z)."""

    damping: float = 1.0

    def validate(self) -> None:
        if not 0 < self.damping <= 1:
            raise InputError(f"damping must be in (0, 1], got {self.damping}")


@dataclass(frozen=True)
class AndersonOptions:
    """Anderson acceleration with window `m`, Tikhonov regularisation `lam` and mixing `beta`.

    `safeguard` > 0 restarts a sample's history when its residual ||f(x) - x|| exceeds `safeguard` times the
    previous step's (the next step is then a plain one): on the trained DEQ-Flow model, secant pairs from
    the start of a cold solve mislead the mixing into a residual jump and a plateau (docs/anderson.md).
    0 (the default) never restarts, as the official code."""

    m: int = 6
    lam: float = 1e-4
    beta: float = 1.0
    safeguard: float = 0.0

    def validate(self) -> None:
        if int(self.m) < 1:
            raise InputError(f"anderson m (window) must be >= 1, got {self.m}")
        if not self.lam > 0:
            raise InputError(f"anderson lam must be > 0 (it keeps the mixing system non-singular), got {self.lam}")
        if not 0 < self.beta <= 1:
            raise InputError(f"anderson beta must be in (0, 1], got {self.beta}")
        if not (math.isfinite(self.safeguard) and self.safeguard >= 0):
            raise InputError(f"anderson safeguard must be >= 0 (0 = off), got {self.safeguard}")


@dataclass(frozen=True)
class BroydenOptions:
    """Limited-memory good Broyden; `memory` rank-one terms (0: as many as the iteration cap)."""

    memory: int = 0

    def validate(self) -> None:
        if int(self.memory) < 0:
            raise InputError(f"broyden memory must be >= 0 (0 = the iteration cap), got {self.memory}")


SOLVER_OPTIONS: dict[str, type] = {
    "fixed_point": FixedPointOptions,
    "anderson": AndersonOptions,
    "broyden": BroydenOptions,
}
"""Canonical solver name -> its options dataclass."""

SOLVER_NAMES = tuple(SOLVER_OPTIONS) + tuple(SOLVER_ALIASES)

SolverOptions = FixedPointOptions | AndersonOptions | BroydenOptions


def canonical_solver(name: str) -> str:
    """The canonical solver name for `name` (official aliases accepted); a clear error otherwise."""
    if isinstance(name, str):
        name = SOLVER_ALIASES.get(name, name)
        if name in SOLVER_OPTIONS:
            return name
    raise InputError(f"unknown solver {name!r}; choose one of {', '.join(SOLVER_NAMES)}")


def check_stop_mode(mode: str, what: str = "stop mode") -> str:
    """`mode` if it is one of STOP_MODES, else a clear error naming `what`."""
    if mode not in STOP_MODES:
        raise InputError(f"{what} must be one of {', '.join(STOP_MODES)}, got {mode!r}")
    return mode


def check_flow_tol(value: object, what: str = "flow tolerance") -> float:
    """`value` as a float if it is finite and >= 0 (0 = off), else a clear error naming `what`."""
    try:
        tol = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        tol = math.nan
    if not (math.isfinite(tol) and tol >= 0):
        raise InputError(f"{what} must be a finite number of pixels >= 0 (0 = off), got {value!r}")
    return tol


STOP_REASONS = ("tolerance", "stalled", "cap", "nonfinite")
"""Why a solve ended: every sample below the tolerance (its residual, or its flow step when the rule has a
flow tolerance); every sample below it or stalled (at least one stalled); the iteration cap; a NaN/Inf
residual."""

WARM_FLOW_TOL = 0.015
"""Fallback flow tolerance (px on the 1/8 grid) of warm-started solves, for models whose metadata recommends
none (a model's own value is its stop rule's `warm_flow_tol`, written by `stamp_stop_rule`; StopRule.for_warm_start;
opt-in: `deqflow infer --warm-start --warm-flow-tol`). A warm start begins next to the fixed point, so its flow
settles within a few steps while the residual of the stacked (hidden state, flow) vector, dominated by the hidden
state, keeps the solve going. How the value was chosen for the model it was tuned on: docs/warm_start.md,
scripts/warm_start_video.py."""


# A stalled solve: the residual improved by less than this fraction over the stall window (one default everywhere).
STALL_MARGIN = 0.01

@dataclass(frozen=True)
class StopRule:
    """When a solve stops: residual (in `stop_mode`) below `tol` for every sample (never when tol <= 0), or
    each remaining sample stalled (no relative improvement of at least `stall_margin` over `stall_window`
    steps; window 0 = off), or `max_iter` steps. `flow_tol` > 0 also counts a sample as converged once its
    flow step (`flow_step`: mean per-cell |delta flow| of the last step, px on the 1/8 grid) is below it: the
    accuracy a user sees, which settles before the hidden state does. `warm_flow_tol` > 0 replaces `flow_tol`
    in warm-started solves (`for_start`): a model's own warm-start exit, carried by its checkpoint or export.
    Plain data (as_dict writes the flow tolerances only when on, so files without them read as before)."""

    tol: float = 0.0
    stop_mode: str = "abs"
    max_iter: int = 60
    stall_window: int = 0
    stall_margin: float = STALL_MARGIN
    flow_tol: float = 0.0
    warm_flow_tol: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_stop_mode(self.stop_mode, "stop rule mode")
        if not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise InputError(f"stop rule max_iter must be an integer >= 1, got {self.max_iter!r}")
        if not isinstance(self.stall_window, int) or self.stall_window < 0:
            raise InputError(f"stall window must be an integer >= 0 (0 = off), got {self.stall_window!r}")
        if not 0 <= self.stall_margin < 1:
            raise InputError(f"stall margin must be in [0, 1), got {self.stall_margin}")
        if not math.isfinite(float(self.tol)):
            raise InputError(f"stop rule tolerance must be finite, got {self.tol}")
        check_flow_tol(self.flow_tol)
        check_flow_tol(self.warm_flow_tol, "warm-start flow tolerance")

    def describe(self) -> str:
        """One line for logs and printed summaries, e.g. 'rel < 0.005 or stalled over 6 or 60 iterations'."""
        parts = [f"{self.stop_mode} < {self.tol:g}"] if self.tol > 0 else []
        if self.flow_tol > 0:
            parts.append(f"flow step < {self.flow_tol:g} px")
        if self.stall_window > 0:
            parts.append(f"stalled over {self.stall_window}")
        return " or ".join([*parts, f"{self.max_iter} iterations"])

    def as_dict(self) -> dict:
        out = {"tol": float(self.tol), "stop_mode": self.stop_mode, "max_iter": int(self.max_iter),
               "stall_window": int(self.stall_window), "stall_margin": float(self.stall_margin)}
        for name in ("flow_tol", "warm_flow_tol"):  # absent when off: older readers reject keys they do not know
            if getattr(self, name) > 0:
                out[name] = float(getattr(self, name))
        return out

    def for_start(self, warm: bool) -> StopRule:
        """The rule one solve runs: a warm-started one (from a previous fixed point) tests the flow step against
        warm_flow_tol when it is set, since its residual overstates how far its flow still has to go."""
        return replace(self, flow_tol=self.warm_flow_tol) if warm and self.warm_flow_tol > 0 else self

    def for_warm_start(self, flow_tol: float = WARM_FLOW_TOL) -> StopRule:
        """The recommended rule of a warm-started solve: this one, with `flow_tol` when it sets no flow
        tolerance of its own (see WARM_FLOW_TOL). A rule that never stops early (tol <= 0: a fixed budget, as
        golden files and the official protocol use) keeps its budget."""
        return self if self.flow_tol > 0 or self.tol <= 0 else replace(self, flow_tol=float(flow_tol))

    @classmethod
    def from_dict(cls, data: object, where: str = "stop rule") -> StopRule:
        """A rule from its as_dict() form; InputError naming `where` for anything else."""
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - names:
            raise InputError(f"{where} must be a mapping with keys {sorted(names)}, got {data!r}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: {exc}") from None


RULE_FIELDS = ("tol", "stop_mode", "max_iter", "stall_window", "stall_margin", "flow_tol", "warm_flow_tol")


@dataclass(frozen=True)
class SolveSpec:
    """Everything one fixed-point solve needs besides f and its start: the method with its typed options, the
    stop rule, and what to return (the last iterate, as the exported graphs do, or per sample the
    lowest-residual one). One type for the host solver and the torch solvers; the CLI builds it from
    SolveOverrides over a model's own spec, checkpoints and exports carry the rule."""

    method: str = "fixed_point"
    options: SolverOptions | None = None  # None: SOLVER_OPTIONS[method]() (filled in on construction)
    stop: StopRule = field(default_factory=StopRule)
    return_final: bool = True

    def __post_init__(self) -> None:
        method = canonical_solver(self.method)
        object.__setattr__(self, "method", method)
        options = SOLVER_OPTIONS[method]() if self.options is None else self.options
        if type(options) is not SOLVER_OPTIONS[method]:
            raise InputError(f"solver {method!r} takes {SOLVER_OPTIONS[method].__name__}, "
                             f"got {type(options).__name__}")
        options.validate()
        object.__setattr__(self, "options", options)
        if not isinstance(self.stop, StopRule):
            raise InputError(f"a solve spec's stop rule must be a StopRule, got {type(self.stop).__name__}")

    @classmethod
    def of(cls, method: str = "fixed_point", options: SolverOptions | None = None, return_final: bool = True,
           **rule: Any) -> SolveSpec:
        """A spec with its stop rule given as keywords (StopRule's fields), e.g. SolveSpec.of(max_iter=8, tol=0)."""
        return cls(method=method, options=options, stop=StopRule(**rule), return_final=return_final)

    def for_start(self, warm: bool) -> SolveSpec:
        """The spec one solve runs (StopRule.for_start)."""
        stop = self.stop.for_start(warm)
        return self if stop is self.stop else replace(self, stop=stop)

    def as_dict(self) -> dict:
        """Plain data for reports: method, its options, the rule's fields, return_final."""
        return {"method": self.method, "options": asdict(self.options), **self.stop.as_dict(),
                "return_final": self.return_final}


@dataclass(frozen=True)
class SolveOverrides:
    """The partial form of a SolveSpec: what one call (a CLI invocation, a request, a forward call) changes;
    None keeps the model's value. `options` must be the options dataclass of the method used; left None, a
    changed method takes that method's options from the model (`options_for`) or their defaults."""

    method: str | None = None
    options: SolverOptions | None = None
    max_iter: int | None = None
    tol: float | None = None
    stop_mode: str | None = None
    stall_window: int | None = None
    stall_margin: float | None = None
    flow_tol: float | None = None
    warm_flow_tol: float | None = None
    return_final: bool | None = None

    def __post_init__(self) -> None:
        if self.method is not None:
            object.__setattr__(self, "method", canonical_solver(self.method))
        if self.max_iter is not None and (isinstance(self.max_iter, bool) or int(self.max_iter) < 1):
            raise InputError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.stop_mode is not None:
            check_stop_mode(self.stop_mode, "stop mode")
        if self.tol is not None and not math.isfinite(float(self.tol)):
            raise InputError(f"tol must be a finite number, got {self.tol}")
        for name in ("flow_tol", "warm_flow_tol"):
            if getattr(self, name) is not None:
                check_flow_tol(getattr(self, name), name)
        if self.options is not None:
            self.options.validate()

    def as_dict(self) -> dict:
        """The fields set here (options as a mapping), for reports."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if self.options is not None:
            out["options"] = asdict(self.options)
        return out

    def apply(self, spec: SolveSpec, options_for: Callable[[str], SolverOptions] | None = None) -> SolveSpec:
        """`spec` with every field set here replaced (validated)."""
        method = self.method or spec.method
        options = self.options
        if options is None:
            options = spec.options if method == spec.method else (options_for(method) if options_for else None)
        changes = {name: getattr(self, name) for name in RULE_FIELDS if getattr(self, name) is not None}
        casts = {"max_iter": int, "stall_window": int, "stop_mode": str}
        stop = replace(spec.stop, **{k: casts.get(k, float)(v) for k, v in changes.items()}) if changes else spec.stop
        final = spec.return_final if self.return_final is None else bool(self.return_final)
        return SolveSpec(method=method, options=options, stop=stop, return_final=final)

class StallMonitor:
    """Per-sample stagnation test, shared by the torch solvers and the host solver so both stop on the same
    step: a sample's reference residual is its value at its last significant improvement (below
    (1 - margin) x the previous reference); the sample is stalled (for good) once `window` consecutive
    steps bring none. numpy on (N,) residuals; NaN never counts as an improvement."""

    def __init__(self, n: int, window: int, margin: float) -> None:
        self.window, self.factor = int(window), 1.0 - float(margin)
        self.reference = np.full(n, np.inf)
        self.since = np.zeros(n, np.int64)
        self.stalled = np.zeros(n, bool)

    def update(self, residual: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Book one step's residuals of the samples `rows` (default: all); returns their stalled flags."""
        rows = slice(None) if rows is None else np.asarray(rows)
        reference = self.reference[rows]
        residual = np.asarray(residual, np.float64).reshape(reference.shape)
        improved = residual < reference * self.factor
        improved |= np.isinf(reference) & np.isfinite(residual)
        self.reference[rows] = np.where(improved, residual, reference)
        self.since[rows] = np.where(improved, 0, self.since[rows] + 1)
        if self.window > 0:
            self.stalled[rows] |= self.since[rows] >= self.window
        return self.stalled[rows]


def flow_step(delta: np.ndarray) -> np.ndarray:
    """(N,) mean over the 1/8 grid of the Euclidean norm of a flow update `delta` (N,2,h,w) (or (N,2,h*w)),
    in px of that grid: the quantity a flow tolerance tests (the torch tracker computes the same on device)."""
    delta = np.asarray(delta, np.float64)
    delta = delta.reshape(delta.shape[0], 2, -1)
    return np.sqrt((delta * delta).sum(axis=1)).mean(axis=1)


def converged(residual: np.ndarray, tol: float, flow: np.ndarray | None = None, flow_tol: float = 0.0) -> np.ndarray:
    """(N,) bools: residual below `tol` (never when tol <= 0) or flow step below `flow_tol` (never when 0 or
    `flow` is None). One test for the host and the torch solvers, so both stop on the same step."""
    residual = np.asarray(residual, np.float64)
    out = residual < tol if tol > 0 else np.zeros(residual.shape, bool)
    if flow_tol > 0 and flow is not None:
        out = out | (np.asarray(flow, np.float64).reshape(out.shape) < flow_tol)
    return out


def sample_stop_reasons(*, nonfinite: np.ndarray, converged: np.ndarray, stalled: np.ndarray,
                        at_cap: bool) -> list[str | None]:
    """Why each sample stops after a step (STOP_REASONS), or None for the ones that go on: every sample follows
    its own rule, exactly as it would alone in a batch of one."""
    out: list[str | None] = []
    for bad, done, stuck in zip(np.asarray(nonfinite, bool), np.asarray(converged, bool), np.asarray(stalled, bool)):
        out.append("nonfinite" if bad else "tolerance" if done else "stalled" if stuck else "cap" if at_cap else None)
    return out


def batch_reason(reasons: list[str]) -> str:
    """The batch's summary of its samples' stop reasons: the worst of them (nonfinite, cap, stalled, tolerance),
    which is what a solve that stopped every sample together would report."""
    for reason in ("nonfinite", "cap", "stalled", "tolerance"):
        if reason in reasons:
            return reason
    return ""


def stop_reason(*, nonfinite: bool, converged: np.ndarray, stalled: np.ndarray, at_cap: bool) -> str | None:
    """The reason to stop after a step (STOP_REASONS), or None to go on. `converged`/`stalled`: (N,) bools."""
    if nonfinite:
        return "nonfinite"
    if converged.all():
        return "tolerance"
    if (converged | stalled).all():
        return "stalled"
    return "cap" if at_cap else None
