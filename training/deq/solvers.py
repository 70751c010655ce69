"""Batched fixed-point solvers for z = f(z): plain (damped) iteration, Anderson acceleration, Broyden.

Conventions shared by all solvers (and by the official DEQ-Flow code, so step counts and residuals compare):
- a step is one evaluation of f; `iterations` counts them and `max_iter` caps them;
- the residual of an evaluation at x is ||f(x) - x||_2 per sample ("abs") and that divided by
  ||f(x)||_2 + REL_EPS ("rel"); the estimate it is booked against is f(x) for plain iteration and Anderson
  (the next iterate) and x itself for Broyden;
- the returned z is, per sample, the estimate with the lowest residual in `stop_mode`, or the last one
  with `return_final`; the solve stops once that residual is below `tol` for every sample (never when
  tol <= 0), once every sample is below it or stalled (no relative improvement of `stall_margin` over
  `stall_window` steps; deqflow.solver_spec.StallMonitor, shared with the host solver; window 0 = off), at
  the cap, or when an evaluation is NaN/Inf (reported in `stats.nonfinite`, never iterated on). Why it
  stopped is `stats.reason` (deqflow.solver_spec.STOP_REASONS). With `flow_stop=FlowStop(tol, size)` a
  sample also counts as converged once the flow part of f(x) - x moves it by less than tol px per cell
  (deqflow.solver_spec.converged, as the host solver tests it).
Solvers run without autograd: gradients are attached afterwards by `training.deq.grad`. States of any
shape (B, ...) are accepted and handled as flat (B, D) vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from deqflow.errors import InputError
from deqflow.solve_stats import SolveStats
from deqflow.solver_spec import (
    REL_EPS,
    STALL_MARGIN,
    AndersonOptions,
    BroydenOptions,
    FixedPointOptions,
    StallMonitor,
    batch_reason,
    check_stop_mode,
    converged,
    sample_stop_reasons,
)

Func = Callable[[Tensor], Tensor]


def concat_stats(parts: Sequence[SolveStats]) -> SolveStats:
    """Stats of consecutive solves (the segments of the sliced training core) as one record: each sample's
    evaluations in order (its row of the traces, NaN after its last), its counts summed, its last reason."""
    if len(parts) == 1:
        return parts[0]
    counts = np.sum([p.sample_iterations for p in parts], axis=0)
    stalls = [p.stalled for p in parts if p.stalled is not None]

    def joined(name: str) -> Tensor:
        first = getattr(parts[0], name)
        out = first.new_full((len(counts), int(counts.max())), math.nan)
        for i in range(len(counts)):
            row = torch.cat([getattr(p, name)[i, :int(p.sample_iterations[i])] for p in parts])
            out[i, :len(row)] = row
        return out

    return SolveStats(
        iterations=int(counts.max()), abs_trace=joined("abs_trace"), rel_trace=joined("rel_trace"),
        abs_lowest=torch.stack([p.abs_lowest for p in parts]).amin(0),
        rel_lowest=torch.stack([p.rel_lowest for p in parts]).amin(0),
        sradius=parts[-1].sradius, nonfinite=torch.stack([p.nonfinite for p in parts]).any(0),
        stalled=torch.stack(stalls).any(0) if stalls else None, reason=parts[-1].reason,
        sample_iterations=counts, reasons=list(parts[-1].reasons),
    )


@dataclass
class FixedPointResult:
    """A torch solve's estimate of z* (shape of z0), its estimates at the requested `indexing` steps (in that
    order; may be empty) and its statistics."""

    z: Tensor
    trajectory: list[Tensor]
    stats: SolveStats


@dataclass(frozen=True)
class FlowStop:
    """A flow tolerance (deqflow.solver_spec.StopRule.flow_tol) and where the flow sits in the flat state:
    its last `size` entries, laid out (2, cells) as DEQFlow packs (hidden, coords1). Passed to the solvers
    as `flow_stop`: the generic solvers know nothing of the state's layout."""

    tol: float
    size: int


