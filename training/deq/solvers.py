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
    check_stop_mode,
    converged,
    stop_reason,
)

Func = Callable[[Tensor], Tensor]


def concat_stats(parts: Sequence[SolveStats]) -> SolveStats:
    """Stats of consecutive solves (the segments of the sliced training core) as one record."""
    if len(parts) == 1:
        return parts[0]
    stalls = [p.stalled for p in parts if p.stalled is not None]
    return SolveStats(
        iterations=sum(p.iterations for p in parts),
        abs_trace=torch.cat([p.abs_trace for p in parts], dim=1),
        rel_trace=torch.cat([p.rel_trace for p in parts], dim=1),
        abs_lowest=torch.stack([p.abs_lowest for p in parts]).amin(0),
        rel_lowest=torch.stack([p.rel_lowest for p in parts]).amin(0),
        sradius=parts[-1].sradius,
        nonfinite=torch.stack([p.nonfinite for p in parts]).any(0),
        stalled=torch.stack(stalls).any(0) if stalls else None,
        reason=parts[-1].reason,
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
    """Residual bookkeeping shared by the solvers: traces, per-sample best estimate, snapshots, stop test."""

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
        self.stall = StallMonitor(b, stall_window, stall_margin) if int(stall_window) > 0 else None
        self.reason = ""
        self.flow = flow_stop
        if self.flow is not None and not (0 < self.flow.size <= x0.shape[1] and self.flow.size % 2 == 0):
            raise InputError(f"flow stop size must be even and within the state's {x0.shape[1]} entries, "
                             f"got {self.flow.size}")

    def record(self, est: Tensor, fx: Tensor, x: Tensor) -> bool:
        """Book one evaluation fx = f(x) against the estimate `est`; True means stop now."""
        absr = (fx - x).norm(dim=1)
        current = {"abs": absr, "rel": absr / (fx.norm(dim=1) + REL_EPS)}
        for mode, res in current.items():
            self.traces[mode].append(res)
            improved = res < self.lowest[mode]  # False for NaN: a NaN never replaces a finite best
            self.lowest[mode] = torch.where(improved, res, self.lowest[mode])
            if mode == self.mode:
                self.best = est if self.return_final else torch.where(improved[:, None], est, self.best)
        self.iterations += 1
        if self.iterations in self.steps:
            self.snapshots[self.iterations] = self.best.clone()
        bad = ~torch.isfinite(absr)
        self.nonfinite |= bad
        self.reason = self._reason(bad, current[self.mode], self._flow_step(fx, x)) or ""
        return bool(self.reason)

    def _flow_step(self, fx: Tensor, x: Tensor) -> Tensor | None:
        """(B,) mean per-cell |delta flow| of this evaluation (deqflow.solver_spec.flow_step), in float64 as
        the host solver computes it; None without a flow stop."""
        if self.flow is None:
            return None
        delta = (fx[:, -self.flow.size:] - x[:, -self.flow.size:]).double().reshape(fx.shape[0], 2, -1)
        return delta.square().sum(dim=1).sqrt().mean(dim=1)

    def _reason(self, bad: Tensor, current: Tensor, flow: Tensor | None) -> str | None:
        """Why to stop after this evaluation (deqflow.solver_spec.stop_reason), or None. One device-to-host
        copy per step: the NaN flags, the tolerance and flow tests' inputs and the residuals together."""
        at_cap = self.iterations >= self.max_iter
        if self.stall is None and self.tol <= 0 and flow is None:
            return "nonfinite" if bool(bad.any()) else ("cap" if at_cap else None)
        crit = current if self.return_final else self.lowest[self.mode]
        rows = [bad.double(), crit.double(), current.double()] + ([] if flow is None else [flow])
        host = torch.stack(rows).cpu().numpy()
        done = converged(host[1], self.tol, None if flow is None else host[3], 0.0 if flow is None else self.flow.tol)
        stalled = self.stall.update(host[2]) if self.stall is not None else np.zeros(len(host[2]), bool)
        return stop_reason(nonfinite=bool(host[0].any()), converged=done, stalled=stalled, at_cap=at_cap)

    def result(self, shape: torch.Size) -> FixedPointResult:
        best = self.best.clone() if self.return_final else self.best  # don't pin a solver buffer
        final = best.reshape(shape)
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
            reason=self.reason,
        )
        return FixedPointResult(z=final, trajectory=trajectory, stats=stats)


def _flatten(f: Func, z0: Tensor) -> tuple[Func, Tensor]:
    """View f and z0 on flat (B, D) vectors; checks that f keeps the state's shape."""
    if not isinstance(z0, Tensor) or z0.dim() < 2 or z0.shape[0] < 1:
        raise InputError(f"z0 must be a tensor of shape (B, ...) with a batch dimension, got "
                         f"{tuple(z0.shape) if isinstance(z0, Tensor) else type(z0).__name__}")
    if not z0.is_floating_point():
        raise InputError(f"z0 must be a floating-point tensor, got {z0.dtype}")
    shape = z0.shape

    def flat_f(x: Tensor) -> Tensor:
        out = f(x.view(shape))
        if out.shape != shape:
            raise InputError(f"f must return the state's shape {tuple(shape)}, got {tuple(out.shape)}")
        return out.reshape(shape[0], -1)

    return flat_f, z0.detach().reshape(shape[0], -1)


