"""Model behaviour beyond conformance: batching, input errors, weight-norm folding, lookups, warm start."""

import numpy as np
import pytest
import torch
from helpers import silence_flow_head

from deqflow.errors import InputError
from deqflow.solver_spec import SolveOverrides
from training.config import ModelConfig
from training.deq.config import DEQConfig
from training.model.corr import CorrPyramid
from training.model.deq_flow import DEQFlow
from training.model.upsample import convex_upsample

FIXED = DEQConfig(f_solver="fixed_point", f_tol=0.0, return_final=True)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(variant="T", deq=kw.pop("deq", FIXED), **kw)
    return DEQFlow(cfg).eval()


def _pair(n=1, h=128, w=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h, w + 8, generator=g) * 255
    return base[..., :w].contiguous(), base[..., 4:w + 4].contiguous()  # a 4 px horizontal shift


def test_batch_equals_per_sample():
    model = _model()
    a1, a2 = _pair(seed=1)
    b1, b2 = _pair(seed=2)
    with torch.no_grad():
        batched = model(torch.cat([a1, b1]), torch.cat([a2, b2]), solve=SolveOverrides(max_iter=5)).flow_up
        five = SolveOverrides(max_iter=5)
        single = torch.cat([model(a1, a2, solve=five).flow_up, model(b1, b2, solve=five).flow_up])
    assert (batched - single).abs().max() < 1e-4


def test_input_errors_are_clear():
    model = _model()
    i1, i2 = _pair()
    with pytest.raises(InputError, match="multiple of 8"):
        model(i1[..., :150], i2[..., :150])
    with pytest.raises(InputError, match="differ in shape"):
        model(i1, i2[..., :152])
    with pytest.raises(InputError, match=r"\(N,3,H,W\)"):
        model(i1[:, :1], i2[:, :1])
    bad = i1.clone()
    bad[0, 0, 5, 5] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model(bad, i2)
    with pytest.raises(InputError, match="0..255"):
        model(i1 / 127.5 - 1, i2 / 127.5 - 1)
    small1, small2 = _pair(h=96, w=200)
    with pytest.raises(InputError, match="128"):
        model(small1, small2)
    with pytest.raises(InputError, match="flow_init"):
        model(i1, i2, flow_init=torch.zeros(1, 2, 8, 8))


def test_fewer_pyramid_levels_allow_small_images():
    model = _model(corr_levels=2)
    i1, i2 = _pair(h=64, w=64)
    with torch.no_grad():
        out = model(i1, i2, solve=SolveOverrides(max_iter=3))
    assert torch.isfinite(out.flow_up).all()


def test_folding_weight_norm_keeps_outputs():
    model = _model()
    # make g differ from ||v|| so folding is not trivially the identity
    with torch.no_grad():
        for name, p in model.update_block.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(0.5)
    i1, i2 = _pair()
    with torch.no_grad():
        before = model(i1, i2, solve=SolveOverrides(max_iter=6)).flow_up
        model.fold_weight_norm()
        after = model(i1, i2, solve=SolveOverrides(max_iter=6)).flow_up
    assert not any(k.endswith("weight_g") for k in model.state_dict())
    assert (before - after).abs().max() < 1e-5


def test_gather_lookup_equals_grid_sample_including_outside_coordinates():
    g = torch.Generator().manual_seed(3)
    f1, f2 = torch.randn(2, 1, 16, 16, 24, generator=g)
    coords = torch.rand(1, 2, 16, 24, generator=g) * 44 - 10  # many samples fall outside the image
    a = CorrPyramid(f1, f2, 4, 4, lookup="grid_sample")(coords)
    b = CorrPyramid(f1, f2, 4, 4, lookup="gather")(coords)
    assert a.shape == (1, 4 * 81, 16, 24) and torch.isfinite(a).all()
    assert (a - b).abs().max() < 1e-5


def test_convex_upsample_matches_unfold_formulation():
    g = torch.Generator().manual_seed(4)
    flow = torch.randn(2, 2, 5, 7, generator=g)
    mask = torch.randn(2, 576, 5, 7, generator=g)
    n, _, h, w = flow.shape
    m = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
    up = torch.nn.functional.unfold(8 * flow, [3, 3], padding=1).view(n, 2, 9, 1, 1, h, w)
    ref = torch.sum(m * up, dim=2).permute(0, 1, 4, 2, 5, 3).reshape(n, 2, 8 * h, 8 * w)
    assert (convex_upsample(flow, mask) - ref).abs().max() < 1e-5


