"""The host-side fixed-point loop of the split ONNX layout: encode, iterate the step graph, stop, decode.

A split export is three graphs: `encoder` (images -> correlation pyramid, context, coords0), `step` (one
application of f to the state z = (net, coords1), with the per-sample residuals ||f(z) - z|| and
||f(z) - z|| / (||f(z)|| + REL_EPS)) and `decode` (convex upsampling). The host drives the loop, which buys
what a graph cannot do: stop on a tolerance, warm start from the previous video frame's fixed point, and
Anderson acceleration (computed on the host in numpy). One loop serves every caller (the runtime backends,
the exporter's verification, the scripts and the tests), so the stop rule cannot drift between them.

Semantics mirror the PyTorch solvers (training.deq.solvers), so step counts and residuals compare: a step
is one evaluation of f; the solve stops when every sample's residual (in `stop_mode`) is below `tol` (never
when tol <= 0) or its flow step below `flow_tol` (deqflow.solver_spec.converged; a warm-started solve uses
`warm_flow_tol`, see StopRule.for_start) or stalled (deqflow.solver_spec.StallMonitor, the same test as
the torch solvers), at the cap, or when a residual is NaN/Inf, and says why (`SolveStats.reason`); the result
is the last iterate (`return_final`, the default here, as in the unrolled/Loop graphs) or per sample the
lowest-residual one. Callers provide a `StepParts` object; the values it passes around (context, net, coords1)
may stay on a device: the loop only pulls the (N,) residuals to the host each step, the flow (N,2,h,w) when a
flow tolerance is tested, and the state when Anderson or lowest-residual tracking needs it.
numpy only: no torch, no ONNX Runtime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from deqflow.errors import InputError
from deqflow.solve_stats import SolveStats, as_numpy
from deqflow.solver_spec import SolveSpec, StallMonitor, batch_reason, converged, flow_step, sample_stop_reasons

HOST_METHODS = ("fixed_point", "anderson")
"""What the host loop runs; broyden runs in the torch backend only."""


@dataclass
class WarmState:
    """A solved frame's fixed point on the padded 1/8 grid: hidden state (N,C,h,w) and flow_low (N,2,h,w).

    numpy for the exported-model backends, torch tensors for the torch backend; every backend accepts
    either (it converts)."""

    hidden: Any
    flow_low: Any


@dataclass
class SolveResult:
    flow: np.ndarray  # (N,2,H,W) host
    flow_low: np.ndarray  # (N,2,h,w) host
    state: WarmState
    stats: SolveStats
    timings: dict[str, float] = field(default_factory=dict)


class StepParts(Protocol):
    """What a caller provides to run a split export. Values marked 'native' may live on a device."""

    hidden_dim: int

    def encode(self, image1: np.ndarray, image2: np.ndarray) -> tuple[Any, np.ndarray]:
        """-> (context: native, coords0: host (N,2,h,w))."""

    def step(self, ctx: Any, net: Any, coords1: Any) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        """-> (net_next, coords1_next: native, residual (N,), residual_rel (N,): host)."""

    def decode(self, ctx: Any, net: Any, coords1: Any) -> tuple[np.ndarray, np.ndarray]:
        """-> (flow (N,2,H,W), flow_low (N,2,h,w)), host."""

    def to_host(self, x: Any) -> np.ndarray: ...

    def from_host(self, x: np.ndarray) -> Any: ...


def anderson_mix(xs: np.ndarray, fs: np.ndarray, n: int, lam: float, beta: float,
                 keep: np.ndarray | None = None) -> np.ndarray:
    """Next Anderson iterate from the last n (x, f(x)) pairs (B, m, D): training.deq.solvers.anderson's rule,
    i.e. the bordered system [[0, 1^T], [1, G G^T + reg I]] with reg = lam * max ||g_i||^2; slots with
    keep (B, m) 0 (a restarted history) get weight 0."""
    xw, fw = xs[:, :n], fs[:, :n]
    g = (fw - xw).astype(np.float64)
    border = np.ones(g.shape[:2]) if keep is None else keep[:, :n].astype(np.float64)
    if keep is not None:
        g = g * border[:, :, None]
    b = g.shape[0]
    gram = g @ g.transpose(0, 2, 1)
    reg = np.maximum(lam * np.diagonal(gram, axis1=1, axis2=2).max(axis=1), np.finfo(np.float32).tiny)
    system = np.zeros((b, n + 1, n + 1))
    system[:, 0, 1:] = border
    system[:, 1:, 0] = border
    system[:, 1:, 1:] = gram + reg[:, None, None] * np.eye(n)
    rhs = np.zeros((b, n + 1))
    rhs[:, 0] = 1
    alpha = np.linalg.solve(system, rhs[..., None])[:, 1:, 0]  # (B, n)
    x = np.einsum("bn,bnd->bd", alpha, fw.astype(np.float64))
    if beta != 1:
        x = beta * x + (1 - beta) * np.einsum("bn,bnd->bd", alpha, xw.astype(np.float64))
    return x.astype(np.float32)


def initial_state(coords0: np.ndarray, hidden_dim: int, flow_init: np.ndarray | None = None,
                  state: WarmState | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(net, coords1) on the host: zero hidden state at zero flow, or the warm start (as DEQFlow.initial_state)."""
    n, _, h, w = coords0.shape
    net = np.zeros((n, hidden_dim, h, w), np.float32)
    coords1 = coords0.astype(np.float32, copy=True)
    if state is not None:
        hidden, flow = as_numpy(state.hidden), as_numpy(state.flow_low)
        if hidden.shape != net.shape or flow.shape != coords0.shape:
            raise InputError(f"warm-start state has hidden {hidden.shape} / flow {flow.shape}, but this input "
                             f"needs {net.shape} / {coords0.shape} (frame size or batch changed?)")
        net = np.ascontiguousarray(hidden, dtype=np.float32)
        coords1 = coords1 + flow.astype(np.float32)
    if flow_init is not None:
        flow_init = as_numpy(flow_init)
        if flow_init.shape != coords0.shape:
            raise InputError(f"flow_init must have shape {coords0.shape} (1/8 resolution), got {flow_init.shape}")
        coords1 = coords1 + flow_init.astype(np.float32)
    return net, np.ascontiguousarray(coords1)


