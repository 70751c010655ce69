"""The host-side fixed-point solver for the split layout, shared by every backend.

A split export is three graphs: `encoder` (images -> correlation pyramid, context, coords0), `step` (one
application of f to the state z = (net, coords1), with the residual ||f(z) - z|| and ||f(z) - z|| /
(||f(z)|| + 1e-8) per sample) and `decode` (convex upsampling). The host drives the loop, which buys what a
graph cannot do: stop on a tolerance, warm start from the previous video frame's fixed point, and Anderson
acceleration (computed on the host in numpy).

Semantics mirror the PyTorch solvers (training.deq.solvers), so step counts and residuals compare:
a step is one evaluation of f; the solve stops when every sample's residual (in `stop_mode`) is below `tol`
(never when tol <= 0), at the cap, or when a residual is NaN/Inf; the result is the last iterate
(`return_final`, the default here, as in the unrolled/Loop graphs) or per sample the lowest-residual one.
Backends provide a `StepParts` object; values they pass around (context, net, coords1) may stay on the
device: the solver only pulls the (N,) residuals to the host each step, and the state when Anderson or
lowest-residual tracking needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from runtime.errors import InputError

METHODS = ("fixed_point", "anderson")  # host solver; the torch backend also runs "broyden"
ALL_METHODS = (*METHODS, "broyden")
STOP_MODES = ("abs", "rel")
REL_EPS = 1e-8


@dataclass
class SolverSettings:
    """Solver options; None means 'the model's own default' (its metadata or checkpoint config)."""

    max_iter: int | None = None
    tol: float | None = None  # <= 0: never stop early
    stop_mode: str | None = None  # 'abs' | 'rel'
    method: str | None = None  # 'fixed_point' | 'anderson' ('broyden': torch backend only)
    return_final: bool = True  # last iterate (as the graphs) or the lowest-residual one per sample
    anderson_m: int = 6
    anderson_lam: float = 1e-4
    anderson_beta: float = 1.0

    def __post_init__(self) -> None:
        if self.method == "naive_solver":
            self.method = "fixed_point"
        if self.method is not None and self.method not in ALL_METHODS:
            raise InputError(f"solver method must be one of {ALL_METHODS}, got {self.method!r}")
        if self.max_iter is not None and int(self.max_iter) < 1:
            raise InputError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.stop_mode is not None and self.stop_mode not in STOP_MODES:
            raise InputError(f"stop_mode must be one of {STOP_MODES}, got {self.stop_mode!r}")
        if self.tol is not None and not math.isfinite(float(self.tol)):
            raise InputError(f"tol must be a finite number, got {self.tol}")
        if self.anderson_m < 1 or self.anderson_lam <= 0 or not 0 < self.anderson_beta <= 1:
            raise InputError("anderson needs m >= 1, lam > 0 and 0 < beta <= 1; got "
                             f"m={self.anderson_m}, lam={self.anderson_lam}, beta={self.anderson_beta}")

    def with_defaults(self, max_iter: int, tol: float = 0.0, stop_mode: str = "abs",
                      method: str = "fixed_point") -> SolverSettings:
        """A copy with every None filled from the model's defaults."""
        return replace(self, max_iter=int(self.max_iter if self.max_iter is not None else max_iter),
                       tol=float(self.tol if self.tol is not None else tol),
                       stop_mode=self.stop_mode or stop_mode, method=self.method or method)

    def as_dict(self) -> dict:
        out = {"max_iter": self.max_iter, "tol": self.tol, "stop_mode": self.stop_mode, "method": self.method,
               "return_final": self.return_final}
        if self.method == "anderson":
            out.update(anderson_m=self.anderson_m, anderson_lam=self.anderson_lam, anderson_beta=self.anderson_beta)
        return out


@dataclass
class WarmState:
    """A solved frame's fixed point on the padded 1/8 grid: hidden state (N,C,h,w) and flow_low (N,2,h,w).

    Arrays are numpy for the ONNX Runtime and TensorRT backends and torch tensors for the torch backend;
    every backend accepts either (it converts)."""

    hidden: Any
    flow_low: Any


