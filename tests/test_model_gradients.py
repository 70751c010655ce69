"""Implicit (IFT) and phantom gradients through the real DEQ-Flow update, in float64 on a tiny model."""

import torch
from helpers import silence_flow_head

from training.config import ModelConfig
from training.deq.config import DEQConfig
from training.model.deq_flow import DEQFlow


def _tiny_contractive(deq: DEQConfig) -> DEQFlow:
    """T-width update block on 64x64 inputs (2 pyramid levels), weights scaled so f is a contraction.

    Untrained weights have no fixed point in the flow (the flow head adds a non-zero increment every
    step), so the flow head's output layer is silenced; the hidden state, which the convex upsampling
    reads, still converges to a non-trivial equilibrium that depends on every GRU and encoder weight.
    """
    torch.manual_seed(0)
    cfg = ModelConfig(variant="T", corr_levels=2, encoder_dims=(16, 16, 16), deq=deq)
    model = silence_flow_head(DEQFlow(cfg).double(), update_gain=0.6)
    with torch.no_grad():
        model.mask[0].bias.add_(20.0)
    model.train()
    model.freeze_bn()
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    base = torch.rand(1, 3, 64, 72, generator=g, dtype=torch.float64) * 255
    weights = torch.randn(1, 2, 64, 64, generator=g, dtype=torch.float64)
    return base[..., :64], base[..., 5:69], weights


def _loss(model, i1, i2, r):
    out = model(i1, i2, flow_init=torch.full((1, 2, 8, 8), 1.5, dtype=torch.float64))
    return (out.flow_predictions[-1] * r).sum()


def _directional(model, param, direction, loss_fn):
    """Central finite difference of loss along `direction` in parameter space."""
    eps = 1e-5
    with torch.no_grad():
        param.add_(eps * direction)
        plus = loss_fn()
        param.sub_(2 * eps * direction)
        minus = loss_fn()
        param.add_(eps * direction)
    return float((plus - minus) / (2 * eps))


def _unrolled_loss(model, i1, i2, r, steps=100):
    from training.deq.weight_norm import reset_weight_norm

    reset_weight_norm(model.update_block)
    ctx = model.encode(i1, i2)
    net, coords1 = model.initial_state(ctx, flow_init=torch.full((1, 2, 8, 8), 1.5, dtype=torch.float64))
    for _ in range(steps):
        net, coords1 = model.step(ctx, net, coords1)
    return (model.decode(net, coords1 - ctx.coords0) * r).sum()


def test_ift_gradient_matches_finite_differences_and_long_unrolled_solve(b_solver="broyden"):
    deq = DEQConfig(f_solver="anderson", f_max_iter=80, f_tol=1e-11, ift=True, b_solver=b_solver,
                    b_max_iter=200, b_tol=1e-12)
    model = _tiny_contractive(deq)
    i1, i2, r = _inputs()
    params = {"gru.convq1.weight_v": model.update_block.gru.convq1.weight_v,
              "cnet.conv2.weight": model.cnet.conv2.weight}
    loss = _loss(model, i1, i2, r)
    grads = torch.autograd.grad(loss, list(params.values()))
    g = torch.Generator().manual_seed(2)
    for (name, p), grad in zip(params.items(), grads):
        d = torch.randn(p.shape, generator=g, dtype=torch.float64)
        analytic = float((grad * d).sum())
        numeric = _directional(model, p, d, lambda: _loss(model, i1, i2, r))
        assert abs(analytic - numeric) <= 1e-4 * abs(numeric), (name, analytic, numeric)
        model.zero_grad()
        unrolled = torch.autograd.grad(_unrolled_loss(model, i1, i2, r), p)[0]
        assert abs(float((unrolled * d).sum()) - analytic) <= 1e-4 * abs(analytic), name
        assert abs(analytic) > 1e-6  # the check is not vacuous


def test_phantom_gradient_approaches_ift_as_k_grows():
    i1, i2, r = _inputs()
    ift_model = _tiny_contractive(DEQConfig(f_solver="anderson", f_max_iter=80, f_tol=1e-11, ift=True,
                                            b_solver="broyden", b_max_iter=200, b_tol=1e-12))
    p = ift_model.update_block.gru.convz1.weight_v
    reference = torch.autograd.grad(_loss(ift_model, i1, i2, r), p)[0]
    errors = []
    for k in (1, 3, 10):
        model = _tiny_contractive(DEQConfig(f_solver="anderson", f_max_iter=80, f_tol=1e-11, phantom_grad=(k,)))
        grad = torch.autograd.grad(_loss(model, i1, i2, r), model.update_block.gru.convz1.weight_v)[0]
        errors.append(float((grad - reference).norm() / reference.norm()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2
