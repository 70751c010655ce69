"""deqflow.host_solver on maps whose iterates are known by hand: exact step counts, both stop modes, the
strict tolerance comparison, the cap, lowest-residual selection, NaN stops, Anderson, warm starts. numpy only."""

import numpy as np
import pytest

from deqflow.errors import InputError
from deqflow.host_solver import WarmState, initial_state, solve
from deqflow.solver_spec import REL_EPS, AndersonOptions, FixedPointOptions, SolveOverrides, SolveSpec

ANDERSON_KEYS = {"anderson_m": "m", "anderson_lam": "lam", "anderson_beta": "beta", "anderson_safeguard": "safeguard"}


def spec_of(**settings) -> SolveSpec:
    """A SolveSpec from flat keywords (the rule's fields, method, return_final, anderson_* options)."""
    anderson = {ANDERSON_KEYS[k]: settings.pop(k) for k in list(settings) if k in ANDERSON_KEYS}
    return SolveSpec.of(options=AndersonOptions(**anderson) if anderson else None, **settings)

IMG = np.zeros((2, 3, 8, 8), np.float32)  # the toy parts ignore the images


class Halving:
    """f(z) = z / 2 on z = (net, coords1) with one hidden channel on a 1x1 grid, fixed point 0.

    Sample 0 starts at coords0 = (8, 0), sample 1 at (0, 4): ||z_k|| = 8 / 2^k and 4 / 2^k, so step k (one
    evaluation of f) reports the residual ||f(z) - z|| = ||z_(k-1)|| / 2 = 8 / 2^k and 4 / 2^k, and the
    relative residual r / (r + REL_EPS), just below 1."""

    hidden_dim = 1

    def __init__(self) -> None:
        self.coords0 = np.array([[8, 0], [0, 4]], np.float32).reshape(2, 2, 1, 1)
        self.steps = 0

    def encode(self, image1, image2):
        return "ctx", self.coords0

    def step(self, ctx, net, coords1):
        assert ctx == "ctx"
        self.steps += 1
        fnet, fcoords = net / 2, coords1 / 2
        z, fz = (np.concatenate([a, b], 1).astype(np.float64) for a, b in ((net, coords1), (fnet, fcoords)))
        res, norm = np.sqrt(((fz - z) ** 2).sum((1, 2, 3))), np.sqrt((fz ** 2).sum((1, 2, 3)))
        return fnet, fcoords, res, res / (norm + REL_EPS)

    def decode(self, ctx, net, coords1):
        flow = coords1 - self.coords0
        return flow, flow

    def to_host(self, x):
        return np.asarray(x)

    def from_host(self, x):
        return x


class Scripted(Halving):
    """Step k returns the iterate whose every value is k, with the residuals given per step (N = 2)."""

    def __init__(self, residuals: list[tuple[float, float]]) -> None:
        super().__init__()
        self.residuals = residuals

    def step(self, ctx, net, coords1):
        self.steps += 1
        res = np.array(self.residuals[self.steps - 1], np.float64)
        return np.full_like(net, self.steps), np.full_like(coords1, self.steps), res, res / 10


def _solve(parts, **settings):
    return solve(parts, IMG, IMG, spec_of(**settings))


def test_runs_to_the_cap_with_exact_traces():
    parts = Halving()
    r = _solve(parts, max_iter=5, tol=0.0)
    assert r.stats.iterations == parts.steps == 5 and not r.stats.has_nonfinite
    np.testing.assert_allclose(r.stats.abs_trace, [[4, 2, 1, 0.5, 0.25], [2, 1, 0.5, 0.25, 0.125]], rtol=1e-6)
    np.testing.assert_allclose(r.stats.rel_trace, r.stats.abs_trace / (r.stats.abs_trace + REL_EPS), rtol=1e-6)
    # the last iterate z_5 = z_0 / 32: flow = coords1 - coords0
    np.testing.assert_allclose(r.flow[:, :, 0, 0], [[8 / 32 - 8, 0], [0, 4 / 32 - 4]], rtol=1e-6)
    np.testing.assert_allclose(r.state.flow_low, r.flow_low)
    assert r.state.hidden.shape == (2, 1, 1, 1) and set(r.timings) == {"encode_s", "solve_s", "decode_s"}