def forward_warp_state(state: WarmState) -> WarmState:
    """Carry a solved frame's fixed point along its own flow, for the next pair of a video.

    The fixed point of pair t-1 -> t describes the scene at frame t-1; the next pair starts at frame t, where
    everything has moved by that flow (constant velocity). Every cell of the 1/8 grid is moved to its rounded
    landing cell, taking its flow and hidden state with it; where several land on one cell the largest motion
    wins (a moving object usually occludes what is behind it); cells nothing lands on (disocclusions) take
    the state of the nearest landing point, as the official Sintel warm start's nearest-neighbour
    `forward_interpolate` does. Cells whose flow leaves the image are dropped. Returns numpy arrays (every
    backend accepts them).
    """
    from scipy.spatial import cKDTree

    flow, hidden = as_numpy(state.flow_low).astype(np.float32), as_numpy(state.hidden).astype(np.float32)
    if flow.ndim != 4 or flow.shape[1] != 2 or hidden.ndim != 4 or hidden.shape[2:] != flow.shape[2:]:
        raise InputError(f"warm-start state must be hidden (N,C,h,w) and flow (N,2,h,w), got {hidden.shape} / "
                         f"{flow.shape}")
    n, c, h, w = hidden.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    out_flow, out_hidden = np.empty_like(flow), np.empty_like(hidden)
    for i in range(n):
        x1, y1 = (xs + flow[i, 0]).ravel(), (ys + flow[i, 1]).ravel()
        tx, ty = np.rint(x1).astype(np.int64), np.rint(y1).astype(np.int64)
        inside = np.flatnonzero((tx >= 0) & (tx < w) & (ty >= 0) & (ty < h))
        if inside.size == 0:  # everything left the image: nothing to carry over
            out_flow[i], out_hidden[i] = flow[i], hidden[i]
            continue
        target = ty[inside] * w + tx[inside]
        magnitude = np.hypot(flow[i, 0].ravel(), flow[i, 1].ravel())[inside]
        order = np.lexsort((-magnitude, target))  # by landing cell, largest motion first
        cells, first = np.unique(target[order], return_index=True)
        src = np.full(h * w, -1, np.int64)
        src[cells] = inside[order[first]]
        holes = np.flatnonzero(src < 0)
        if holes.size:
            _, nearest = cKDTree(np.stack([x1[inside], y1[inside]], axis=1)).query(
                np.stack([xs.ravel()[holes], ys.ravel()[holes]], axis=1))
            src[holes] = inside[nearest]
        out_flow[i] = flow[i].reshape(2, -1)[:, src].reshape(2, h, w)
        out_hidden[i] = hidden[i].reshape(c, -1)[:, src].reshape(c, h, w)
    return WarmState(hidden=out_hidden, flow_low=out_flow)


@dataclass
class SolveStats:
    iterations: int
    abs_trace: np.ndarray  # (N, iterations)
    rel_trace: np.ndarray
    nonfinite: bool = False

    @property
    def final_abs(self) -> np.ndarray:
        return self.abs_trace[:, -1]

    @property
    def final_rel(self) -> np.ndarray:
        return self.rel_trace[:, -1]


@dataclass
class SolveResult:
    flow: np.ndarray  # (N,2,H,W) host
    flow_low: np.ndarray  # (N,2,h,w) host
    state: WarmState
    stats: SolveStats
    timings: dict[str, float] = field(default_factory=dict)


class StepParts(Protocol):
    """What a backend provides to run a split export. Values marked 'native' may live on the device."""

    hidden_dim: int

    def encode(self, image1: np.ndarray, image2: np.ndarray) -> tuple[Any, np.ndarray]:
        """-> (context: native, coords0: host (N,2,h,w))."""

    def step(self, ctx: Any, net: Any, coords1: Any) -> tuple[Any, Any, np.ndarray, np.ndarray]:
        """-> (net_next, coords1_next: native, residual (N,), residual_rel (N,): host)."""

    def decode(self, ctx: Any, net: Any, coords1: Any) -> tuple[np.ndarray, np.ndarray]:
        """-> (flow (N,2,H,W), flow_low (N,2,h,w)), host."""

    def to_host(self, x: Any) -> np.ndarray: ...

    def from_host(self, x: np.ndarray) -> Any: ...


def as_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of a numpy array or a torch tensor (any device) without importing torch."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _anderson_mix(xs: np.ndarray, fs: np.ndarray, n: int, lam: float, beta: float) -> np.ndarray:
    """Next Anderson iterate from the last n (x, f(x)) pairs (B, m, D): training.deq.solvers.anderson's rule,
    i.e. the bordered system [[0, 1^T], [1, G G^T + reg I]] with reg = lam * max ||g_i||^2."""
    xw, fw = xs[:, :n], fs[:, :n]
    g = (fw - xw).astype(np.float64)
    b = g.shape[0]
    gram = g @ g.transpose(0, 2, 1)
    reg = np.maximum(lam * np.diagonal(gram, axis1=1, axis2=2).max(axis=1), np.finfo(np.float32).tiny)
    system = np.zeros((b, n + 1, n + 1))
    system[:, 0, 1:] = 1
    system[:, 1:, 0] = 1
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