class _Tracker:
    """Residual bookkeeping shared by the solvers, per sample: traces, each sample's returned estimate, its own
    evaluation count and stop reason, snapshots. After each evaluation it says which samples go on; the solvers
    then step only those, so each sample's solve is the one it would have alone in a batch of one."""

    def __init__(self, x0: Tensor, *, max_iter: int, tol: float, stop_mode: str,
                 indexing: Sequence[int] | None, return_final: bool, stall_window: int = 0,
                 stall_margin: float = STALL_MARGIN, flow_stop: FlowStop | None = None) -> None:
        check_stop_mode(stop_mode, "stop_mode")
        if int(max_iter) < 1:
            raise InputError(f"max_iter must be >= 1, got {max_iter}")
        self.steps = [int(s) for s in (indexing or ())]
        if any(s < 1 for s in self.steps):
            raise InputError(f"indexing steps are 1-based and must be >= 1, got {self.steps}")
        b = x0.shape[0]
        inf = torch.full((b,), math.inf, dtype=x0.dtype, device=x0.device)
        self.lowest = {"abs": inf, "rel": inf.clone()}
        self.traces: dict[str, list[Tensor]] = {"abs": [], "rel": []}
        self.nonfinite = torch.zeros(b, dtype=torch.bool, device=x0.device)
        self.best = x0.clone()  # returned if no evaluation is finite; never alias the caller's z0
        self.snapshots: dict[int, Tensor] = {}
        self.max_iter, self.tol, self.mode = int(max_iter), float(tol), stop_mode
        self.return_final = return_final
        self.iterations = 0
        self.active = np.arange(b)  # original indices of the samples still solving, in their row order
        self.counts = np.zeros(b, np.int64)
        self.reasons = [""] * b
        self.stall = StallMonitor(b, stall_window, stall_margin) if int(stall_window) > 0 else None
        self.flow = flow_stop
        if self.flow is not None and not (0 < self.flow.size <= x0.shape[1] and self.flow.size % 2 == 0):
            raise InputError(f"flow stop size must be even and within the state's {x0.shape[1]} entries, "
                             f"got {self.flow.size}")

    def _rows(self) -> slice | Tensor:
        """Index of the active samples into whole-batch tensors (a slice while every sample is active)."""
        if len(self.active) == len(self.counts):
            return slice(None)
        return torch.as_tensor(self.active, device=self.best.device)

    def record(self, est: Tensor, fx: Tensor, x: Tensor) -> slice | Tensor | None:
        """Book one evaluation fx = f(x) of the active samples (rows in `active` order) against the estimates
        `est`. Returns the rows that go on (a slice: all of them), or None when every sample has stopped."""
        rows = self._rows()
        absr = (fx - x).norm(dim=1)
        current = {"abs": absr, "rel": absr / (fx.norm(dim=1) + REL_EPS)}
        for mode, res in current.items():
            full = torch.full_like(self.lowest[mode], math.nan)
            full[rows] = res
            self.traces[mode].append(full)
            lowest = self.lowest[mode][rows]
            improved = res < lowest  # False for NaN: a NaN never replaces a finite best
            self.lowest[mode][rows] = torch.where(improved, res, lowest)
            if mode == self.mode:
                self.best[rows] = est if self.return_final else torch.where(improved[:, None], est, self.best[rows])
        self.iterations += 1
        if self.iterations in self.steps:
            self.snapshots[self.iterations] = self.best.clone()
        bad = ~torch.isfinite(absr)
        self.nonfinite[rows] |= bad
        return self._go_on(bad, current[self.mode], self._flow_step(fx, x))

    def _flow_step(self, fx: Tensor, x: Tensor) -> Tensor | None:
        """(A,) mean per-cell |delta flow| of this evaluation (deqflow.solver_spec.flow_step), in float64 as
        the host solver computes it; None without a flow stop."""
        if self.flow is None:
            return None
        delta = (fx[:, -self.flow.size:] - x[:, -self.flow.size:]).double().reshape(fx.shape[0], 2, -1)
        return delta.square().sum(dim=1).sqrt().mean(dim=1)

    def _go_on(self, bad: Tensor, current: Tensor, flow: Tensor | None) -> slice | Tensor | None:
        """Each active sample's stop test (deqflow.solver_spec.sample_stop_reasons); the stopped ones keep their
        count and reason. One device-to-host copy per step: NaN flags, test inputs and residuals together."""
        at_cap = self.iterations >= self.max_iter
        n = len(self.active)
        if self.stall is None and self.tol <= 0 and flow is None and not at_cap and not bool(bad.any()):
            return slice(None)  # nothing can stop a sample on this step: no copy of the residuals
        crit = current if self.return_final else self.lowest[self.mode][self._rows()]
        rows = [bad.double(), crit.double(), current.double()] + ([] if flow is None else [flow])
        host = torch.stack(rows).cpu().numpy()
        done = converged(host[1], self.tol, None if flow is None else host[3], 0.0 if flow is None else self.flow.tol)
        stalled = self.stall.update(host[2], self.active) if self.stall is not None else np.zeros(n, bool)
        reasons = sample_stop_reasons(nonfinite=host[0] > 0, converged=done, stalled=stalled, at_cap=at_cap)
        stop = np.array([r is not None for r in reasons])
        for pos in np.flatnonzero(stop):
            self.reasons[self.active[pos]] = reasons[pos]
            self.counts[self.active[pos]] = self.iterations
        if stop.all():
            self.active = self.active[:0]
            return None
        if not stop.any():
            return slice(None)
        keep = np.flatnonzero(~stop)
        self.active = self.active[keep]
        return torch.as_tensor(keep, device=bad.device)

    def result(self, shape: torch.Size) -> FixedPointResult:
        final = self.best.reshape(shape)
        stalled = None if self.stall is None else torch.from_numpy(self.stall.stalled.copy())
        trajectory = [self.snapshots[s].reshape(shape) if s in self.snapshots else final for s in self.steps]
        stats = SolveStats(
            iterations=self.iterations,
            abs_trace=torch.stack(self.traces["abs"], dim=1),
            rel_trace=torch.stack(self.traces["rel"], dim=1),
            abs_lowest=self.lowest["abs"],
            rel_lowest=self.lowest["rel"],
            nonfinite=self.nonfinite,
            stalled=None if stalled is None else stalled.to(self.nonfinite.device),
            reason=batch_reason(self.reasons),
            sample_iterations=self.counts.copy(),
            reasons=list(self.reasons),
        )
        return FixedPointResult(z=final, trajectory=trajectory, stats=stats)