@torch.no_grad()
def fixed_point_iter(f: Func, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "abs",
                     indexing: Sequence[int] | None = None, return_final: bool = False,
                     damping: float = 1.0, stall_window: int = 0, stall_margin: float = STALL_MARGIN,
                     flow_stop: FlowStop | None = None) -> FixedPointResult:
    """Plain iteration z <- (1-d) z + d f(z) (the official `naive_solver` when d = 1)."""
    FixedPointOptions(damping=damping).validate()
    flat_f, x = _flatten(f, z0)
    track = _Tracker(x, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing,
                     return_final=return_final, stall_window=stall_window, stall_margin=stall_margin,
                     flow_stop=flow_stop)
    while True:
        fx = flat_f(x)
        nxt = fx if damping == 1 else torch.lerp(x, fx, damping)
        if track.record(nxt, fx, x):
            break
        x = nxt
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
    grew by more than that factor over its previous step forgets its history (AndersonOptions).
    """
    AndersonOptions(m=m, lam=lam, beta=beta, safeguard=safeguard).validate()
    flat_f, x = _flatten(f, z0)
    track = _Tracker(x, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing,
                     return_final=return_final, stall_window=stall_window, stall_margin=stall_margin,
                     flow_stop=flow_stop)
    b, d = x.shape
    m = min(m, int(max_iter))
    xs = x.new_zeros(b, m, d)
    fs = x.new_zeros(b, m, d)
    keep = x.new_ones(b, m) if safeguard > 0 else None
    previous = x.new_full((b,), math.inf)
    k = 0
    while True:
        fx = flat_f(x)
        xs[:, k % m], fs[:, k % m] = x, fx
        if track.record(fs[:, k % m], fx, x):
            break
        if keep is not None:
            res = (fx - x).norm(dim=1)
            keep[res > safeguard * previous] = 0
            keep[:, k % m] = 1
            previous = res
        k += 1
        n = min(k, m)
        x = _anderson_step(xs[:, :n], fs[:, :n], lam, beta, None if keep is None else keep[:, :n])
    return track.result(z0.shape)


@torch.no_grad()
def broyden(f: Func, z0: Tensor, *, max_iter: int, tol: float, stop_mode: str = "abs",
            indexing: Sequence[int] | None = None, return_final: bool = False,
            memory: int = 0, stall_window: int = 0, stall_margin: float = STALL_MARGIN,
            flow_stop: FlowStop | None = None) -> FixedPointResult:
    """Limited-memory "good" Broyden on g(z) = f(z) - z, full steps (no line search).

    The inverse Jacobian of g is kept as -I + U V^T with at most `memory` rank-one terms (0: max_iter,
    i.e. never forgetting, as in the official code; older terms are overwritten cyclically).
    The first step is a plain fixed-point step. An update whose denominator vanishes is skipped.
    """
    BroydenOptions(memory=memory).validate()
    flat_f, x = _flatten(f, z0)
    track = _Tracker(x, max_iter=max_iter, tol=tol, stop_mode=stop_mode, indexing=indexing,
                     return_final=return_final, stall_window=stall_window, stall_margin=stall_margin,
                     flow_stop=flow_stop)
    b, d = x.shape
    size = int(memory) or int(max_iter)
    us = x.new_zeros(b, d, size)
    vts = x.new_zeros(b, size, d)
    fx = flat_f(x)
    gx = fx - x
    stop = track.record(x, fx, x)
    count = 0
    step = gx  # -(inverse Jacobian) g with the initial guess -I
    while not stop:
        x_new = x + step
        fx = flat_f(x_new)
        g_new = fx - x_new
        if track.record(x_new, fx, x_new):
            break
        dx, dg = x_new - x, g_new - gx
        n = min(count, size)
        u_n, vt_n = us[:, :, :n], vts[:, :n]
        vt = -dx + torch.einsum("bl,bld->bd", torch.einsum("bd,bdl->bl", dx, u_n), vt_n)  # dx^T J^-1
        jdg = -dg + torch.einsum("bdl,bl->bd", u_n, torch.einsum("bld,bd->bl", vt_n, dg))  # J^-1 dg
        u = (dx - jdg) / (vt * dg).sum(dim=1, keepdim=True)
        ok = torch.isfinite(u).all(dim=1, keepdim=True)
        us[:, :, count % size] = torch.where(ok, u, 0.0)
        vts[:, count % size] = torch.where(ok, vt, 0.0)
        count += 1
        n = min(count, size)
        x, gx = x_new, g_new
        step = gx - torch.einsum("bdl,bl->bd", us[:, :, :n], torch.einsum("bld,bd->bl", vts[:, :n], gx))
    return track.result(z0.shape)