class _Packer:
    """(net, coords1) in the caller's native form <-> one (N, D) host array per sample (Anderson, returned
    iterates); any number of samples N."""

    def __init__(self, parts: StepParts, net: np.ndarray, coords1: np.ndarray) -> None:
        self.parts, self.shapes, self.split = parts, (net.shape[1:], coords1.shape[1:]), net[0].size

    def pack(self, net: Any, coords1: Any) -> np.ndarray:
        net, coords1 = self.parts.to_host(net), self.parts.to_host(coords1)
        return np.concatenate([net.reshape(len(net), -1), coords1.reshape(len(coords1), -1)], axis=1)

    def unpack(self, x: np.ndarray) -> tuple[Any, Any]:
        net = np.ascontiguousarray(x[:, :self.split].reshape(len(x), *self.shapes[0]))
        coords1 = np.ascontiguousarray(x[:, self.split:].reshape(len(x), *self.shapes[1]))
        return self.parts.from_host(net), self.parts.from_host(coords1)


class _Anderson:
    """The ring buffer of the last m (x, f(x)) pairs and the mixing step; with `safeguard` > 0, a sample whose
    residual grew by more than that factor forgets its history (AndersonOptions.safeguard)."""

    def __init__(self, m: int, lam: float, beta: float, safeguard: float = 0.0) -> None:
        self.m, self.lam, self.beta, self.safeguard, self.k = m, lam, beta, safeguard, 0
        self.xs: np.ndarray | None = None
        self.fs: np.ndarray | None = None
        self.keep: np.ndarray | None = None
        self.previous: np.ndarray | None = None

    def next(self, x: np.ndarray, fx: np.ndarray, res: Any = None) -> np.ndarray:
        if self.xs is None:
            self.xs = np.zeros((x.shape[0], self.m, x.shape[1]), np.float32)
            self.fs = np.zeros_like(self.xs)
            self.keep = np.ones((x.shape[0], self.m)) if self.safeguard > 0 else None
            self.previous = np.full(x.shape[0], np.inf)
        slot = self.k % self.m
        self.xs[:, slot], self.fs[:, slot] = x, fx
        if self.keep is not None:
            res = np.linalg.norm(fx - x, axis=1) if res is None else np.asarray(res, np.float64).reshape(-1)
            self.keep[res > self.safeguard * self.previous] = 0
            self.keep[:, slot] = 1
            self.previous = res
        self.k += 1
        with np.errstate(invalid="ignore"):  # a sample gone NaN mixes to NaN alone (it has stopped already)
            return anderson_mix(self.xs, self.fs, min(self.k, self.m), self.lam, self.beta, self.keep)

    def drop(self, keep: np.ndarray) -> None:
        """Keep only the histories of the samples at positions `keep` (the others have stopped)."""
        self.xs, self.fs, self.previous = self.xs[keep], self.fs[keep], self.previous[keep]
        self.keep = None if self.keep is None else self.keep[keep]