class _ActiveMap:
    """f on the samples still solving, as flat (A, D) rows. Compacted when f offers `restrict(indices)` (a map of
    the same equation on those samples only, as DEQFlow's step does): a converged sample costs nothing more.
    Otherwise masked: f runs on the whole batch with the stopped samples' last states held, and their rows are
    dropped; the answers are the same for any f whose samples do not interact."""

    def __init__(self, f: Func, z0: Tensor) -> None:
        if not isinstance(z0, Tensor) or z0.dim() < 2 or z0.shape[0] < 1:
            raise InputError(f"z0 must be a tensor of shape (B, ...) with a batch dimension, got "
                             f"{tuple(z0.shape) if isinstance(z0, Tensor) else type(z0).__name__}")
        if not z0.is_floating_point():
            raise InputError(f"z0 must be a floating-point tensor, got {z0.dtype}")
        self.f, self.shape = f, z0.shape
        self.x0 = z0.detach().reshape(z0.shape[0], -1)
        self.compact = callable(getattr(f, "restrict", None))
        self.current: Func = f
        self.held: Tensor | None = None  # masked mode: the whole batch's latest states
        self.rows: np.ndarray | None = None  # original indices of the active samples (None: all)

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if self.rows is None or self.compact:
            out = self.current(x.view(n, *self.shape[1:]))
            if tuple(out.shape) != (n, *self.shape[1:]):
                raise InputError(f"f must return the state's shape {(n, *self.shape[1:])}, got {tuple(out.shape)}")
            return out.reshape(n, -1)
        rows = torch.as_tensor(self.rows, device=x.device)
        self.held[rows] = x
        return self.f(self.held.view(self.shape)).reshape(self.shape[0], -1)[rows]

    def keep(self, keep: slice | Tensor, active: np.ndarray) -> None:
        """After a step that stopped some samples: `active` are the original indices still solving. Masked mode
        holds the stopped samples at their start (any finite state of theirs serves: their rows are dropped)."""
        if isinstance(keep, slice):
            return
        self.rows = active
        if self.compact:
            self.current = self.f.restrict(torch.as_tensor(active, device=self.x0.device))
        elif self.held is None:
            self.held = self.x0.clone()


