"""The stop rule: the stagnation exit of the torch solvers on hand-made residual sequences, the same stop
decisions as the host solver on the same contraction, the stop reason in the stats, and the rule carried
by checkpoints (metadata `stop_rule`) into the model's DEQ defaults."""

import numpy as np
import pytest
import torch
from helpers import HostStepParts, save_tiny_checkpoint, tiny_model

from deqflow.errors import CheckpointError, InputError
from deqflow.host_solver import solve
from deqflow.solver_spec import REL_EPS, SolveOverrides, SolveSpec, StopRule
from training.checkpoint import load_model, stamp_stop_rule
from training.deq.config import DEQConfig
from training.deq.solvers import anderson, broyden, concat_stats, fixed_point_iter

SOLVERS = {"fixed_point": fixed_point_iter, "anderson": anderson, "broyden": broyden}


def shift(z):
    """f(z) = z + 1: the residual is the same at every step (a plateau that never converges)."""
    return z + 1


@pytest.mark.parametrize("name", list(SOLVERS))
@pytest.mark.parametrize("window", [1, 3, 6])
def test_a_plateau_stops_after_exactly_window_steps(name, window):
    r = SOLVERS[name](shift, torch.zeros(2, 4), max_iter=50, tol=1e-3, stall_window=window)
    assert r.stats.iterations == 1 + window and r.stats.reason == "stalled"
    assert r.stats.stalled.tolist() == [True, True]
    assert r.stats.as_dict()["stop_reason"] == "stalled" and r.stats.as_dict()["stalled"] == [True, True]


def test_a_residual_that_keeps_improving_never_stalls():
    # plain iteration shrinks the residual by 10 % per step (the accelerated solvers converge and then stall)
    r = fixed_point_iter(lambda z: 0.9 * z + 1, torch.zeros(2, 4, dtype=torch.float64), max_iter=40, tol=0.0,
                      stall_window=2, stall_margin=0.05)
    assert r.stats.iterations == 40 and r.stats.reason == "cap" and not r.stats.stalled.any()


def test_stagnation_is_per_sample():
    # sample 0 plateaus (z + 1), sample 1 contracts by half per step and goes below tol on its own
    scale = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    step = torch.tensor([[1.0], [0.0]], dtype=torch.float64)

    def f(z):
        return scale * z + step

    z0 = torch.ones(2, 4, dtype=torch.float64)
    r = fixed_point_iter(f, z0, max_iter=50, tol=0.01, stall_window=3)
    # sample 1's residual at step k is 2 * 2^-k: below 0.01 at k = 8; sample 0 stalled at step 4
    assert r.stats.iterations == 8 and r.stats.reason == "stalled" and r.stats.stalled.tolist() == [True, False]
    r = fixed_point_iter(f, z0, max_iter=50, tol=0.0, stall_window=3)
    assert r.stats.iterations == 50 and r.stats.reason == "cap"


def test_stop_reasons_without_stagnation():
    f = lambda z: 0.5 * z  # noqa: E731
    assert fixed_point_iter(f, torch.ones(1, 3), max_iter=5, tol=0.0).stats.reason == "cap"
    assert fixed_point_iter(f, torch.ones(1, 3), max_iter=50, tol=1e-2).stats.reason == "tolerance"
    bad = fixed_point_iter(lambda z: z * float("nan"), torch.ones(1, 3), max_iter=5, tol=0.0)
    assert bad.stats.reason == "nonfinite" and bad.stats.stalled is None
    parts = [fixed_point_iter(f, torch.ones(1, 3), max_iter=2, tol=0.0, stall_window=1).stats for _ in range(2)]
    assert concat_stats(parts).reason == "cap"


class TorchContraction(HostStepParts):
    """The host solver's StepParts for f(z) = A z + b on z = (net: 1 channel, coords1: 2 channels) on a 1x1 grid,
    computed by torch with the torch solvers' residual formula, so both loops see identical residuals."""

    hidden_dim = 1

    def __init__(self, a: torch.Tensor, b: torch.Tensor, coords0: np.ndarray) -> None:
        self.a, self.b, self.coords0 = a, b, coords0

    def f(self, z):
        return z @ self.a.T + self.b

    def encode(self, image1, image2):
        return None, self.coords0

    def step(self, ctx, net, coords1):
        x = torch.from_numpy(np.concatenate([net, coords1], 1).reshape(len(net), 3))
        fx = self.f(x)
        res = (fx - x).norm(dim=1)
        out = fx.numpy().reshape(len(net), 3, 1, 1)
        return out[:, :1], out[:, 1:], res.double().numpy(), (res / (fx.norm(dim=1) + REL_EPS)).double().numpy()


