"""Implicit (IFT) and phantom gradients against finite differences and long unrolled solves (float64)."""

import pytest
import torch
import torch.nn.functional as F

from deqflow.errors import InputError
from deqflow.solver_spec import SolveSpec
from training.deq.grad import attach_ift, attach_phantom
from training.deq.solvers import fixed_point_iter


def adjoint(method: str) -> SolveSpec:
    """An IFT backward solve to machine precision (the lowest-residual estimate, as the DEQ's own)."""
    return SolveSpec.of(method=method, max_iter=100, tol=1e-12, return_final=False)

F64 = torch.float64


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class TinyDEQ:
    """f(z) = tanh(W z + U x + b), ||W||_2 = 0.8 (a contraction since |tanh'| <= 1)."""

    def __init__(self, seed: int = 0, dim: int = 6, in_dim: int = 4, batch: int = 2) -> None:
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(dim, dim, generator=g, dtype=F64)
        self.W = (w / torch.linalg.matrix_norm(w, 2) * 0.8).requires_grad_()
        self.U = torch.randn(dim, in_dim, generator=g, dtype=F64).requires_grad_()
        self.b = torch.randn(dim, generator=g, dtype=F64).requires_grad_()
        self.x = torch.randn(batch, in_dim, generator=g, dtype=F64).requires_grad_()
        self.c = torch.randn(batch, dim, generator=g, dtype=F64)
        self.z0 = torch.zeros(batch, dim, dtype=F64)

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.W, self.U, self.b, self.x]

    def f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.W.T + self.x @ self.U.T + self.b)

    def loss(self, z: torch.Tensor) -> torch.Tensor:
        return (self.c * z).sum() + (z**2).sum()

    def solve(self) -> torch.Tensor:
        return fixed_point_iter(self.f, self.z0, max_iter=200, tol=0.0).z  # 0.8**200: machine precision

    def ift_grads(self, solver: str = "broyden", **kw) -> list[torch.Tensor]:
        z = attach_ift(self.f, self.solve(), adjoint(solver), **kw)
        return list(torch.autograd.grad(self.loss(z), self.params))

    def unrolled_grads(self, steps: int = 200) -> list[torch.Tensor]:
        z = self.z0
        for _ in range(steps):
            z = self.f(z)
        return list(torch.autograd.grad(self.loss(z), self.params))

    def phantom_grads(self, k: int, tau: float = 1.0) -> list[torch.Tensor]:
        (z,) = attach_phantom(self.f, self.solve(), k=k, tau=tau)
        return list(torch.autograd.grad(self.loss(z), self.params))


def finite_differences(m: TinyDEQ, h: float = 1e-6) -> list[torch.Tensor]:
    grads = []
    with torch.no_grad():
        for p in m.params:
            g = torch.zeros_like(p)
            flat, gflat = p.view(-1), g.view(-1)
            for i in range(flat.numel()):
                orig = float(flat[i])
                flat[i] = orig + h
                up = float(m.loss(m.solve()))
                flat[i] = orig - h
                down = float(m.loss(m.solve()))
                flat[i] = orig
                gflat[i] = (up - down) / (2 * h)
            grads.append(g)
    return grads


@pytest.fixture(scope="module")
def tiny() -> TinyDEQ:
    return TinyDEQ()


@pytest.fixture(scope="module")
def fd_grads(tiny) -> list[torch.Tensor]:
    return finite_differences(tiny)


@pytest.mark.parametrize("solver", ["broyden", "anderson", "fixed_point"])
@pytest.mark.parametrize("safe", [False, True])
def test_ift_matches_finite_differences_and_unrolling(tiny, fd_grads, solver, safe):
    ift = tiny.ift_grads(solver=solver, safe=safe)
    unrolled = tiny.unrolled_grads()
    for name, a, fd, un in zip("WUbx", ift, fd_grads, unrolled):
        assert rel_err(a, fd) < 1e-4, (name, rel_err(a, fd))
        assert rel_err(a, un) < 1e-8, (name, rel_err(a, un))


def test_ift_backward_stats_and_gradient_entry_points(tiny):
    stats = []
    z = attach_ift(tiny.f, tiny.solve(), adjoint("broyden"), on_backward=stats.append)
    loss = tiny.loss(z)
    via_grad = torch.autograd.grad(loss, tiny.params, retain_graph=True)
    for p in tiny.params:
        p.grad = None
    loss.backward(retain_graph=True)  # hooks stay valid for a second backward over the same graph
    first = [p.grad.clone() for p in tiny.params]
    for p in tiny.params:
        p.grad = None
    loss.backward()
    for a, b, c in zip(via_grad, first, (p.grad for p in tiny.params)):
        assert torch.allclose(a, b, rtol=1e-12, atol=0) and torch.allclose(b, c, rtol=1e-12, atol=0)
    for p in tiny.params:
        p.grad = None
    assert len(stats) == 3
    assert all(s.iterations < 100 and float(s.abs_lowest.max()) < 1e-12 for s in stats)


