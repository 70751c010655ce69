"""Gradients of a DEQ without backpropagating through the solver.

- Implicit (IFT) gradient: for z* = f(z*, theta), dL/dtheta = y^T df/dtheta with y = J^T y + dL/dz*,
  J = df/dz at z*. `attach_ift` returns one extra application new_z = f(z*) whose incoming gradient g
  is replaced, in backward, by the solution y of that adjoint fixed point.
- Phantom gradient (Geng et al., NeurIPS 2021): k damped unrolled steps from the (detached) fixed point;
  k = 1 is the 1-step / Jacobian-free gradient, and k -> infinity recovers the IFT gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, autograd

from deqflow.errors import InputError
from deqflow.solve_stats import SolveStats
from deqflow.solver_spec import SolveSpec, StopRule
from training.deq.registry import run_solver
from training.deq.solvers import Func

DEFAULT_ADJOINT = SolveSpec(method="broyden", stop=StopRule(tol=1e-3, max_iter=40), return_final=False)
"""The official IFT backward solve (--b_solver broyden --b_thres 40 --b_eps 1e-3)."""


def attach_ift(f: Func, z_star: Tensor, spec: SolveSpec = DEFAULT_ADJOINT, *, safe: bool = False,
               on_backward: Callable[[SolveStats], None] | None = None) -> Tensor:
    """new_z = f(z_star) carrying the exact implicit gradient (see module docstring).

    The adjoint fixed point is solved as `spec` says (method, options, stop rule) from y = 0.
    safe=False reuses new_z's own graph for the vector-Jacobian products (no extra evaluation of f); the
    hook sees its own inner products and passes them through, so it stays valid for repeated backward
    calls (retain_graph) and for torch.autograd.grad. safe=True instead evaluates f at z_star once more
    inside the backward pass and takes the products from that temporary graph: nothing re-entrant,
    no Jacobian graph kept alive between forward and backward. `on_backward` receives the backward
    solver's statistics.
    """
    z = z_star.detach()
    if not safe:
        z.requires_grad_()
    new_z = f(z)
    if not new_z.requires_grad:  # grad mode off, or nothing in f needs a gradient
        return new_z
    busy = False

    def hook(grad: Tensor) -> Tensor:
        nonlocal busy
        if busy:  # our own J^T y product reaching new_z: pass it through unchanged
            return grad
        busy = True
        try:
            if safe:
                with torch.enable_grad():
                    z_jac = z_star.detach().requires_grad_()
                    f_jac = f(z_jac)
            else:
                z_jac, f_jac = z, new_z

            def adjoint(y: Tensor) -> Tensor:
                return autograd.grad(f_jac, z_jac, y, retain_graph=True)[0] + grad

            result = run_solver(spec, adjoint, grad.new_zeros(grad.shape))
        finally:
            busy = False
        if on_backward is not None:
            on_backward(result.stats)
        return result.z

    new_z.register_hook(hook)
    return new_z


def attach_phantom(f: Func, z: Tensor, *, k: int = 1, tau: float = 1.0,
                   sup_all: bool = False) -> list[Tensor]:
    """k damped steps z <- (1-tau) z + tau f(z) from z.detach(); returns the last state, or all k with
    sup_all. The solver's output carries no gradient by construction, so z is detached here."""
    if int(k) < 1:
        raise InputError(f"phantom gradient needs k >= 1 unrolled steps, got {k}")
    if not 0 < tau <= 1:
        raise InputError(f"phantom gradient damping tau must be in (0, 1], got {tau}")
    z = z.detach()
    states = []
    for _ in range(int(k)):
        z = f(z) if tau == 1 else (1 - tau) * z + tau * f(z)
        states.append(z)
    return states if sup_all else states[-1:]
