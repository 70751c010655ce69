"""Fixed-point solvers on problems with known answers: convergence, step counts, traces, snapshots, NaN."""

import json
import math

import pytest
import torch

from deqflow.errors import InputError
from deqflow.solver_spec import SolveSpec
from training.deq.registry import get_solver
from training.deq.solvers import anderson, broyden, concat_stats, fixed_point_iter

F64 = torch.float64
NAMES = ["fixed_point", "anderson", "broyden"]


def run(name: str, f, z0, indexing=None, return_final: bool = False, **rule):
    """The registered solver `name` under a spec with this stop rule (the lowest-residual estimate by default)."""
    spec = SolveSpec.of(method=name, return_final=return_final, **rule)
    return get_solver(name)(f, z0, spec, indexing=indexing)


def linear_problem(rho: float, dim: int = 20, batch: int = 3, seed: int = 0):
    """f(z) = A z + b with symmetric A of spectral norm rho; returns f, z* = (I - A)^-1 b, and z0."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=F64))
    a = q @ torch.diag(torch.linspace(-rho, rho, dim, dtype=F64)) @ q.T
    b = torch.randn(batch, dim, generator=g, dtype=F64)
    z_star = torch.linalg.solve(torch.eye(dim, dtype=F64) - a, b.T).T
    return (lambda z: z @ a.T + b), z_star, torch.zeros(batch, dim, dtype=F64)


def tanh_problem(dim: int = 16, batch: int = 3, seed: int = 1):
    """z = 0.5 tanh(W z) + x with ||W|| = 0.9 (contraction 0.45); reference from 400 plain steps."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, dim, generator=g, dtype=F64)
    w = w / torch.linalg.matrix_norm(w, 2) * 0.9
    x = torch.randn(batch, dim, generator=g, dtype=F64)

    def f(z):
        return 0.5 * torch.tanh(z @ w.T) + x

    z = torch.zeros(batch, dim, dtype=F64)
    for _ in range(400):
        z = f(z)
    return f, z, torch.zeros(batch, dim, dtype=F64)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["abs", "rel"])
def test_linear_contraction_reaches_tolerance(name, mode):
    rho, tol = 0.5, 1e-8
    f, z_star, z0 = linear_problem(rho)
    res = run(name, f, z0, max_iter=200, tol=tol, stop_mode=mode)
    s = res.stats
    assert s.iterations < 200  # stopped on the tolerance, not the cap
    lowest = s.abs_lowest if mode == "abs" else s.rel_lowest
    assert float(lowest.max()) < tol
    # ||z - z*|| <= ||f(x) - x|| / (1 - rho) for the booked estimate; rel scales by ||f(z)|| ~ ||z*||
    scale = 1.0 if mode == "abs" else float(z_star.norm(dim=1).max()) * 1.01
    err = (res.z - z_star).norm(dim=1)
    assert float(err.max()) <= tol * scale / (1 - rho)
    assert res.z.shape == z0.shape and res.z.dtype == F64


@pytest.mark.parametrize("name", NAMES)
def test_nonlinear_fixed_point(name):
    f, ref, z0 = tanh_problem()
    res = run(name, f, z0, max_iter=100, tol=1e-10)
    assert float(res.stats.abs_lowest.max()) < 1e-10
    assert float((res.z - ref).abs().max()) < 1e-9


def test_acceleration_on_slow_contraction():
    """Spectral radius 0.95: plain iteration needs ~290 steps to 1e-6, Anderson ~100, Broyden ~45."""
    f, z_star, z0 = linear_problem(0.95, dim=50)
    steps = {}
    for name in NAMES:
        res = run(name, f, z0, max_iter=1000, tol=1e-6)
        assert float(res.stats.abs_lowest.max()) < 1e-6, name
        assert float((res.z - z_star).norm(dim=1).max()) < 1e-6 / 0.05
        steps[name] = res.stats.iterations
    assert 250 <= steps["fixed_point"] <= 330, steps
    assert steps["anderson"] <= 0.5 * steps["fixed_point"], steps
    assert steps["broyden"] <= 0.25 * steps["fixed_point"], steps