class _Residuals:
    """Per-sample residual traces, stop rule and returned iterates: every sample stops by its own rule, exactly
    as it would alone in a batch of one, and keeps its own count, reason and iterate (last or lowest-residual).
    Traces are (N,) per batch step, NaN where a sample no longer counts."""

    def __init__(self, n: int, spec: SolveSpec) -> None:
        self.n, self.rule, self.return_final = n, spec.stop, spec.return_final
        self.traces: dict[str, list[np.ndarray]] = {"abs": [], "rel": [], "flow": []}
        self.lowest = np.full(n, np.inf)  # in the stop mode
        self.best: np.ndarray | None = None  # packed (N, D) when tracking the lowest residual
        self.active = np.arange(n)  # the samples still solving
        self.counts = np.zeros(n, np.int64)
        self.reasons = [""] * n
        self.nonfinite = np.zeros(n, bool)
        window = self.rule.stall_window
        self.stall = StallMonitor(n, window, self.rule.stall_margin) if window > 0 else None
        self.steps = 0

    @property
    def keep_best(self) -> bool:
        return not self.return_final

    def _book(self, name: str, values: np.ndarray) -> None:
        full = np.full(self.n, np.nan)
        full[self.active] = values
        self.traces[name].append(full)

    def add(self, rows: np.ndarray, res: Any, rel: Any, fx: np.ndarray | None, flow: np.ndarray | None) -> np.ndarray:
        """Book one step of the arrays' rows (`rows`: their samples, ascending; samples that stopped before are
        not booked); returns the positions (into `rows`) of the samples that stop on this step."""
        pos = np.searchsorted(rows, self.active)
        res = np.asarray(res, np.float64).reshape(len(rows))[pos]
        rel = np.asarray(rel, np.float64).reshape(len(rows))[pos]
        flow = None if flow is None else np.asarray(flow, np.float64).reshape(len(rows))[pos]
        for name, values in (("abs", res), ("rel", rel), ("flow", flow)):
            if values is not None:
                self._book(name, values)
        current = res if self.rule.stop_mode == "abs" else rel
        improved = current < self.lowest[self.active]
        self.lowest[self.active] = np.where(improved, current, self.lowest[self.active])
        if self.keep_best:
            self.best = fx.copy() if self.best is None else self.best  # the first step books every sample
            self.best[self.active] = np.where(improved[:, None], fx[pos], self.best[self.active])
        bad = ~np.isfinite(res)
        self.nonfinite[self.active] |= bad
        self.steps += 1
        crit = current if self.return_final else self.lowest[self.active]
        done = converged(crit, self.rule.tol, flow, self.rule.flow_tol)
        stalled = self.stall.update(current, self.active) if self.stall is not None else np.zeros(len(pos), bool)
        reasons = sample_stop_reasons(nonfinite=bad, converged=done, stalled=stalled,
                                      at_cap=self.steps >= self.rule.max_iter)
        stop = np.array([r is not None for r in reasons], bool)
        for j in np.flatnonzero(stop):
            self.reasons[self.active[j]], self.counts[self.active[j]] = reasons[j], self.steps
        stopping = pos[stop]
        self.active = self.active[~stop]
        return stopping

    def done(self) -> bool:
        return len(self.active) == 0

    def stats(self) -> SolveStats:
        abs_trace, rel_trace = np.stack(self.traces["abs"], axis=1), np.stack(self.traces["rel"], axis=1)
        return SolveStats(iterations=self.steps, abs_trace=abs_trace, rel_trace=rel_trace,
                          abs_lowest=_lowest(abs_trace), rel_lowest=_lowest(rel_trace), nonfinite=self.nonfinite,
                          reason=batch_reason(self.reasons), sample_iterations=self.counts.copy(),
                          reasons=list(self.reasons),
                          stalled=None if self.stall is None else self.stall.stalled.copy(),
                          flow_trace=np.stack(self.traces["flow"], axis=1) if self.traces["flow"] else None)


def _lowest(trace: np.ndarray) -> np.ndarray:
    """(N,) lowest finite value of each row (inf when none), as the torch solvers keep it."""
    return np.where(np.isfinite(trace), trace, np.inf).min(axis=1)


def check_spec(spec: SolveSpec) -> SolveSpec:
    """`spec` if the host loop can run its method; a clear error otherwise."""
    if not isinstance(spec, SolveSpec):
        raise InputError(f"the host solver takes a SolveSpec, got {type(spec).__name__}")
    if spec.method not in HOST_METHODS:
        raise InputError(f"the host solver runs {' and '.join(HOST_METHODS)}, not {spec.method!r} "
                         "(broyden runs in the torch backend)")
    return spec