@pytest.mark.parametrize("tol,steps", [(1.5, (3, 2)), (1.0, (4, 3)), (0.3, (5, 4)), (5.0, (1, 1))])
def test_abs_stop_counts_steps_per_sample_and_compares_strictly(tol, steps):
    # each sample stops once its own residual (8 / 2^k, 4 / 2^k) is below tol, as it would alone, and keeps
    # its own iterate; the batch summary is the longest solve
    r = _solve(Halving(), max_iter=20, tol=tol, stop_mode="abs")
    assert r.stats.sample_iterations.tolist() == list(steps) and r.stats.iterations == max(steps)
    assert r.stats.reasons == ["tolerance", "tolerance"] and r.stats.sample_work == sum(steps)
    np.testing.assert_allclose(r.stats.final_abs, [8 / 2 ** steps[0], 4 / 2 ** steps[1]], rtol=1e-6)
    np.testing.assert_allclose(r.flow[:, :, 0, 0], [[8 / 2 ** steps[0] - 8, 0], [0, 4 / 2 ** steps[1] - 4]],
                               rtol=1e-6)
    if steps[0] != steps[1]:
        assert np.isnan(r.stats.abs_trace[1, -1])  # sample 1 no longer counts after its stop


def test_rel_stop_uses_the_relative_residual():
    # r / (r + REL_EPS) is just below 1 at every step: tol 1 stops after one step, tol 0.5 never
    assert _solve(Halving(), max_iter=20, tol=1.0, stop_mode="rel").stats.iterations == 1
    assert _solve(Halving(), max_iter=7, tol=0.5, stop_mode="rel").stats.iterations == 7
    assert _solve(Halving(), max_iter=20, tol=1.0, stop_mode="abs").stats.iterations == 4


SCRIPT = [(5, 4), (1, 3), (3, 0.5), (2, 6)]  # abs residuals of steps 1..4 for samples 0 and 1


def test_lowest_residual_iterate_per_sample():
    final = _solve(Scripted(SCRIPT), max_iter=4, tol=0.0)
    best = _solve(Scripted(SCRIPT), max_iter=4, tol=0.0, return_final=False)
    assert final.stats.iterations == best.stats.iterations == 4
    np.testing.assert_array_equal(final.flow + Halving().coords0, 4)  # the last iterate
    # sample 0 is lowest after step 2 (residual 1), sample 1 after step 3 (0.5)
    np.testing.assert_array_equal(best.flow[0] + Halving().coords0[0], np.full((2, 1, 1), 2))
    np.testing.assert_array_equal(best.flow[1] + Halving().coords0[1], np.full((2, 1, 1), 3))
    np.testing.assert_array_equal(best.state.hidden[:, 0, 0, 0], [2, 3])
    # the statistics still report every step's residuals
    np.testing.assert_array_equal(best.stats.abs_trace, np.array(SCRIPT, float).T)


def test_lowest_residual_stop_uses_the_lowest_so_far():
    # with lowest-residual selection a sample stops once its lowest residual is below tol: sample 0 after
    # step 2 (1), sample 1 after step 3 (0.5); with the last iterate, on its current residual: the same steps here
    best = _solve(Scripted(SCRIPT), max_iter=4, tol=1.5, return_final=False)
    last = _solve(Scripted(SCRIPT), max_iter=4, tol=1.5, return_final=True)
    assert best.stats.sample_iterations.tolist() == last.stats.sample_iterations.tolist() == [2, 3]
    np.testing.assert_array_equal(last.state.hidden[:, 0, 0, 0], [2, 3])  # each sample's own last iterate
    # rel = abs / 10 in the script: the stop mode picks the trace
    assert _solve(Scripted(SCRIPT), max_iter=4, tol=0.15, stop_mode="rel", return_final=False).stats.iterations == 3


def test_a_nonfinite_residual_stops_its_sample():
    r = _solve(Scripted([(5, 4), (np.nan, 3), (1, 1)]), max_iter=3, tol=0.0)
    assert r.stats.sample_iterations.tolist() == [2, 3] and r.stats.reasons == ["nonfinite", "cap"]
    assert r.stats.reason == "nonfinite" and r.stats.has_nonfinite and r.stats.nonfinite.tolist() == [True, False]


