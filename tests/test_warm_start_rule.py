"""The flow-step exit of the stop rule (StopRule.flow_tol) and the runtime's warm-start default
(StopRule.for_warm_start, StopRule.for_start): where it stops on hand-computed traces, in the host and the
torch solvers alike, the same iteration counts for both on a warm-started video with the tiny fixture model, and
the rule's round trip through checkpoints, configs and export metadata."""

import numpy as np
import pytest
import torch
from helpers import TINY_ONNX, TINY_ONNX_MODEL, TINY_ONNX_SIZE, save_tiny_checkpoint

from deqflow.errors import InputError
from deqflow.host_solver import WarmState, solve
from deqflow.model_metadata import ModelMetadata
from deqflow.solver_spec import WARM_FLOW_TOL, SolveOverrides, SolveSpec, StopRule, converged, flow_step
from training.checkpoint import load_model, stamp_stop_rule
from training.config import ModelConfig
from training.deq.config import DEQConfig
from training.deq.registry import run_solver
from training.deq.solvers import FlowStop, fixed_point_iter

# The hand-made problem: per sample a hidden state of one cell (which moves by +1 every step, so its residual
# never falls) and a flow on two cells that halves every step. From flow (3, 4) on both cells the flow step of
# evaluation k is 5 / 2^k px: 2.5, 1.25, 0.625, 0.3125, ... -> below 0.5 at k = 4, below 0.1 at k = 6.
FLOW0 = np.array([3.0, 4.0], np.float32)


def halving(z: torch.Tensor) -> torch.Tensor:
    """Flat torch state (B, 1 + 4): hidden + 1, flow (laid out (2, cells)) halved."""
    return torch.cat([z[:, :1] + 1, 0.5 * z[:, 1:]], dim=1)


class HalvingParts:
    """The same problem as the host solver's StepParts: hidden_dim 1 on a 1x2 grid, coords0 = 0."""

    hidden_dim = 1

    def encode(self, image1, image2):
        return None, np.zeros((1, 2, 1, 2), np.float32)

    def step(self, ctx, net, coords1):
        fnet, fcoords = net + 1, 0.5 * coords1
        res = np.sqrt(((fnet - net) ** 2).sum() + ((fcoords - coords1) ** 2).sum()).reshape(1)
        return fnet, fcoords, res, res / (np.sqrt((fnet ** 2).sum() + (fcoords ** 2).sum()) + 1e-8)

    def decode(self, ctx, net, coords1):
        return coords1, coords1

    def to_host(self, x):
        return np.asarray(x)

    def from_host(self, x):
        return x


def warm_flow() -> WarmState:
    return WarmState(np.zeros((1, 1, 1, 2), np.float32), np.tile(FLOW0.reshape(1, 2, 1, 1), (1, 1, 1, 2)))


def test_flow_step_and_converged_by_hand():
    delta = np.zeros((2, 2, 1, 2))
    delta[0, :, 0, 0], delta[0, :, 0, 1] = (3, 4), (0, 0)  # cells of 5 px and 0 px: mean 2.5
    delta[1] = 0.1  # |(0.1, 0.1)| on both cells
    np.testing.assert_allclose(flow_step(delta), [2.5, np.sqrt(0.02)])
    res = np.array([1.0, 1.0])
    assert converged(res, 0.5, flow_step(delta), 0.2).tolist() == [False, True]
    assert converged(res, 0.5, flow_step(delta), 0.0).tolist() == [False, False]  # off
    assert converged(res, 2.0, None, 0.2).tolist() == [True, True]


@pytest.mark.parametrize("tol,steps", [(0.5, 4), (0.1, 6), (3.0, 1)])
def test_torch_solver_stops_on_the_flow_step(tol, steps):
    z0 = torch.from_numpy(np.concatenate([[0.0], np.repeat(FLOW0, 2)]).astype(np.float32))[None]
    r = fixed_point_iter(halving, z0, max_iter=50, tol=1e-3, flow_stop=FlowStop(tol, 4))
    assert (r.stats.iterations, r.stats.reason) == (steps, "tolerance")
    spec = SolveSpec.of(max_iter=50, tol=1e-3, flow_tol=tol, return_final=False)  # the same through the registry
    assert (run_solver(spec, halving, z0, flow_size=4).stats.iterations, r.stats.iterations) == (steps, steps)
    assert fixed_point_iter(halving, z0, max_iter=50, tol=1e-3).stats.reason == "cap"  # without: no flow exit
    with pytest.raises(InputError, match="flow stop size"):
        fixed_point_iter(halving, z0, max_iter=5, tol=0.0, flow_stop=FlowStop(tol, 3))
    with pytest.raises(InputError, match="flow_size"):
        run_solver(spec, halving, z0)