@pytest.mark.parametrize("name", NAMES)
def test_traces_and_lowest(name):
    f, _, z0 = linear_problem(0.8)
    s = run(name, f, z0, max_iter=200, tol=1e-9).stats
    assert s.abs_trace.shape == (3, s.iterations) and s.rel_trace.shape == (3, s.iterations)
    assert torch.equal(s.abs_lowest, s.abs_trace.nan_to_num(nan=math.inf).amin(dim=1))  # NaN: after its stop
    assert torch.equal(s.rel_lowest, s.rel_trace.nan_to_num(nan=math.inf).amin(dim=1))
    last = torch.as_tensor(s.sample_iterations) - 1  # each sample stops by its own rule
    assert torch.equal(s.final_abs, s.abs_trace[torch.arange(3), last]) and bool((s.final_abs < 1e-9).all())
    assert s.iterations == max(s.sample_iterations) and s.reasons == ["tolerance"] * 3
    # converging overall, and never blowing up along the way
    assert bool((s.final_abs < 1e-6 * s.abs_trace[:, 0]).all())
    assert bool((s.abs_trace.nan_to_num() <= 10 * s.abs_trace[:, :1]).all())
    if name == "fixed_point":  # r_{k+1} = A r_k with ||A|| = 0.8: strictly decreasing
        ratios = s.abs_trace[:, 1:] / s.abs_trace[:, :-1]
        assert float(ratios.nan_to_num().max()) <= 0.8 + 1e-4  # rounding once residuals reach ~1e-10