@torch.no_grad()
def fixed_point_iter(f: Func, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "abs",
                     indexing: Sequence[int] | None = None, return_final: bool = False,
                     damping: float = 1.0, stall_window: int = 0, stall_margin: float = STALL_MARGIN,
                     flow_stop: FlowStop | None = None) -> FixedPointResult:
    """Plain iteration z <- (1-d) z + d f(z) (the official `naive_solver` when d = 1)."""
    FixedPointOptions(damping=damping).validate()
    step = _ActiveMap(f, z0)
    x = step.x0
    track = _Tracker(x, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing,
                     return_final=return_final, stall_window=stall_window, stall_margin=stall_margin,
                     flow_stop=flow_stop)
    while True:
        fx = step(x)
        nxt = fx if damping == 1 else torch.lerp(x, fx, damping)
        keep = track.record(nxt, fx, x)
        if keep is None:
            break
        step.keep(keep, track.active)
        x = nxt[keep]
    return track.result(z0.shape)


def _anderson_step(xw: Tensor, fw: Tensor, lam: float, beta: float, keep: Tensor | None) -> Tensor:
    """The mixed iterate from the window (B, n, D); slots with keep 0 (restarted history) get weight 0 exactly:
    their g rows and border entries are zeroed, so their equation reads reg * alpha_i = 0."""
    b, n, _ = xw.shape
    g = fw - xw
    if keep is not None:
        g = g * keep[:, :, None]
    system = xw.new_zeros(b, n + 1, n + 1)
    system[:, 0, 1:] = 1 if keep is None else keep
    system[:, 1:, 0] = 1 if keep is None else keep
    gram = torch.bmm(g, g.transpose(1, 2))
    reg = (lam * gram.diagonal(dim1=1, dim2=2).amax(dim=1)).clamp_min(torch.finfo(xw.dtype).tiny)
    system[:, 1:, 1:] = gram + reg[:, None, None] * torch.eye(n, dtype=xw.dtype, device=xw.device)
    rhs = xw.new_zeros(b, n + 1, 1)
    rhs[:, 0] = 1
    alpha = torch.linalg.solve(system, rhs)[:, 1:, 0].unsqueeze(1)  # (B, 1, n)
    x = torch.bmm(alpha, fw)[:, 0]
    if beta != 1:
        x = beta * x + (1 - beta) * torch.bmm(alpha, xw)[:, 0]
    return x


