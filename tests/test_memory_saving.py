"""Memory saving (activation checkpointing of the encoders, DEQFlow.memory_saving): same forward outputs bit for
bit, same gradients, the same BatchNorm statistics after a step, and less memory kept for backward.

Gradient tolerance: rtol 1e-5, atol 1e-7 (float32). On the CPU build the two paths agree bit for bit (the
recomputation repeats the same kernels); the tolerance leaves room for GPU kernels that are not
deterministic between two runs of the same convolution.
"""

import pytest
import torch
from helpers import TINY_ENCODER_DIMS

import training.model.extractor as extractor
from deqflow.solver_spec import SolveOverrides
from training.config import ModelConfig
from training.deq.config import DEQConfig
from training.loss import fixed_point_correction_loss
from training.model.deq_flow import DEQFlow

SIZE = (64, 96)
SEGMENTS = 7  # stem + six residual blocks, per encoder


def _model(saving: bool, *, train_bn: bool = False, dropout: float = 0.0, ift: bool = False) -> DEQFlow:
    torch.manual_seed(0)
    deq = DEQConfig(f_solver="fixed_point", f_max_iter=4, f_tol=0.0, n_states=2, ift=ift, b_solver="fixed_point",
                    b_max_iter=4)
    model = DEQFlow(ModelConfig(variant="T", encoder_dims=TINY_ENCODER_DIMS, corr_levels=2, dropout=dropout,
                                deq=deq), memory_saving=saving)
    model.train()
    if not train_bn:
        model.freeze_bn()
    return model


def _step(model: DEQFlow):
    """One forward and backward on fixed inputs; returns the output and the gradient of every parameter."""
    g = torch.Generator().manual_seed(1)
    image1, image2 = (torch.rand(2, 3, *SIZE, generator=g) * 255 for _ in range(2))
    flow = torch.randn(2, 2, *SIZE, generator=g) * 3
    torch.manual_seed(2)  # dropout draws
    out = model(image1, image2)
    loss, _ = fixed_point_correction_loss(out.flow_predictions, flow, torch.ones(2, *SIZE))
    loss.backward()
    return out, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["phantom, frozen BN", "phantom, BN and dropout training", "IFT"])
def test_same_outputs_gradients_and_state(kind):
    options = {"phantom, frozen BN": {}, "phantom, BN and dropout training": {"train_bn": True, "dropout": 0.2},
               "IFT": {"ift": True}}[kind]
    plain, saving = _model(False, **options), _model(True, **options)
    out_plain, grads_plain = _step(plain)
    out_saving, grads_saving = _step(saving)
    for a, b in zip(out_plain.flow_predictions + [out_plain.flow_low, *out_plain.state],
                    out_saving.flow_predictions + [out_saving.flow_low, *out_saving.state]):
        assert torch.equal(a, b)
    assert grads_plain.keys() == grads_saving.keys()
    assert {n.split(".")[0] for n in grads_plain} >= {"fnet", "cnet", "update_block", "mask"}
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_saving[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # BatchNorm in training mode counts the batch once, as without memory saving
    for (name, a), b in zip(plain.named_buffers(), saving.buffers()):
        assert torch.equal(a, b), name
    if options.get("train_bn"):
        fresh = _model(False, **options)
        assert not torch.equal(fresh.cnet.norm1.running_mean, plain.cnet.norm1.running_mean)


def test_the_checkpointed_path_runs_and_keeps_less_for_backward():
    kept = {}
    for saving in (False, True):
        model = _model(saving)
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor, storages=storages) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _step(model)
        kept[saving] = sum(storages.values())
        assert model.memory_saving is saving
        expected = SEGMENTS if saving else 0
        assert (model.fnet.recomputed_segments, model.cnet.recomputed_segments) == (expected, expected)
    assert kept[True] < 0.6 * kept[False], kept


def test_no_checkpointing_without_autograd(monkeypatch):
    """Evaluation (no_grad) and export graphs are the plain encoder, whatever the switch says."""
    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint called without autograd")

    monkeypatch.setattr(extractor, "checkpoint", refuse)
    model = _model(True).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, *SIZE) * 255, torch.rand(1, 3, *SIZE) * 255,
                    solve=SolveOverrides(max_iter=2))
    assert out.flow_up.shape == (1, 2, *SIZE)


def test_train_turns_it_on_when_asked(tmp_path):
    from deqflow.cli import build_parser
    from training.train import TrainConfig, Trainer

    assert build_parser().parse_args(["train"]).memory_saving is False
    assert build_parser().parse_args(["train", "--memory-saving"]).memory_saving is True
    for saving in (True, False):
        cfg = TrainConfig(output=str(tmp_path / str(saving)), memory_saving=saving,
                          model=ModelConfig(variant="T", encoder_dims=TINY_ENCODER_DIMS))
        assert Trainer(cfg).model.memory_saving is saving
    assert TrainConfig().memory_saving is False  # off by default: 5-22% more CPU time per step
    assert DEQFlow(ModelConfig(variant="T", encoder_dims=TINY_ENCODER_DIMS)).memory_saving is False  # model default