def test_constant_flow_is_upsampled_exactly():
    flow = torch.ones(1, 2, 4, 4) * torch.tensor([1.5, -2.0]).view(1, 2, 1, 1)
    up = convex_upsample(flow, torch.zeros(1, 576, 4, 4))
    inner = up[..., 8:-8, 8:-8]  # borders mix in the zero padding
    assert torch.allclose(inner[:, 0], torch.full_like(inner[:, 0], 12.0))
    assert torch.allclose(inner[:, 1], torch.full_like(inner[:, 1], -16.0))


def _contractive(model):
    """Random weights have no fixed point (the untrained flow head pushes the flow by a non-zero amount
    every step). Small weight-norm gains make the hidden-state update a contraction and a silenced flow
    head keeps the flow put, so the solver does converge: enough to test the warm-start mechanics."""
    return silence_flow_head(model, update_gain=0.3)


def test_warm_start_from_cached_fixed_point_needs_fewer_iterations():
    deq = DEQConfig(f_solver="fixed_point", f_tol=1e-3, eval_f_max_iter=60)
    model = _contractive(_model(deq=deq))
    i1, i2 = _pair()
    with torch.no_grad():
        cold = model(i1, i2)
        warm = model(i1, i2, cached_state=cold.state)
    assert cold.stats.iterations < 60 and warm.stats.iterations <= cold.stats.iterations // 3
    assert (warm.flow_up - cold.flow_up).abs().max() < 1e-3


def test_flow_init_shifts_the_initial_state():
    model = _model()
    i1, i2 = _pair()
    with torch.no_grad():
        out = model(i1, i2, solve=SolveOverrides(max_iter=1), flow_init=torch.full((1, 2, 16, 20), 3.0))
        ref = model(i1, i2, solve=SolveOverrides(max_iter=1))
    assert not torch.allclose(out.flow_low, ref.flow_low)
    assert float((out.flow_low - ref.flow_low).mean()) > 1.0


def test_training_mode_returns_one_prediction_per_sampled_state():
    deq = DEQConfig(f_solver="fixed_point", f_max_iter=6, n_states=3, phantom_grad=(1,))
    torch.manual_seed(0)
    model = DEQFlow(ModelConfig(variant="T", deq=deq)).train()
    i1, i2 = _pair(n=2)
    out = model(i1, i2)
    assert len(out.flow_predictions) == 3
    loss = sum(p.abs().mean() for p in out.flow_predictions)
    loss.backward()
    g = model.update_block.gru.convz1.weight_v.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert model.fnet.conv1.weight.grad.abs().sum() > 0


def test_gma_variant_runs_and_is_recognised(tmp_path):
    from training.checkpoint import infer_model_config

    model = _model(gma=True)
    keys = model.state_dict()
    assert "attn.to_qk.weight" in keys and "update_block.gma.to_v.weight_g" in keys
    assert infer_model_config(keys)["gma"] is True
    i1, i2 = _pair()
    with torch.no_grad():
        out = model(i1, i2, solve=SolveOverrides(max_iter=3))
    assert torch.isfinite(out.flow_up).all()


def test_stats_report_residual_traces():
    model = _model(deq=DEQConfig(f_solver="anderson", f_tol=1e-6, eval_f_max_iter=12))
    i1, i2 = _pair()
    with torch.no_grad():
        out = model(i1, i2)
    s = out.stats
    assert s.abs_trace.shape == (1, s.iterations) and s.rel_trace.shape == (1, s.iterations)
    assert np.isclose(float(s.abs_lowest[0]), float(s.abs_trace[0].min()))


def test_flow_trajectory_matches_separate_solves_and_their_residuals():
    """One trajectory run gives the flow a separate k-step solve gives, and the solver's relative residuals."""
    from runtime import FlowEstimator, SolveOverrides
    from runtime.backends.torch_backend import TorchBackend
    from training.inference import flow_trajectory

    model = _model(wnorm=True)
    i1, i2 = _pair()
    img1, img2 = (t[0].permute(1, 2, 0).numpy().astype(np.uint8) for t in (i1, i2))
    flows, residuals = flow_trajectory(model, img1, img2, [2, 5])
    assert sorted(flows) == [2, 5] and len(residuals) == 5
    for k in (2, 5):  # the runtime's numpy-in/flow-out path with the torch backend, k steps, no early stop
        ref = FlowEstimator(TorchBackend(model, settings=SolveOverrides(max_iter=k, tol=0.0)))(img1, img2)
        assert np.abs(flows[k] - ref.flow).max() < 1e-4
        assert ref.iterations == k
    np.testing.assert_allclose(residuals, ref.result.rel_trace[0], rtol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        flow_trajectory(model, img1, img2, [0])
