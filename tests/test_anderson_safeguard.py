"""Anderson's safeguard (AndersonOptions.safeguard): a residual that grows restarts the history, so the next
iterate is the plain step; the torch solver and the host solver of the split layout take the same steps; the
default (0) is the official rule; it still accelerates a contraction."""

import numpy as np
import pytest
import torch
from helpers import HostStepParts

from deqflow.errors import InputError
from deqflow.host_solver import _Anderson, solve
from deqflow.solver_spec import REL_EPS, AndersonOptions, SolveSpec
from training.deq.config import DEQConfig
from training.deq.solvers import anderson, fixed_point_iter


class Spiked:
    """f(x) = x / 2 + 1, except that evaluation `spike` adds 5 to every entry: its residual jumps. Records
    every point it is evaluated at and every value it returns."""

    def __init__(self, spike: int) -> None:
        self.spike, self.points, self.values = spike, [], []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.points.append(x.clone())
        fx = x / 2 + 1 + (5.0 if len(self.points) == self.spike else 0.0)
        self.values.append(fx.clone())
        return fx


def test_a_grown_residual_makes_the_next_step_plain():
    z0 = torch.zeros(1, 4)
    guarded, free = Spiked(4), Spiked(4)
    anderson(guarded, z0, max_iter=6, tol=0.0, safeguard=1.0)
    anderson(free, z0, max_iter=6, tol=0.0)
    residual = [float((v - p).norm()) for p, v in zip(guarded.points, guarded.values)]
    assert residual[3] > residual[2]  # the spike raised the residual at evaluation 4
    torch.testing.assert_close(guarded.points[4], guarded.values[3])  # history dropped: x5 = f(x4)
    assert not torch.allclose(free.points[4], free.values[3])  # without the safeguard, x5 mixes the history
    torch.testing.assert_close(guarded.points[:4], free.points[:4])  # identical until the spike


def test_a_safeguard_that_never_fires_is_the_official_rule():
    # residuals of x / 2 + 1 from 0 only fall: the masked system equals the unmasked one
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    a = anderson(lambda x: x / 2 + 1, z0, max_iter=8, tol=0.0, safeguard=1.0)
    b = anderson(lambda x: x / 2 + 1, z0, max_iter=8, tol=0.0)
    torch.testing.assert_close(a.stats.abs_trace, b.stats.abs_trace, rtol=1e-9, atol=1e-12)


def test_it_still_accelerates_a_contraction():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(0.0, 0.95, 30, dtype=torch.float64)) @ q.T
    c = torch.randn(1, 30, generator=gen, dtype=torch.float64)

    def f(x):
        return x @ a.T + c

    z0 = torch.zeros(1, 30, dtype=torch.float64)
    plain = fixed_point_iter(f, z0, max_iter=400, tol=1e-6).stats.iterations
    guarded = anderson(f, z0, max_iter=400, tol=1e-6, m=6, safeguard=1.0).stats.iterations
    assert guarded <= 0.5 * plain


class KinkedParts(HostStepParts):
    """A split-layout StepParts for a piecewise-linear map on (net, coords1) of 1x1 grids: f(z) = A z + b +
    0.6 |z - c|, kinks like the bilinear correlation lookup; `torch_f` is the same map for the torch solver."""

    hidden_dim = 3

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.a = rng.normal(size=(5, 5)) * 0.15
        self.b, self.c = rng.normal(size=5) * 3, rng.normal(size=5) * 2
        self.coords0 = np.array([[0, 0], [3, 1]], np.float32).reshape(2, 2, 1, 1)

    def f(self, z: np.ndarray) -> np.ndarray:
        return (z @ self.a.T + self.b + 0.6 * np.abs(z - self.c)).astype(np.float32)

    def torch_f(self, z: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.f(z.reshape(2, 5).numpy())).reshape(z.shape)

    def encode(self, image1, image2):
        return None, self.coords0

    def step(self, ctx, net, coords1):
        z = np.concatenate([net.reshape(2, 3), coords1.reshape(2, 2)], 1)
        fz = self.f(z)
        res = np.linalg.norm(fz - z, axis=1)
        return (fz[:, :3].reshape(net.shape), fz[:, 3:].reshape(coords1.shape), res,
                res / (np.linalg.norm(fz, axis=1) + REL_EPS))


@pytest.mark.parametrize("safeguard", [0.0, 1.0])
def test_host_and_torch_take_the_same_steps(safeguard):
    parts = KinkedParts()
    img = np.zeros((2, 3, 8, 8), np.float32)
    settings = SolveSpec.of(max_iter=12, tol=0.0, method="anderson", options=AndersonOptions(m=4, safeguard=safeguard))
    host = solve(parts, img, img, settings)
    z0 = torch.cat([torch.zeros(2, 3), torch.from_numpy(parts.coords0.reshape(2, 2))], 1)
    ref = anderson(parts.torch_f, z0, max_iter=12, tol=0.0, m=4, safeguard=safeguard)
    np.testing.assert_allclose(host.stats.abs_trace, ref.stats.abs_trace.numpy(), rtol=1e-4, atol=1e-5)
    if safeguard:  # Anderson raises the residual on this map, so the restarts change the steps
        free = solve(KinkedParts(), img, img,
                     SolveSpec.of(max_iter=12, tol=0.0, method="anderson", options=AndersonOptions(m=4)))
        assert not np.allclose(host.stats.abs_trace, free.stats.abs_trace)


def test_host_mixer_restarts_per_sample():
    mixer = _Anderson(3, 1e-4, 1.0, safeguard=1.0)
    x = np.zeros((2, 2), np.float32)
    mixer.next(x, x + np.array([[4, 0], [2, 0]], np.float32))
    out = mixer.next(x + 1, x + 1 + np.array([[8, 0], [1, 0]], np.float32))  # sample 0 grew, sample 1 fell
    np.testing.assert_array_equal(mixer.keep[:, :2], [[0, 1], [1, 1]])
    np.testing.assert_allclose(out[0], [9, 1], rtol=1e-6)  # sample 0: the plain step f(x)


def test_the_option_is_validated_and_settable():
    with pytest.raises(InputError, match="safeguard"):
        AndersonOptions(safeguard=-1.0).validate()
    with pytest.raises(InputError, match="safeguard"):
        SolveSpec.of(method="anderson", options=AndersonOptions(safeguard=float("nan")))
    assert AndersonOptions().safeguard == 0.0  # official behaviour by default
    assert DEQConfig(anderson=AndersonOptions(safeguard=1.0)).solver_options("anderson").safeguard == 1.0
