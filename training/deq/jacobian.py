"""Jacobian diagnostics at a fixed point: a DEQ is stable when the spectral radius of df/dz is below 1."""

from __future__ import annotations

import torch
from torch import Tensor

from deqflow.errors import InputError
from training.deq.solvers import Func


def estimate_spectral_radius(f: Func, z_star: Tensor, n_iters: int = 75,
                             generator: torch.Generator | None = None) -> Tensor:
    """Per-sample |largest eigenvalue| of J = df/dz at z_star by power iteration on J^T (same spectrum).

    Uses vector-Jacobian products only (one f evaluation, n_iters backward passes; the official code
    runs 75). The estimate is the growth ||J^T v|| / ||v|| of the last unit iterate rather than the
    official absolute Rayleigh quotient: both agree for a single dominant eigenvalue, but the Rayleigh
    quotient collapses towards 0 when eigenvalues +r and -r dominate together (it mixes them), while the
    growth stays at r. Returns a (B,) tensor; works under torch.no_grad too.
    """
    if n_iters < 1:
        raise InputError(f"n_iters must be >= 1, got {n_iters}")
    b = z_star.shape[0]
    with torch.enable_grad():
        z = z_star.detach().requires_grad_()
        fz = f(z)
        if not fz.requires_grad:  # f does not depend on z
            return z_star.new_zeros(b)
        device = generator.device if generator is not None else z.device
        v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=device).to(z.device)
        tiny = torch.finfo(z.dtype).tiny  # J = 0 gives radius 0 instead of 0/0
        v = v / v.reshape(b, -1).norm(dim=1).clamp_min(tiny).reshape(b, *[1] * (z.dim() - 1))
        for i in range(n_iters):
            vj = torch.autograd.grad(fz, z, v, retain_graph=i < n_iters - 1)[0]
            growth = vj.reshape(b, -1).norm(dim=1)  # ||J^T v|| with ||v|| = 1
            v = vj / growth.clamp_min(tiny).reshape(b, *[1] * (z.dim() - 1))
    return growth.detach()
