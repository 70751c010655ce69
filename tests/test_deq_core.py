"""DEQ cores (sliced / indexing), evaluation, config validation, CLI flags, state packing, spectral radius."""

import argparse
from dataclasses import replace

import pytest
import torch

from deqflow.errors import InputError
from deqflow.solver_spec import SolveOverrides, SolveSpec
from training.deq import (
    DEQ,
    DEQConfig,
    StatePacker,
    add_deq_args,
    deq_config_from_args,
    estimate_spectral_radius,
)
from training.deq.grad import attach_ift

F64 = torch.float64

ADJOINT = SolveSpec.of(method="broyden", max_iter=100, tol=1e-12, return_final=False)


class CountedMap:
    """f(z) = A z + B x with symmetric A (spectral radius 0.6); counts evaluations."""

    def __init__(self, dim: int = 8, batch: int = 2, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
        self.A = (q @ torch.diag(torch.linspace(-0.6, 0.6, dim, dtype=F64)) @ q.T).requires_grad_()
        self.x = torch.randn(batch, dim, generator=g, dtype=F64)
        self.z0 = torch.zeros(batch, dim, dtype=F64)
        self.calls = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return z @ self.A.T + self.x

    def iterate(self, n: int, z: torch.Tensor | None = None) -> torch.Tensor:
        z = self.z0 if z is None else z
        with torch.no_grad():
            for _ in range(n):
                z = z @ self.A.T + self.x
        return z


def fixed(**kw) -> DEQConfig:
    return DEQConfig(**{"f_solver": "fixed_point", "f_tol": 0.0, "return_final": True, **kw})


def test_eval_budget_defaults():
    assert DEQConfig().eval_max_iter == 60  # int(40 * 1.5), the official test budget
    assert DEQConfig(eval_factor=3.0).eval_max_iter == 120
    assert DEQConfig(eval_f_max_iter=25).eval_max_iter == 25


def test_schedules_of_both_cores():
    cfg = DEQConfig(n_states=2, f_max_iter=24)
    assert DEQ(cfg).schedule() == [12, 12]
    assert DEQ(replace(cfg, core="indexing")).schedule() == [12, 24]
    explicit = DEQConfig(indexing=(5, 10), f_max_iter=24, phantom_grad=(1, 2, 3))
    assert DEQ(explicit).schedule() == [5, 5, 14]
    assert DEQ(replace(explicit, core="indexing")).schedule() == [5, 10, 24]
    assert DEQ(DEQConfig(n_states=6, f_max_iter=36)).schedule() == [6] * 6  # official H chairs recipe
    assert DEQ(DEQConfig(n_states=3, f_max_iter=40, core="indexing")).schedule() == [13, 26, 39]


def test_sliced_training_states_and_step_counts():
    f = CountedMap()
    states, stats = DEQ(fixed(n_states=2, f_max_iter=24))(f, f.z0, training=True)
    assert len(states) == 2 and all(s.requires_grad for s in states)
    assert f.calls == 24 + 2 and stats.iterations == 24 and stats.abs_trace.shape == (2, 24)
    # segment 1: 12 no-grad steps + 1 phantom step; segment 2 continues from there
    assert torch.allclose(states[0], f.iterate(13))
    assert torch.allclose(states[1], f.iterate(26))
    grad = torch.autograd.grad(sum(s.sum() for s in states), f.A)[0]
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_indexing_training_states_and_step_counts():
    f = CountedMap()
    states, stats = DEQ(fixed(n_states=2, f_max_iter=24, core="indexing"))(f, f.z0, training=True)
    assert len(states) == 2 and all(s.requires_grad for s in states)
    assert f.calls == 24 + 2 and stats.iterations == 24
    assert torch.allclose(states[0], f.iterate(13))  # one step past the snapshot at 12
    assert torch.allclose(states[1], f.iterate(25))


def test_per_term_phantom_steps_and_sup_all():
    f = CountedMap()
    states, _ = DEQ(fixed(n_states=2, f_max_iter=10, phantom_grad=(1, 3)))(f, f.z0, training=True)
    assert len(states) == 2 and f.calls == 10 + 1 + 3
    assert torch.allclose(states[1], f.iterate(5 + 1 + 5 + 3))
    f = CountedMap()
    states, _ = DEQ(fixed(f_max_iter=10, phantom_grad=(3,), sup_all=True))(f, f.z0, training=True)
    assert len(states) == 3
    for k, s in enumerate(states, start=1):
        assert torch.allclose(s, f.iterate(10 + k))


def test_eval_returns_one_state_without_grad():
    f = CountedMap()
    states, stats = DEQ(fixed())(f, f.z0, training=False)
    assert len(states) == 1 and not states[0].requires_grad
    assert stats.iterations == 60 and f.calls == 60
    assert torch.allclose(states[0], f.iterate(60))
    f.calls = 0
    (z,), stats = DEQ(fixed())(f, f.z0, training=False, solve=SolveOverrides(max_iter=7))
    assert stats.iterations == f.calls == 7
    # default solver (Anderson, lowest residual) stops on the tolerance
    states, stats = DEQ(DEQConfig(f_tol=1e-8))(f, f.z0, training=False)
    assert stats.iterations < 60 and float(stats.abs_lowest.max()) < 1e-8


def test_eval_trajectory_has_the_training_structure():
    f = CountedMap()
    states, _ = DEQ(fixed(n_states=3))(f, f.z0, training=False, return_trajectory=True)
    assert len(states) == 3  # eval budget 60: snapshots at 20 and 40, then z*
    assert torch.allclose(states[0], f.iterate(20)) and torch.allclose(states[1], f.iterate(40))
    assert torch.allclose(states[2], f.iterate(60))


def test_ift_term_in_the_core():
    f = CountedMap()
    deq = DEQ(DEQConfig(f_solver="anderson", f_tol=1e-12, f_max_iter=40, ift=True, b_tol=1e-12))
    (z,), _ = deq(f, f.z0, training=True)
    grad = torch.autograd.grad((z**2).sum(), f.A)[0]
    z_star = f.iterate(200).detach()
    ref = torch.autograd.grad((attach_ift(f, z_star, ADJOINT) ** 2).sum(), f.A)[0]
    assert float((grad - ref).norm() / ref.norm()) < 1e-8
    assert deq.backward_stats is not None and float(deq.backward_stats.abs_lowest.max()) < 1e-12


def test_sradius_mode_and_power_iteration():
    f = CountedMap()
    assert torch.allclose(estimate_spectral_radius(f, f.z0), torch.full((2,), 0.6, dtype=F64), atol=1e-6)
    _, stats = DEQ(fixed(sradius_mode=True))(f, f.z0, training=False, solve=SolveOverrides(max_iter=5))
    assert stats.sradius is not None
    assert torch.allclose(stats.sradius, torch.full((2,), 0.6, dtype=F64), atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    ({"f_solver": "newton"}, "f_solver: unknown solver 'newton'"),
    ({"b_solver": "lbfgs"}, "b_solver: unknown solver 'lbfgs'"),
    ({"n_states": 50}, "n_states"),
    ({"n_states": 2, "phantom_grad": (1, 2, 3)}, "phantom_grad"),
    ({"phantom_grad": (0,)}, "phantom_grad"),
    ({"n_states": 2, "indexing": (3,)}, "not both"),
    ({"indexing": (10, 5)}, "increasing"),
    ({"indexing": (40,)}, "increasing"),
    ({"f_stop_mode": "max"}, "f_stop_mode"),
    ({"core": "unrolled"}, "core"),
    ({"eval_factor": 0.0}, "evaluation"),
    ({"tau": 0.0}, "tau"),
    ({"anderson_lam": 0.0}, "anderson lam"),
    ({"anderson_m": 0}, "anderson m"),
    ({"damping": 1.5}, "damping"),
    ({"broyden_memory": -1}, "broyden memory"),
])
def test_config_validation(changes, message):
    with pytest.raises(InputError, match=message):
        DEQConfig.from_dict(changes)  # the stored keys: the flat option keys fold into the typed options