def test_anderson_solves_a_uniform_contraction_in_three_steps():
    # from x0 and x1 = f(x0) = x0 / 2, the mixing weights (-1, 2) give -f(x0) + 2 f(x1) = 0, the fixed point
    # (up to the Tikhonov term lam = 1e-4, which leaves a residual near 1e-3 at step 3)
    fixed = _solve(Halving(), max_iter=50, tol=1e-2)
    anderson = _solve(Halving(), max_iter=50, tol=1e-2, method="anderson")
    assert fixed.stats.iterations == 10  # 8 / 2^10 < 1e-2 <= 8 / 2^9
    assert anderson.stats.iterations == 3
    np.testing.assert_allclose(anderson.stats.abs_trace[:, :2], [[4, 2], [2, 1]], rtol=1e-6)
    assert anderson.stats.final_abs.max() < 2e-3


def test_warm_start_and_flow_init_set_the_start():
    coords0 = np.zeros((1, 2, 2, 3), np.float32)
    state = WarmState(hidden=np.full((1, 4, 2, 3), 0.5), flow_low=np.ones((1, 2, 2, 3)))
    net, coords1 = initial_state(coords0, 4, flow_init=np.full((1, 2, 2, 3), 2.0), state=state)
    assert net.dtype == coords1.dtype == np.float32
    np.testing.assert_array_equal(net, 0.5)
    np.testing.assert_array_equal(coords1, 3.0)
    cold_net, cold_coords = initial_state(coords0 + 1, 4)
    np.testing.assert_array_equal(cold_net, 0)
    np.testing.assert_array_equal(cold_coords, 1)
    with pytest.raises(InputError, match="warm-start state"):
        initial_state(coords0, 5, state=state)
    with pytest.raises(InputError, match="flow_init"):
        initial_state(coords0, 4, flow_init=np.zeros((1, 2, 3, 3)))


def test_settings_are_checked():
    assert SolveSpec.of(method="naive_solver").method == "fixed_point"
    resolved = SolveOverrides(tol=0.5).apply(SolveSpec.of(max_iter=12, stop_mode="rel", method="anderson"))
    rule = resolved.stop
    assert (rule.max_iter, rule.tol, rule.stop_mode, resolved.method) == (12, 0.5, "rel", "anderson")
    for bad, match in [({"method": "newton"}, "solver"), ({"max_iter": 0}, "max_iter"),
                       ({"stop_mode": "max"}, "stop mode"), ({"tol": float("nan")}, "tol"),
                       ({"options": AndersonOptions(m=0)}, "window"), ({"options": AndersonOptions(beta=1.5)}, "beta")]:
        with pytest.raises(InputError, match=match):
            SolveOverrides(**bad)
    with pytest.raises(InputError, match="takes AndersonOptions"):
        SolveSpec.of(method="anderson", options=FixedPointOptions())
    with pytest.raises(InputError, match="SolveSpec"):
        solve(Halving(), IMG, IMG, SolveOverrides())
    with pytest.raises(InputError, match="broyden"):
        _solve(Halving(), max_iter=3, tol=0.0, method="broyden")


# ---------------------------------------------------------------------- stagnation exit and stop reasons

def test_a_plateau_stalls_after_exactly_window_steps():
    from deqflow.solver_spec import StallMonitor

    monitor = StallMonitor(1, window=3, margin=0.01)
    flags = [bool(monitor.update(np.array([r]))[0]) for r in (1.0, 0.5, 0.5, 0.499, 0.5, 0.6, 0.5)]
    # 0.5 is the last significant improvement (step 2); steps 3, 4, 5 bring none (0.499 is within 1 %)
    assert flags == [False, False, False, False, True, True, True]


def test_a_residual_that_keeps_improving_never_stalls():
    from deqflow.solver_spec import StallMonitor

    monitor = StallMonitor(1, window=2, margin=0.01)
    # 0.6 % per step: no single step is a significant improvement, but two together are (1.2 %)
    assert not any(monitor.update(np.array([0.994 ** k]))[0] for k in range(500))