@pytest.mark.parametrize("tol,steps", [(0.5, 4), (0.1, 6)])
def test_host_solver_uses_the_flow_tolerance_for_warm_starts_only(tol, steps):
    settings = SolveOverrides(warm_flow_tol=tol).apply(SolveSpec.of(tol=1e-3, stop_mode="abs", max_iter=50))
    warm = solve(HalvingParts(), None, None, settings, state=warm_flow()).stats
    assert (warm.iterations, warm.reason) == (steps, "tolerance")
    np.testing.assert_allclose(warm.flow_trace[0], 5 / 2.0 ** np.arange(1, steps + 1), rtol=1e-6)
    cold = solve(HalvingParts(), None, None, settings).stats  # the rule itself has no flow tolerance
    assert (cold.iterations, cold.reason, cold.flow_trace) == (50, "cap", None)


def test_warm_default_and_explicit_settings():
    rule = StopRule(tol=0.005, stop_mode="rel", max_iter=60, stall_window=6)
    model = SolveSpec(stop=rule)
    s = SolveOverrides().apply(model)  # opt-in: warm starts follow the model's rule unless asked
    assert (s.stop.flow_tol, s.stop.warm_flow_tol) == (0.0, 0.0) and s.for_start(warm=True) is s
    s = SolveOverrides(warm_flow_tol=WARM_FLOW_TOL).apply(model)
    assert s.for_start(warm=False) is s
    assert s.for_start(warm=True).stop.flow_tol == rule.for_warm_start().flow_tol == WARM_FLOW_TOL
    assert SolveOverrides(warm_flow_tol=0.0).apply(model).for_start(warm=True).stop.flow_tol == 0.0
    assert StopRule(tol=0.0).for_warm_start().flow_tol == 0.0  # a fixed budget stays
    assert SolveOverrides(flow_tol=0.01).apply(model).for_start(warm=True).stop.flow_tol == 0.01
    own = StopRule(flow_tol=0.2)
    assert own.for_warm_start() is own and SolveSpec(stop=own).for_start(warm=True).stop.flow_tol == 0.2
    carried = StopRule(tol=0.005, warm_flow_tol=0.03)  # a model's own warm-start exit, as its metadata carries it
    assert StopRule.from_dict(carried.as_dict()) == carried and carried.for_start(warm=True).flow_tol == 0.03
    assert "flow step < 0.028 px" in rule.for_warm_start(0.028).describe()
    for bad in (-0.1, float("nan"), "x"):
        with pytest.raises(InputError, match="flow"):
            SolveOverrides(warm_flow_tol=bad)
        with pytest.raises(InputError, match="flow tolerance"):
            StopRule(flow_tol=bad)


def test_rule_round_trips_and_old_files_still_load(tmp_path):
    rule = StopRule(tol=0.005, stop_mode="rel", max_iter=24, stall_window=6, flow_tol=0.03)
    assert StopRule.from_dict(rule.as_dict()) == rule
    old = {"tol": 0.005, "stop_mode": "rel", "max_iter": 24, "stall_window": 6, "stall_margin": 0.01}
    assert StopRule.from_dict(old).flow_tol == 0.0 and StopRule.from_dict(old).as_dict() == old  # written as before
    cfg = DEQConfig().with_stop_rule(rule)
    assert cfg.stop_rule() == rule and cfg.forward_solve().stop.flow_tol == 0.03
    assert cfg.forward_solve(training=True).stop.flow_tol == 0.0  # training keeps its fixed budget
    assert "flow_tol" not in ModelConfig(variant="T").to_dict()["deq"]  # older toolkits still read new files
    ckpt = save_tiny_checkpoint(tmp_path / "a.pth", corr_levels=2, corr_radius=2)
    stamp_stop_rule(ckpt, tmp_path / "b.pth", rule)
    model, _ = load_model(tmp_path / "b.pth")
    assert model.cfg.deq.stop_rule() == rule
    meta = ModelMetadata(variant="T", layout="split", part="step", iterations=24, tolerance=0.005, stop_mode="rel",
                         stall_window=6, flow_tol=0.03)
    assert ModelMetadata.from_props(meta.to_props()).stop_rule() == rule
    props = {k: v for k, v in meta.to_props().items() if k != "deqflow.flow_tol"}  # a file from before
    assert ModelMetadata.from_props(props).stop_rule().flow_tol == 0.0