def test_call_argument_errors():
    f = CountedMap()
    with pytest.raises(InputError, match="max_iter"):
        DEQ(DEQConfig())(f, f.z0, training=False, solve=SolveOverrides(max_iter=0))
    with pytest.raises(InputError, match="n_states"):
        DEQ(DEQConfig(n_states=4))(f, f.z0, training=True, solve=SolveOverrides(max_iter=3))


def test_official_flags():
    p = argparse.ArgumentParser()
    add_deq_args(p)
    assert deq_config_from_args(p.parse_args([])) == DEQConfig()
    ns = p.parse_args("--wnorm --f_solver naive_solver --f_thres 36 --f_eps 1e-4 --b_stop_mode rel "
                      "--eval_f_thres 90 --indexing_core --ift --n_losses 6 --phantom_grad 3 --tau 0.8 "
                      "--sup_all --sradius_mode --anderson_m 5 --broyden_memory 7 --return_final".split())
    cfg = deq_config_from_args(ns)
    assert (cfg.f_solver, cfg.f_max_iter, cfg.f_tol, cfg.b_stop_mode) == ("naive_solver", 36, 1e-4, "rel")
    assert (cfg.eval_max_iter, cfg.core, cfg.ift, cfg.n_states) == (90, "indexing", True, 6)
    assert (cfg.phantom_grad, cfg.tau, cfg.sup_all, cfg.sradius_mode) == ((3,), 0.8, True, True)
    assert (cfg.anderson.m, cfg.broyden.memory, cfg.return_final) == (5, 7, True)
    ns = p.parse_args("--indexing 4 9 --phantom_grad 1 2 3".split())
    assert deq_config_from_args(ns).indexing == (4, 9)


def test_state_packer_round_trip():
    net = torch.randn(2, 5, 3, 4)
    coords = torch.randn(2, 2, 3, 4)
    packer = StatePacker([net, coords])
    z = packer.pack(net, coords)
    assert z.shape == (2, 5 * 12 + 2 * 12) and packer.dim == 84
    a, b = packer.unpack(z)
    assert torch.equal(a, net) and torch.equal(b, coords)
    assert a.data_ptr() == z.data_ptr()  # views, no copies
    (c, _) = packer.unpack(torch.cat([z, z]))  # any batch size
    assert c.shape == (4, 5, 3, 4)
    with pytest.raises(InputError, match="per-sample shape"):
        packer.pack(net, coords[:, :1])
    with pytest.raises(InputError, match="expected 2"):
        packer.pack(net)
    with pytest.raises(InputError, match="packed state"):
        packer.unpack(z[:, :10])