def test_host_solver_stops_on_a_plateau_with_the_reason():
    parts = Scripted([(1.0, 1.0)] * 20)
    r = _solve(parts, max_iter=20, tol=0.0, stall_window=4)
    assert r.stats.iterations == parts.steps == 5 and r.stats.reason == "stalled"
    assert r.stats.stalled.tolist() == [True, True]
    assert r.flow[0, 0, 0, 0] == 5 - 8  # the last iterate (step 5)


def test_stagnation_is_per_sample_in_a_batch():
    # sample 0 plateaus at 1.0; sample 1 improves by half each step and goes below tol at step 7
    residuals = [(1.0, 2.0 ** -k) for k in range(30)]
    r = _solve(Scripted(residuals), max_iter=30, tol=0.01, stall_window=3)
    assert r.stats.iterations == 8 and r.stats.reason == "stalled"  # 2^-7 < 0.01 at step 8
    assert r.stats.stalled.tolist() == [True, False]
    # without a tolerance sample 1 never ends, so the batch runs to the cap
    r = _solve(Scripted(residuals), max_iter=30, tol=0.0, stall_window=3)
    assert r.stats.iterations == 30 and r.stats.reason == "cap" and r.stats.stalled.tolist() == [True, False]


@pytest.mark.parametrize("settings,reason,steps", [
    ({"max_iter": 5, "tol": 0.0}, "cap", 5),
    ({"max_iter": 10, "tol": 1.5}, "tolerance", 3),
    ({"max_iter": 10, "tol": 0.0, "stall_window": 2}, "cap", 10),  # halving never stalls
])
def test_stop_reasons(settings, reason, steps):
    r = _solve(Halving(), **settings)
    assert (r.stats.reason, r.stats.iterations) == (reason, steps)
    assert (r.stats.stalled is None) == (not settings.get("stall_window"))


def test_nonfinite_is_the_reason():
    r = _solve(Scripted([(1.0, 1.0), (float("nan"), 1.0), (1.0, 1.0)]), max_iter=3, tol=0.0, stall_window=1)
    assert r.stats.reason == "nonfinite" and r.stats.iterations == 2


def test_stop_rule_data_and_description():
    from deqflow.solver_spec import StopRule

    rule = StopRule(tol=0.005, stop_mode="rel", max_iter=60, stall_window=6, stall_margin=0.01)
    assert rule.describe() == "rel < 0.005 or stalled over 6 or 60 iterations"
    assert StopRule(max_iter=60).describe() == "60 iterations"
    assert StopRule.from_dict(rule.as_dict()) == rule
    spec = SolveOverrides(stall_window=6).apply(SolveSpec(stop=rule))
    assert spec.stop == rule and spec.as_dict()["stall_window"] == 6
    for bad in ({"stall_window": -1}, {"stall_margin": 1.0}, {"max_iter": 0}, {"stop_mode": "max"},
                {"tol": float("nan")}):
        with pytest.raises(InputError):
            StopRule(**bad)
    with pytest.raises(InputError, match="keys"):
        StopRule.from_dict({"tol": 1, "window": 3})
    with pytest.raises(InputError, match="stall window"):
        SolveSpec.of(stall_window=-2)
    with pytest.raises(InputError, match="stall window"):
        SolveOverrides(stall_window=-2).apply(SolveSpec())


def test_export_metadata_carries_the_stop_rule():
    from deqflow.model_metadata import STOP_EXITS, ModelMetadata
    from deqflow.solver_spec import StopRule

    meta = ModelMetadata(variant="T", layout="split", part="step", iterations=60, tolerance=0.005, stop_mode="rel",
                         stall_window=6, stall_margin=0.02, stop_exits=list(STOP_EXITS["split"]))
    back = ModelMetadata.from_props(meta.to_props())
    assert back == meta
    assert back.stop_rule() == StopRule(tol=0.005, stop_mode="rel", max_iter=60, stall_window=6, stall_margin=0.02)
    loop = ModelMetadata(variant="T", layout="loop", part="model", iterations=60, tolerance=0.005, stall_window=6)
    assert loop.stop_rule().stall_window == 0 and STOP_EXITS["loop"] == ("tolerance", "cap")
    old = {k: v for k, v in meta.to_props().items() if "stall" not in k and "stop_exits" not in k}
    assert ModelMetadata.from_props(old).stall_window == 0  # files written before the field existed