@pytest.mark.parametrize("method", ["fixed_point", "anderson"])
def test_tiny_model_host_and_torch_agree_on_warm_start_iterations(tmp_path, method):
    from runtime import create_backend
    from runtime.pipeline import FlowEstimator
    from training.data.synthetic import make_synthetic_video

    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pth", **TINY_ONNX_MODEL)  # the weights of the ONNX fixture
    video = make_synthetic_video(5, TINY_ONNX_SIZE, seed=2)
    its = {}
    for warm_tol in (0.1, 0.0):  # this random model's first warm flow step is 0.04-0.05 px: well inside 0.1
        settings = SolveOverrides(max_iter=25, tol=1e-2, stop_mode="rel", method=method, warm_flow_tol=warm_tol)
        for name, path in (("torch", ckpt), ("onnxruntime", TINY_ONNX)):
            with create_backend(name, path, settings=settings, threads=1) as be:
                est = FlowEstimator(be, warm_start=True)
                its[name, warm_tol] = [est(video.frames[i], video.frames[i + 1]).iterations for i in range(4)]
    assert its["torch", 0.1] == its["onnxruntime", 0.1], its
    assert its["torch", 0.0] == its["onnxruntime", 0.0], its
    assert its["onnxruntime", 0.1][0] == its["onnxruntime", 0.0][0]  # the cold first pair: the same rule
    assert its["onnxruntime", 0.1][1:] == [1, 1, 1] and min(its["onnxruntime", 0.0][1:]) >= 2, its  # measured 2


def test_the_models_own_warm_exit_travels_with_checkpoint_and_export(tmp_path):
    """A warm-start flow tolerance stamped into a checkpoint reaches the torch backend, is written into a split
    export's metadata and reaches the ONNX Runtime backend there; both then stop the warm starts of the tiny
    video after one step, as with the explicit setting above; --warm-flow-tol 0 (SolveOverrides) turns it off."""
    from export import export_onnx
    from runtime import create_backend
    from runtime.pipeline import FlowEstimator
    from training.data.synthetic import make_synthetic_video

    rule = StopRule(tol=1e-2, stop_mode="rel", max_iter=25, warm_flow_tol=0.1)
    src = save_tiny_checkpoint(tmp_path / "tiny.pth", **TINY_ONNX_MODEL)
    stamp_stop_rule(src, tmp_path / "own.pth", rule)
    onnx = tmp_path / "own.onnx"
    export_onnx(tmp_path / "own.pth", onnx, layout="split", height=TINY_ONNX_SIZE[0], width=TINY_ONNX_SIZE[1],
                iters=25, levels=TINY_ONNX_MODEL["corr_levels"])
    step = tmp_path / "own.step.onnx"
    assert ModelMetadata.from_props(load_props(step)).stop_rule().warm_flow_tol == 0.1
    video = make_synthetic_video(5, TINY_ONNX_SIZE, seed=2)
    for name, path in (("torch", tmp_path / "own.pth"), ("onnxruntime", onnx)):
        for settings, first_warm in ((None, [1, 1, 1]), (SolveOverrides(warm_flow_tol=0.0), None)):
            with create_backend(name, path, settings=settings, threads=1) as be:
                assert be.resolved.stop.warm_flow_tol == (0.1 if settings is None else 0.0), name
                est = FlowEstimator(be, warm_start=True)
                its = [est(video.frames[i], video.frames[i + 1]).iterations for i in range(4)]
            if first_warm is not None:
                assert its[1:] == first_warm, (name, its)
            else:
                assert min(its[1:]) >= 2, (name, its)  # the cold rule for the warm starts: measured 2


def load_props(path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
