"""Weight norm with the official g/v parametrisation: outputs, state_dict layout, gradients, fold, copies."""

import copy
import io

import pytest
import torch
from torch import nn

from training.deq.weight_norm import apply_weight_norm, fold_weight_norm, has_weight_norm, reset_weight_norm


def make_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1),
                         nn.Flatten(2), nn.Linear(25, 6), nn.Conv1d(4, 2, 3))


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))


def test_outputs_unchanged_and_state_dict_layout(x):
    net = make_net()
    before = net(x)
    apply_weight_norm(net)
    reset_weight_norm(net)
    assert has_weight_norm(net) and isinstance(net[0], nn.Conv2d)
    assert (net(x) - before).abs().max() < 1e-6
    sd = net.state_dict()
    assert set(sd) == {f"{i}.{n}" for i in (0, 2, 4, 5) for n in ("weight_g", "weight_v", "bias")}
    assert sd["0.weight_g"].shape == (8, 1, 1, 1) and sd["0.weight_v"].shape == (8, 3, 3, 3)
    assert sd["4.weight_g"].shape == (6, 1) and sd["5.weight_g"].shape == (2, 1, 1)
    assert list(net.buffers()) == []
    assert torch.allclose(sd["0.weight_g"].flatten(), sd["0.weight_v"].flatten(1).norm(dim=1))


def test_weight_is_computed_once_and_keeps_autograd(x):
    net = apply_weight_norm(make_net())
    reset_weight_norm(net)
    w = net[0].weight
    assert net[0].weight is w  # reused by every call (every solver step), not recomputed
    net(x).square().sum().backward()
    for layer in (net[0], net[4], net[5]):
        assert layer.weight_g.grad.abs().sum() > 0 and layer.weight_v.grad.abs().sum() > 0


def test_changing_g_scales_the_output_after_reset(x):
    conv = apply_weight_norm(nn.Conv2d(3, 4, 3))
    reset_weight_norm(conv)
    before = conv(x) - conv.bias.view(1, -1, 1, 1)
    with torch.no_grad():
        conv.weight_g.mul_(torch.tensor([0.5, 1.0, 2.0, 3.0]).view(4, 1, 1, 1))
    reset_weight_norm(conv)
    after = conv(x) - conv.bias.view(1, -1, 1, 1)
    assert torch.allclose(after, before * torch.tensor([0.5, 1.0, 2.0, 3.0]).view(1, 4, 1, 1), atol=1e-5)
    # direction only comes from v: scaling v leaves the output unchanged
    with torch.no_grad():
        conv.weight_v.mul_(7.0)
    reset_weight_norm(conv)
    assert torch.allclose(conv(x) - conv.bias.view(1, -1, 1, 1), after, atol=1e-5)


def test_stale_cache_is_recomputed_without_reset(x):
    conv = apply_weight_norm(nn.Conv2d(3, 4, 3))
    with torch.no_grad():
        reset_weight_norm(conv)
        y = conv(x)
        conv.weight_g.mul_(2.0)  # optimizer-style in-place update, no reset
        y2 = conv(x)
    assert torch.allclose(y2 - conv.bias.view(1, -1, 1, 1), 2 * (y - conv.bias.view(1, -1, 1, 1)), atol=1e-5)
    # a cache made under no_grad is not used where a graph is needed
    conv(x).sum().backward()
    assert conv.weight_g.grad is not None


def test_fold_keeps_outputs_and_loads_folded_state(x):
    net = apply_weight_norm(make_net())
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(0.5)
    reset_weight_norm(net)
    before = net(x)
    fold_weight_norm(net)
    assert not has_weight_norm(net) and type(net[0]) is nn.Conv2d
    assert list(net[0].state_dict()) == ["weight", "bias"]  # the order of a fresh layer
    assert (net(x) - before).abs().max() < 1e-6
    plain = make_net(seed=5)
    plain.load_state_dict(net.state_dict())
    assert (plain(x) - before).abs().max() < 1e-6


def test_load_state_dict_then_reset(x):
    src = apply_weight_norm(make_net(seed=2))
    with torch.no_grad():
        src[0].weight_g.mul_(0.3)
    reset_weight_norm(src)
    dst = apply_weight_norm(make_net(seed=3))
    reset_weight_norm(dst)
    dst.load_state_dict(src.state_dict())
    reset_weight_norm(dst)
    assert torch.equal(dst(x), src(x))


def test_copies_moves_and_pickling(x):
    net = apply_weight_norm(make_net())
    reset_weight_norm(net)
    y = net(x)  # the cached weight now carries a graph: plain deepcopy of it would fail
    clone = copy.deepcopy(net)
    assert torch.equal(clone(x), y)
    double = copy.deepcopy(net).to(torch.float64)
    assert double[0].weight.dtype == torch.float64
    assert torch.allclose(double(x.double()), y.double(), atol=1e-5)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(x), y)


def test_filter_out_and_idempotence():
    net = make_net()
    apply_weight_norm(net, filter_out=["4", "5"])
    assert "4.weight" in net.state_dict() and "0.weight_g" in net.state_dict()
    keys = list(net.state_dict())
    apply_weight_norm(net, filter_out="4")  # already normalised layers are left alone
    assert "4.weight" in net.state_dict() and "5.weight_g" in net.state_dict()
    assert set(keys) - {"5.weight", "5.bias"} <= set(net.state_dict())
