"""The solver registry: typed entries bound to their options dataclasses, clear errors, options as data."""

import dataclasses

import pytest
import torch

from deqflow.errors import InputError
from deqflow.solver_spec import (
    SOLVER_ALIASES,
    SOLVER_OPTIONS,
    AndersonOptions,
    BroydenOptions,
    FixedPointOptions,
    SolveOverrides,
    SolveSpec,
)
from training.deq.config import DEQConfig
from training.deq.core import DEQ
from training.deq.registry import SOLVERS, RegisteredSolver, Solver, get_solver
from training.deq.solvers import anderson, broyden, fixed_point_iter

F64 = torch.float64


def slow_linear_problem(rho: float = 0.95, dim: int = 24, batch: int = 2):
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    a = q @ torch.diag(torch.linspace(-rho, rho, dim, dtype=F64)) @ q.T
    b = torch.randn(batch, dim, generator=g, dtype=F64)
    return (lambda z: z @ a.T + b), torch.zeros(batch, dim, dtype=F64)


def test_every_canonical_solver_is_registered_with_its_options_dataclass():
    assert set(SOLVERS) == set(SOLVER_OPTIONS)
    f, z0 = slow_linear_problem()
    for name, entry in SOLVERS.items():
        assert isinstance(entry, Solver)
        assert entry.name == name and entry.options_type is SOLVER_OPTIONS[name]
        assert dataclasses.is_dataclass(entry.options_type)
        result = entry(f, z0, SolveSpec.of(method=name, max_iter=5, tol=0.0, options=entry.options_type()))
        assert result.stats.iterations == 5 and result.z.shape == z0.shape


def test_aliases_and_unknown_names():
    for alias, name in SOLVER_ALIASES.items():
        assert get_solver(alias) is get_solver(name)
    with pytest.raises(InputError, match="unknown solver 'newton'.*fixed_point.*anderson.*broyden"):
        get_solver("newton")


def test_options_reach_the_algorithm_and_must_match_the_solver():
    f, z0 = slow_linear_problem()
    cases = [("fixed_point", FixedPointOptions(damping=0.7), fixed_point_iter, {"damping": 0.7}),
             ("anderson", AndersonOptions(m=3, lam=1e-3, beta=0.9), anderson, {"m": 3, "lam": 1e-3, "beta": 0.9}),
             ("broyden", BroydenOptions(memory=3), broyden, {"memory": 3})]
    for name, options, algorithm, kwargs in cases:
        spec = SolveSpec.of(method=name, max_iter=12, tol=0.0, options=options, return_final=False)
        via_registry = get_solver(name)(f, z0, spec)
        direct = algorithm(f, z0, max_iter=12, tol=0.0, **kwargs)
        assert torch.equal(via_registry.z, direct.z)
        assert torch.equal(via_registry.stats.abs_trace, direct.stats.abs_trace)
    with pytest.raises(InputError, match="'broyden' takes BroydenOptions, got AndersonOptions"):
        SolveSpec.of(method="broyden", max_iter=3, options=AndersonOptions())
    with pytest.raises(InputError, match="memory"):
        SolveSpec.of(method="broyden", max_iter=3, options=BroydenOptions(memory=-1))
    with pytest.raises(InputError, match="cannot run a 'anderson' spec"):
        get_solver("broyden")(f, z0, SolveSpec.of(method="anderson", max_iter=3))


def test_registration_checks_that_the_algorithm_takes_its_options():
    def no_options(f, z0, *, max_iter, tol, stop_mode="abs", indexing=None, return_final=False):
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="memory"):
        RegisteredSolver("broyden", BroydenOptions, no_options)


def test_broyden_memory_from_the_config_changes_the_solve():
    f, z0 = slow_linear_problem()
    base = DEQConfig(f_solver="broyden", f_tol=0.0, return_final=True)
    full, stats_full = DEQ(base)(f, z0, training=False, solve=SolveOverrides(max_iter=30))
    short_cfg = dataclasses.replace(base, broyden=BroydenOptions(memory=2))
    short, stats_short = DEQ(short_cfg)(f, z0, training=False, solve=SolveOverrides(max_iter=30))
    assert short_cfg.forward_solve().options == BroydenOptions(memory=2)
    assert not torch.equal(short[0], full[0])
    assert not torch.equal(stats_short.abs_trace, stats_full.abs_trace)
    direct = broyden(f, z0, max_iter=30, tol=0.0, return_final=True, memory=2)
    assert torch.equal(short[0], direct.z)
    # the IFT backward solve takes the same option
    assert dataclasses.replace(base, broyden=BroydenOptions(memory=5)).backward_solve().options.memory == 5
