"""Per-call solver overrides: same result as configuring the model, and the model's config is untouched
(DEQFlow.forward and the torch backend)."""

import dataclasses

import numpy as np
import pytest
import torch

from deqflow.errors import InputError
from deqflow.solver_spec import AndersonOptions, SolveOverrides
from runtime.backends.torch_backend import TorchBackend
from training.config import ModelConfig
from training.deq.config import DEQConfig
from training.model.deq_flow import DEQFlow


def _model() -> DEQFlow:
    torch.manual_seed(0)
    deq = DEQConfig(f_solver="fixed_point", f_tol=1e-2)
    cfg = ModelConfig(variant="T", encoder_dims=(16, 24, 32), corr_levels=3, deq=deq)
    return DEQFlow(cfg).eval()


def _pair(h: int = 64, w: int = 80):
    g = torch.Generator().manual_seed(1)
    base = torch.rand(1, 3, h, w + 8, generator=g) * 255
    return base[..., :w].contiguous(), base[..., 4:w + 4].contiguous()


def _same(a, b) -> None:
    assert torch.equal(a.flow_up, b.flow_up) and torch.equal(a.flow_low, b.flow_low)
    assert a.stats.iterations == b.stats.iterations and torch.equal(a.stats.abs_trace, b.stats.abs_trace)


def test_per_call_override_equals_configuring_the_model_and_leaves_it_alone():
    model, configured = _model(), _model()
    configured.load_state_dict(model.state_dict())
    before, deq = model.cfg.to_dict(), model.deq
    i1, i2 = _pair()
    with torch.no_grad():
        out = model(i1, i2, solve=SolveOverrides(max_iter=7, method="anderson", tol=0.0, stop_mode="rel",
                                                 return_final=True, options=AndersonOptions(m=3, beta=0.9)))
        configured.configure_deq(f_solver="anderson", f_tol=0.0, f_stop_mode="rel", return_final=True,
                                 anderson=AndersonOptions(m=3, beta=0.9))
        ref = configured(i1, i2, solve=SolveOverrides(max_iter=7))
        plain = model(i1, i2, solve=SolveOverrides(max_iter=7))
    _same(out, ref)
    assert model.cfg.to_dict() == before and model.deq is deq
    assert not torch.equal(plain.flow_up, out.flow_up)  # the next plain call is back on the model's defaults
    with pytest.raises(InputError, match="takes FixedPointOptions"), torch.no_grad():
        model(i1, i2, solve=SolveOverrides(max_iter=2, options=AndersonOptions()))


def test_torch_backend_overrides_per_call_without_touching_the_model():
    model = _model()
    before = dataclasses.asdict(model.cfg.deq)
    backend = TorchBackend(model, settings=SolveOverrides(max_iter=6, tol=0.0, method="anderson",
                                                          options=AndersonOptions(m=2)))
    i1, i2 = (t.numpy() for t in _pair())
    result = backend.infer(i1, i2)
    assert dataclasses.asdict(model.cfg.deq) == before
    with torch.no_grad():
        ref = model(torch.from_numpy(i1), torch.from_numpy(i2),
                    solve=SolveOverrides(max_iter=6, method="anderson", tol=0.0, stop_mode="abs", return_final=True,
                                         options=AndersonOptions(m=2)))
    np.testing.assert_array_equal(result.flow, ref.flow_up.numpy())
    assert result.iterations == ref.stats.iterations == 6