def test_relative_residual_definition():
    f, _, z0 = linear_problem(0.5)
    res = fixed_point_iter(f, z0, max_iter=1, tol=0)
    fx = f(z0)
    expected = (fx - z0).norm(dim=1) / (fx.norm(dim=1) + 1e-8)
    assert torch.allclose(res.stats.rel_trace[:, 0], expected, rtol=1e-14)
    assert torch.allclose(res.stats.abs_trace[:, 0], (fx - z0).norm(dim=1), rtol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_zero_tolerance_runs_exactly_max_iter(name):
    f, _, z0 = linear_problem(0.5)
    res = run(name, f, z0, max_iter=37, tol=0.0)
    assert res.stats.iterations == 37 and res.stats.abs_trace.shape == (3, 37)


def test_fixed_point_counts_function_evaluations():
    f, _, z0 = linear_problem(0.5)
    calls = []

    def counted(z):
        calls.append(1)
        return f(z)

    for name in NAMES:
        calls.clear()
        res = run(name, counted, z0, max_iter=25, tol=0.0)
        assert len(calls) == res.stats.iterations == 25, name


def test_indexing_returns_iterates_at_steps():
    f, _, z0 = linear_problem(0.7)
    res = fixed_point_iter(f, z0, max_iter=10, tol=0.0, indexing=[1, 4, 10], return_final=True)
    iterates, z = [], z0
    for _ in range(10):
        z = f(z)
        iterates.append(z)
    assert len(res.trajectory) == 3
    for snap, step in zip(res.trajectory, [1, 4, 10]):
        assert torch.allclose(snap, iterates[step - 1], rtol=0, atol=1e-14)
    assert torch.equal(res.z, res.trajectory[-1])
    assert torch.allclose(res.z, iterates[-1], rtol=0, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_indexing_after_early_stop_gives_final_estimate(name):
    f, _, z0 = linear_problem(0.3)
    res = run(name, f, z0, max_iter=200, tol=1e-6, indexing=[2, 150])
    assert res.stats.iterations < 150
    assert not torch.equal(res.trajectory[0], res.z)
    assert torch.equal(res.trajectory[1], res.z)


def test_lowest_residual_versus_final():
    """A scripted map whose residuals are 4, 1, 0.1, 2.9, 4, 8: the best estimate is the 3rd output."""
    outputs = [4.0, 5.0, 5.1, 8.0, 12.0, 20.0]

    def scripted():
        calls = iter(outputs)
        return lambda z: torch.full_like(z, next(calls))

    z0 = torch.zeros(1, 1, dtype=F64)
    best = fixed_point_iter(scripted(), z0, max_iter=6, tol=0.0)
    last = fixed_point_iter(scripted(), z0, max_iter=6, tol=0.0, return_final=True)
    assert torch.allclose(best.stats.abs_trace[0], torch.tensor([4.0, 1.0, 0.1, 2.9, 4.0, 8.0], dtype=F64))
    assert float(best.z) == 5.1 and float(last.z) == 20.0
    assert float(best.stats.abs_lowest[0]) == pytest.approx(0.1)


@pytest.mark.parametrize("name", NAMES)
def test_batch_is_per_sample(name):
    """Samples of very different scale: per-sample residuals, identical to solving each one alone."""
    f, _, z0 = linear_problem(0.6, batch=3)
    scale = torch.tensor([[1.0], [10.0], [100.0]], dtype=F64)

    def fs(z):
        return f(z / scale) * scale

    batched = run(name, fs, z0, max_iter=15, tol=0.0)
    assert float(batched.stats.abs_trace[2, 0] / batched.stats.abs_trace[0, 0]) > 10
    for i in range(3):
        def fi(z, i=i):
            return fs(torch.cat([z0[:i], z, z0[i + 1:]]))[i:i + 1]

        single = run(name, fi, z0[i:i + 1], max_iter=15, tol=0.0)
        assert torch.allclose(single.stats.abs_trace[0], batched.stats.abs_trace[i], rtol=1e-9, atol=1e-12)
        assert torch.allclose(single.z[0], batched.z[i], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_nan_is_reported_not_iterated(name):
    """A NaN stops its own sample (never iterated on); the others go on to their own stop."""
    f, _, z0 = linear_problem(0.5)
    calls = []

    def poisoned(z):
        calls.append(1)
        out = f(z)
        if len(calls) >= 4:
            out = out.clone()
            out[1] = float("nan")
        return out

    res = run(name, poisoned, z0, max_iter=50, tol=0.0)
    assert res.stats.sample_iterations.tolist() == [50, 4, 50] and len(calls) == 50
    assert res.stats.reasons == ["cap", "nonfinite", "cap"] and res.stats.reason == "nonfinite"
    assert res.stats.nonfinite.tolist() == [False, True, False]
    assert res.stats.has_nonfinite
    assert bool(torch.isfinite(res.z).all())  # the best finite estimate is kept
    assert torch.isfinite(res.stats.abs_lowest).all()
    assert json.dumps(res.stats.as_dict(traces=True))  # NaN becomes null, still valid JSON
    assert res.stats.as_dict(traces=True)["abs_trace"][1][3] is None


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_image_shaped_states(name):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 5, generator=g)

    def f(z):
        return 0.5 * torch.tanh(z.roll(1, dims=-1)) + x

    res = run(name, f, torch.zeros_like(x), max_iter=60, tol=1e-5)
    assert res.z.shape == x.shape and res.z.dtype == torch.float32
    assert float((f(res.z) - res.z).flatten(1).norm(dim=1).max()) < 1e-4


def test_solvers_do_not_track_gradients():
    w = torch.tensor(0.5, requires_grad=True)
    z0 = torch.ones(2, 3, requires_grad=True)
    res = anderson(lambda z: w * z + 1, z0, max_iter=20, tol=1e-8)
    assert not res.z.requires_grad and res.stats.iterations < 20
    assert res.z.data_ptr() != z0.data_ptr()


def test_argument_errors():
    f, _, z0 = linear_problem(0.5)
    with pytest.raises(InputError, match="max_iter"):
        fixed_point_iter(f, z0, max_iter=0, tol=1e-3)
    with pytest.raises(InputError, match="stop_mode"):
        broyden(f, z0, max_iter=5, tol=1e-3, stop_mode="max")
    with pytest.raises(InputError, match="batch"):
        anderson(f, torch.zeros(20, dtype=F64), max_iter=5, tol=1e-3)
    with pytest.raises(InputError, match="shape"):
        fixed_point_iter(lambda z: z[:, :3], z0, max_iter=5, tol=1e-3)
    with pytest.raises(InputError, match="damping"):
        fixed_point_iter(f, z0, max_iter=5, tol=1e-3, damping=0.0)


def test_damped_iteration_and_stats_helpers():
    f, z_star, z0 = linear_problem(0.5)
    res = fixed_point_iter(f, z0, max_iter=300, tol=1e-10, damping=0.5)
    assert float((res.z - z_star).norm(dim=1).max()) < 1e-9
    merged = concat_stats([res.stats, res.stats])
    assert merged.iterations == 2 * res.stats.iterations and merged.abs_trace.shape == (3, 2 * res.stats.iterations)
    d = merged.as_dict()
    assert d["iterations"] == merged.iterations and len(d["abs_lowest"]) == 3 and not d["nonfinite"]
    assert all(math.isfinite(v) for v in d["final_rel"])