def solve(parts: StepParts, image1: np.ndarray, image2: np.ndarray, settings: SolverSettings,
          flow_init: np.ndarray | None = None, state: WarmState | None = None) -> SolveResult:
    """Run encoder, the host loop over the step graph, and the decoder. `settings` must be resolved
    (no None: see SolverSettings.with_defaults)."""
    import time

    if settings.max_iter is None or settings.tol is None:
        raise InputError("solve() needs resolved settings: max_iter and tol (see SolverSettings.with_defaults)")
    settings = replace(settings, method=settings.method or "fixed_point", stop_mode=settings.stop_mode or "abs")
    if settings.method not in METHODS:
        raise InputError(f"the host solver runs {' and '.join(METHODS)}, not {settings.method!r} "
                         "(broyden runs in the torch backend)")
    t0 = time.perf_counter()
    ctx, coords0 = parts.encode(image1, image2)
    t_enc = time.perf_counter()
    net_h, coords_h = initial_state(coords0, parts.hidden_dim, flow_init, state)
    n = coords0.shape[0]
    shapes = (net_h.shape, coords_h.shape)
    split = net_h[0].size
    anderson = settings.method == "anderson"
    track_best = not settings.return_final
    host_state = anderson or track_best
    net, coords1 = parts.from_host(net_h), parts.from_host(coords_h)
    traces: dict[str, list[np.ndarray]] = {"abs": [], "rel": []}
    lowest = {"abs": np.full(n, np.inf), "rel": np.full(n, np.inf)}
    best: np.ndarray | None = None  # packed (N, D) host copies when tracking the lowest residual
    m = min(settings.anderson_m, settings.max_iter)
    xs = fs = None
    nonfinite = False
    k = 0
    while True:
        fnet, fcoords, res, rel = parts.step(ctx, net, coords1)
        res, rel = np.asarray(res, np.float64).reshape(n), np.asarray(rel, np.float64).reshape(n)
        traces["abs"].append(res)
        traces["rel"].append(rel)
        fx = None
        if host_state:
            fx = np.concatenate([parts.to_host(fnet).reshape(n, -1), parts.to_host(fcoords).reshape(n, -1)], axis=1)
        for mode, cur in (("abs", res), ("rel", rel)):
            improved = cur < lowest[mode]
            lowest[mode] = np.where(improved, cur, lowest[mode])
            if track_best and mode == settings.stop_mode:
                best = fx.copy() if best is None else np.where(improved[:, None], fx, best)
        k += 1
        bad = not np.isfinite(res).all()
        nonfinite |= bad
        crit = (res if settings.stop_mode == "abs" else rel) if settings.return_final else lowest[settings.stop_mode]
        if k >= settings.max_iter or bad or (settings.tol > 0 and float(crit.max()) < settings.tol):
            net, coords1 = fnet, fcoords
            break
        if anderson:
            x = np.concatenate([parts.to_host(net).reshape(n, -1), parts.to_host(coords1).reshape(n, -1)], axis=1)
            if xs is None:
                xs = np.zeros((n, m, x.shape[1]), np.float32)
                fs = np.zeros_like(xs)
            xs[:, (k - 1) % m], fs[:, (k - 1) % m] = x, fx
            mixed = _anderson_mix(xs, fs, min(k, m), settings.anderson_lam, settings.anderson_beta)
            net = parts.from_host(np.ascontiguousarray(mixed[:, :split].reshape(shapes[0])))
            coords1 = parts.from_host(np.ascontiguousarray(mixed[:, split:].reshape(shapes[1])))
        else:
            net, coords1 = fnet, fcoords
    if track_best and best is not None:
        net = parts.from_host(np.ascontiguousarray(best[:, :split].reshape(shapes[0])))
        coords1 = parts.from_host(np.ascontiguousarray(best[:, split:].reshape(shapes[1])))
    t_loop = time.perf_counter()
    flow, flow_low = parts.decode(ctx, net, coords1)
    t_dec = time.perf_counter()
    stats = SolveStats(iterations=k, abs_trace=np.stack(traces["abs"], axis=1),
                       rel_trace=np.stack(traces["rel"], axis=1), nonfinite=nonfinite)
    hidden = parts.to_host(net)
    return SolveResult(flow=flow, flow_low=flow_low, state=WarmState(np.array(hidden, np.float32, copy=True),
                                                                     np.array(flow_low, np.float32, copy=True)),
                       stats=stats, timings={"encode_s": t_enc - t0, "solve_s": t_loop - t_enc,
                                             "decode_s": t_dec - t_loop})