@torch.no_grad()
def anderson(f: Func, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "abs",
             indexing: Sequence[int] | None = None, return_final: bool = False,
             m: int = 6, lam: float = 1e-4, beta: float = 1.0, safeguard: float = 0.0, stall_window: int = 0,
             stall_margin: float = STALL_MARGIN, flow_stop: FlowStop | None = None) -> FixedPointResult:
    """Anderson acceleration: the next iterate mixes the last m (x, f(x)) pairs with weights alpha that
    minimise ||sum_i alpha_i g_i||^2 + reg ||alpha||^2 subject to sum_i alpha_i = 1, g_i = f(x_i) - x_i.

    The constrained least squares is the bordered (n+1)x(n+1) system [[0, 1^T], [1, G G^T + reg I]]
    [nu; alpha] = [1; 0], solved per sample; beta mixes f(x) (beta = 1) with x. Unlike the official code
    (reg = lam), reg = lam * max_i ||g_i||^2 is relative: an absolute lam swamps G G^T once residuals
    fall below sqrt(lam) and turns the mixing into plain averaging, which can make Anderson slower than
    plain iteration on slowly contracting maps even at tol 1e-3. safeguard > 0: a sample whose residual
    grew by more than that factor over its previous step forgets its history (AndersonOptions). The history
    of a sample that stops is dropped with it.
    """
    AndersonOptions(m=m, lam=lam, beta=beta, safeguard=safeguard).validate()
    step = _ActiveMap(f, z0)
    x = step.x0
    track = _Tracker(x, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing,
                     return_final=return_final, stall_window=stall_window, stall_margin=stall_margin,
                     flow_stop=flow_stop)
    b, d = x.shape
    m = min(m, int(max_iter))
    xs = x.new_zeros(b, m, d)
    fs = x.new_zeros(b, m, d)
    keep_slots = x.new_ones(b, m) if safeguard > 0 else None
    previous = x.new_full((b,), math.inf)
    k = 0
    while True:
        fx = step(x)
        xs[:, k % m], fs[:, k % m] = x, fx
        rows = track.record(fs[:, k % m], fx, x)
        if rows is None:
            break
        if keep_slots is not None:
            res = (fx - x).norm(dim=1)
            keep_slots[res > safeguard * previous] = 0
            keep_slots[:, k % m] = 1
            previous = res
        step.keep(rows, track.active)
        if not isinstance(rows, slice):
            xs, fs, previous = xs[rows], fs[rows], previous[rows]
            keep_slots = None if keep_slots is None else keep_slots[rows]
        k += 1
        n = min(k, m)
        x = _anderson_step(xs[:, :n], fs[:, :n], lam, beta, None if keep_slots is None else keep_slots[:, :n])
    return track.result(z0.shape)


@torch.no_grad()
def broyden(f: Func, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "abs",
            indexing: Sequence[int] | None = None, return_final: bool = False,
            memory: int = 0, stall_window: int = 0, stall_margin: float = STALL_MARGIN,
            flow_stop: FlowStop | None = None) -> FixedPointResult:
    """Limited-memory "good" Broyden on g(z) = f(z) - z, full steps (no line search).

    The inverse Jacobian of g is kept as -I + U V^T with at most `memory` rank-one terms (0: max_iter,
    i.e. never forgetting, as in the official code; older terms are overwritten cyclically).
    The first step is a plain fixed-point step. An update whose denominator vanishes is skipped. The terms
    of a sample that stops are dropped with it.
    """
    BroydenOptions(memory=memory).validate()
    step_f = _ActiveMap(f, z0)
    x = step_f.x0
    track = _Tracker(x, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing,
                     return_final=return_final, stall_window=stall_window, stall_margin=stall_margin,
                     flow_stop=flow_stop)
    b, d = x.shape
    size = int(memory) or int(max_iter)
    us = x.new_zeros(b, d, size)
    vts = x.new_zeros(b, size, d)
    fx = step_f(x)
    gx = fx - x
    rows = track.record(x, fx, x)
    count = 0
    while rows is not None:
        step_f.keep(rows, track.active)
        x, gx, us, vts = x[rows], gx[rows], us[rows], vts[rows]
        n = min(count, size)
        step = gx - torch.einsum("bdl,bl->bd", us[:, :, :n], torch.einsum("bld,bd->bl", vts[:, :n], gx))
        x_new = x + step
        fx = step_f(x_new)
        g_new = fx - x_new
        rows = track.record(x_new, fx, x_new)
        if rows is None:
            break
        dx, dg = x_new - x, g_new - gx
        u_n, vt_n = us[:, :, :n], vts[:, :n]
        vt = -dx + torch.einsum("bl,bld->bd", torch.einsum("bd,bdl->bl", dx, u_n), vt_n)  # dx^T J^-1
        jdg = -dg + torch.einsum("bdl,bl->bd", u_n, torch.einsum("bld,bd->bl", vt_n, dg))  # J^-1 dg
        u = (dx - jdg) / (vt * dg).sum(dim=1, keepdim=True)
        ok = torch.isfinite(u).all(dim=1, keepdim=True)
        us[:, :, count % size] = torch.where(ok, u, 0.0)
        vts[:, count % size] = torch.where(ok, vt, 0.0)
        count += 1
        x, gx = x_new, g_new
    return track.result(z0.shape)