def test_two_ift_states_in_one_loss(tiny):
    """Repeated calls (two hooked states in one graph) neither recurse nor interfere."""
    z_star = tiny.solve()
    z1 = attach_ift(tiny.f, z_star, adjoint("broyden"))
    z2 = attach_ift(tiny.f, z_star, adjoint("broyden"))
    both = torch.autograd.grad(tiny.loss(z1) + 0.5 * tiny.loss(z2), tiny.params)
    single = tiny.ift_grads()
    for a, b in zip(both, single):
        assert rel_err(a, 1.5 * b) < 1e-10


def test_ift_without_grad_mode_is_a_plain_step(tiny):
    z_star = tiny.solve()
    with torch.no_grad():
        z = attach_ift(tiny.f, z_star)
    assert not z.requires_grad and torch.allclose(z, tiny.f(z_star).detach())


def test_ift_on_a_small_conv_layer():
    """f(z) = tanh(conv(z) + conv(x) + b) on (B, C, H, W) states, against a 150-step unrolled solve."""
    g = torch.Generator().manual_seed(3)
    wz = torch.randn(4, 4, 3, 3, generator=g, dtype=F64)
    wz = (wz * 0.7 / wz.abs().sum(dim=(1, 2, 3)).max()).requires_grad_()  # ||conv||_inf <= 0.7
    wx = (torch.randn(4, 2, 3, 3, generator=g, dtype=F64) * 0.3).requires_grad_()
    b = (torch.randn(4, generator=g, dtype=F64) * 0.1).requires_grad_()
    x = torch.randn(2, 2, 6, 7, generator=g, dtype=F64)
    c = torch.randn(2, 4, 6, 7, generator=g, dtype=F64)
    params = [wz, wx, b]

    def f(z):
        return torch.tanh(F.conv2d(z, wz, padding=1) + F.conv2d(x, wx, b, padding=1))

    z0 = torch.zeros(2, 4, 6, 7, dtype=F64)
    z_star = fixed_point_iter(f, z0, max_iter=150, tol=0.0).z
    z = attach_ift(f, z_star, adjoint("broyden"))
    ift = torch.autograd.grad((c * z).sum() + z.pow(3).sum(), params)
    zu = z0
    for _ in range(150):
        zu = f(zu)
    unrolled = torch.autograd.grad((c * zu).sum() + zu.pow(3).sum(), params)
    for a, u in zip(ift, unrolled):
        assert rel_err(a, u) < 1e-8


def test_phantom_gradient_approaches_ift(tiny):
    ift = torch.cat([g.flatten() for g in tiny.ift_grads()])
    errs = {}
    for k in (1, 5, 20, 50):
        errs[k] = rel_err(torch.cat([g.flatten() for g in tiny.phantom_grads(k)]), ift)
    assert errs[1] > errs[5] > errs[20] > errs[50], errs
    assert errs[1] > 0.05  # the 1-step gradient is a real approximation, not the IFT one
    assert errs[50] < 1e-3, errs


def test_damped_phantom_gradient(tiny):
    ift = torch.cat([g.flatten() for g in tiny.ift_grads()])
    errs = [rel_err(torch.cat([g.flatten() for g in tiny.phantom_grads(k, tau=0.5)]), ift)
            for k in (1, 10, 100)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3, errs


def test_phantom_steps_values_and_sup_all(tiny):
    z_star = tiny.solve().requires_grad_()
    states = attach_phantom(tiny.f, z_star, k=3, tau=0.5, sup_all=True)
    assert len(states) == 3 and all(s.requires_grad for s in states)
    z = z_star.detach()
    for s in states:
        z = 0.5 * z + 0.5 * tiny.f(z)
        assert torch.allclose(s, z)
    (last,) = attach_phantom(tiny.f, z_star, k=3, tau=0.5)
    assert torch.equal(last, states[-1])
    # no gradient through the solver output: z_star.grad stays empty
    tiny.loss(last).backward()
    assert z_star.grad is None
    for p in tiny.params:
        p.grad = None
    with pytest.raises(InputError, match="k >= 1"):
        attach_phantom(tiny.f, z_star, k=0)
    with pytest.raises(InputError, match="tau"):
        attach_phantom(tiny.f, z_star, tau=1.5)