def fixed_point_loop(parts: StepParts, ctx: Any, start: tuple[np.ndarray, np.ndarray],
                     spec: SolveSpec) -> tuple[Any, Any, SolveStats]:
    """Iterate the step from the host state `start` = (net, coords1) until every sample has stopped by its own
    rule; returns each sample's iterate (native) and the statistics. `spec` as check_spec accepts it.

    Parts whose `compactable` is true (a step graph with a dynamic batch axis; they offer `select(ctx, rows)` and
    `take(x, positions)`) are compacted: only the samples still solving are stepped. Others are stepped whole
    (masked: a constant shape, as CUDA graphs and fixed TensorRT profiles want): a sample that has stopped is
    still computed but no longer booked, which costs what a batch cost before and answers the same."""
    packer = _Packer(parts, *start)
    residuals = _Residuals(start[0].shape[0], spec)
    mixer = None
    if spec.method == "anderson":
        o = spec.options
        mixer = _Anderson(min(o.m, spec.stop.max_iter), o.lam, o.beta, o.safeguard)
    compact = bool(getattr(parts, "compactable", False))
    rows, step_ctx, chosen = np.arange(residuals.n), ctx, None
    net, coords1 = parts.from_host(start[0]), parts.from_host(start[1])
    while True:
        fnet, fcoords, res, rel = parts.step(step_ctx, net, coords1)
        fx = packer.pack(fnet, fcoords) if (mixer is not None or residuals.keep_best) else None
        flow = flow_step(parts.to_host(fcoords) - parts.to_host(coords1)) if spec.stop.flow_tol > 0 else None
        stopping = residuals.add(rows, res, rel, fx, flow)
        if residuals.done() or len(stopping):  # the returned iterates of the samples stopping now
            chosen = _keep_returned(chosen, residuals, packer, rows, stopping, fx, (fnet, fcoords))
        if residuals.done():
            break
        if mixer is None:
            net, coords1 = fnet, fcoords
        else:
            net, coords1 = packer.unpack(mixer.next(packer.pack(net, coords1), fx, res))
        if compact and len(stopping):
            keep = np.setdiff1d(np.arange(len(rows)), stopping)
            rows, step_ctx = rows[keep], parts.select(ctx, rows[keep])
            net, coords1 = parts.take(net, keep), parts.take(coords1, keep)
            if mixer is not None:
                mixer.drop(keep)
    if residuals.best is not None:
        return (*packer.unpack(residuals.best), residuals.stats())
    if isinstance(chosen, tuple):
        return (*chosen, residuals.stats())
    return (*packer.unpack(chosen), residuals.stats())


def _keep_returned(chosen: Any, residuals: _Residuals, packer: _Packer, rows: np.ndarray, stopping: np.ndarray,
                   fx: np.ndarray | None, last: tuple[Any, Any]) -> Any:
    """The last iterates of the samples stopping now, kept until every sample has stopped: the native state
    itself when the whole batch stops on one step (no copy), else packed host rows (N, D)."""
    if residuals.keep_best:
        return None  # residuals.best holds them
    if chosen is None and len(stopping) == residuals.n:
        return last
    packed = fx if fx is not None else packer.pack(*last)
    if chosen is None:
        chosen = np.zeros((residuals.n, packed.shape[1]), np.float32)
    chosen[rows[stopping]] = packed[stopping]
    return chosen


def solve(parts: StepParts, image1: np.ndarray, image2: np.ndarray, spec: SolveSpec,
          flow_init: np.ndarray | None = None, state: WarmState | None = None) -> SolveResult:
    """Run the encoder, the host loop over the step graph, and the decoder; a warm start (`state`) runs
    the spec's warm-start rule (SolveSpec.for_start)."""
    spec = check_spec(spec).for_start(warm=state is not None)
    t0 = time.perf_counter()
    ctx, coords0 = parts.encode(image1, image2)
    t_enc = time.perf_counter()
    start = initial_state(coords0, parts.hidden_dim, flow_init, state)
    net, coords1, stats = fixed_point_loop(parts, ctx, start, spec)
    t_loop = time.perf_counter()
    flow, flow_low = parts.decode(ctx, net, coords1)
    t_dec = time.perf_counter()
    warm = WarmState(np.array(parts.to_host(net), np.float32, copy=True), np.array(flow_low, np.float32, copy=True))
    return SolveResult(flow=flow, flow_low=flow_low, state=warm, stats=stats,
                       timings={"encode_s": t_enc - t0, "solve_s": t_loop - t_enc, "decode_s": t_dec - t_loop})