@pytest.mark.parametrize("rule,final", [
    (StopRule(tol=0.0, stop_mode="abs", max_iter=300, stall_window=5, stall_margin=0.01), True),
    (StopRule(tol=1e-4, stop_mode="rel", max_iter=300, stall_window=4, stall_margin=0.05), True),
    (StopRule(tol=1e-3, stop_mode="abs", max_iter=300, stall_window=3, stall_margin=0.2), False),
    (StopRule(tol=1e-3, stop_mode="abs", max_iter=12), True),
])
def test_torch_and_host_solvers_stop_on_the_same_step(rule, final):
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    a = (q @ torch.diag(torch.tensor([0.8, -0.6, 0.3], dtype=torch.float64)) @ q.T).float()
    parts = TorchContraction(a, torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.0, -4.0]]),
                             np.array([[1.0, 2.0], [-3.0, 7.0]], np.float32).reshape(2, 2, 1, 1))
    z0 = torch.from_numpy(np.concatenate([np.zeros((2, 1)), parts.coords0.reshape(2, 2)], 1).astype(np.float32))
    t = fixed_point_iter(parts.f, z0, max_iter=rule.max_iter, tol=rule.tol, stop_mode=rule.stop_mode,
                         return_final=final, stall_window=rule.stall_window, stall_margin=rule.stall_margin)
    h = solve(parts, None, None, SolveSpec(stop=rule, return_final=final)).stats
    assert (h.iterations, h.reason) == (t.stats.iterations, t.stats.reason)
    np.testing.assert_array_equal(h.abs_trace, t.stats.abs_trace.double().numpy())
    if rule.stall_window:
        assert h.stalled.tolist() == t.stats.stalled.tolist()
    if rule.tol == 0:
        assert t.stats.reason == "stalled"  # float32 rounding ends the improvement


def test_deq_config_carries_the_rule_and_training_never_stalls():
    rule = StopRule(tol=0.005, stop_mode="rel", max_iter=24, stall_window=6, stall_margin=0.01)
    cfg = DEQConfig(f_solver="fixed_point").with_stop_rule(rule)
    assert cfg.stop_rule() == rule and cfg.eval_max_iter == 24
    assert cfg.forward_solve().stop.stall_window == 6
    assert cfg.forward_solve(training=True).stop.stall_window == 0
    assert cfg.forward_solve(SolveOverrides(stall_window=0)).stop.stall_window == 0
    assert DEQConfig().stall_window == 0  # off by default: the official recipe and protocol
    with pytest.raises(InputError, match="stall window"):
        DEQConfig(stall_window=-1)


def test_model_forward_reports_the_stop(tmp_path):
    model = tiny_model(corr_levels=2, corr_radius=2).eval()
    image = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        out = model(image, image, solve=SolveOverrides(max_iter=30, tol=0.0, stall_window=2, stall_margin=0.5))
    assert out.stats.reason == "stalled" and out.stats.iterations < 30


def test_checkpoint_stop_rule_round_trip(tmp_path):
    src = save_tiny_checkpoint(tmp_path / "a.pth")
    model, meta = load_model(src)
    assert "stop_rule" not in meta and model.cfg.deq.stall_window == 0
    rule = StopRule(tol=0.005, stop_mode="rel", max_iter=20, stall_window=6, stall_margin=0.01)
    stamped = tmp_path / "b.pth"
    stamp_stop_rule(src, stamped, rule)
    model, meta = load_model(stamped)
    assert meta["stop_rule"] == rule.as_dict() and model.cfg.deq.stop_rule() == rule
    assert model.cfg.deq.f_max_iter == 4  # the training settings are untouched
    official = StopRule(tol=1e-3, stop_mode="abs", max_iter=60)
    assert load_model(stamped, stop_rule=official)[0].cfg.deq.stop_rule() == official
    assert load_model(stamped, deq=DEQConfig(f_solver="fixed_point"))[0].cfg.deq.stall_window == 0
    bad = save_tiny_checkpoint(tmp_path / "c.pth", meta={"stop_rule": {"tol": 0.1, "window": 3}})
    with pytest.raises(CheckpointError, match="stop_rule"):
        load_model(bad)
