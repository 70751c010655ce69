"""The official DEQ-Flow checkpoint format loads unchanged and reproduces the official code's numbers."""

import json

import pytest
import torch
from helpers import OFFICIAL_DIR

from deqflow.checkpoint import write_checkpoint
from deqflow.errors import CheckpointError
from deqflow.solver_spec import SolveOverrides
from training.checkpoint import load_model
from training.config import ModelConfig
from training.deq.config import DEQConfig
from training.deq.weight_norm import reset_weight_norm
from training.model.deq_flow import DEQFlow

TOL = 1e-4


@pytest.fixture(scope="module")
def official_T(official_T_path):
    model, meta = load_model(official_T_path)
    return model, meta


def test_variant_and_config_inferred(official_T):
    model, meta = official_T
    assert model.cfg.variant == "T" and model.cfg.wnorm and not model.cfg.gma and not model.cfg.old_version
    assert meta["source_format"] == "official" and len(meta["sha256"]) == 64
    assert not model.training


def test_encoders_match_official(official_T, official_T_io):
    model, _ = official_T
    i1, i2 = (torch.from_numpy(official_T_io[k]) for k in ("image1", "image2"))
    with torch.no_grad():
        ctx = model.encode(i1, i2)
        fmap1 = model.fnet(2 * (i1 / 255.0) - 1.0)
    assert (fmap1 - torch.from_numpy(official_T_io["fmap1"])).abs().max() <= TOL
    assert (ctx.inp - torch.from_numpy(official_T_io["inp"])).abs().max() <= TOL


@pytest.mark.parametrize("lookup", ["grid_sample", "gather"])
def test_every_fixed_point_step_matches_official(official_T_path, official_T_io, lookup):
    model, _ = load_model(official_T_path, lookup=lookup)
    i1, i2 = (torch.from_numpy(official_T_io[k]) for k in ("image1", "image2"))
    expected = torch.from_numpy(official_T_io["flow_low"])
    assert expected.shape == (8, 1, 2, 16, 20) and float(expected.abs().max()) > 0.1  # a non-trivial flow
    with torch.no_grad():
        reset_weight_norm(model.update_block)
        ctx = model.encode(i1, i2)
        net, coords1 = model.initial_state(ctx)
        for k in range(8):
            net, coords1 = model.step(ctx, net, coords1)
            err = (coords1 - ctx.coords0 - expected[k]).abs().max().item()
            assert err <= TOL, f"step {k + 1}: max abs error {err}"
        flow_up = model.decode(net, coords1 - ctx.coords0)
    assert (flow_up - torch.from_numpy(official_T_io["flow_up"])).abs().max() <= TOL


def test_forward_with_plain_fixed_point_solver_matches_official(official_T_path, official_T_io):
    deq = DEQConfig(f_solver="fixed_point", f_tol=0.0, return_final=True)
    model, _ = load_model(official_T_path, deq=deq)
    i1, i2 = (torch.from_numpy(official_T_io[k]) for k in ("image1", "image2"))
    with torch.no_grad():
        out = model(i1, i2, solve=SolveOverrides(max_iter=int(official_T_io["iters"])))
    assert out.stats.iterations == 8
    assert (out.flow_low - torch.from_numpy(official_T_io["flow_low"][-1])).abs().max() <= TOL
    assert (out.flow_up - torch.from_numpy(official_T_io["flow_up"])).abs().max() <= TOL
    assert len(out.flow_predictions) == 1 and out.flow_up.shape == (1, 2, 128, 160)


def _official_keys():
    return json.loads((OFFICIAL_DIR / "official_keys.json").read_text())


@pytest.mark.parametrize("variant", ["T", "B", "H"])
def test_state_dict_keys_equal_official_table(variant):
    table = _official_keys()
    own = DEQFlow(ModelConfig(variant=variant)).state_dict()
    assert set(own) == set(table)
    for key, shapes in table.items():
        assert list(own[key].shape) == shapes[variant], key


@pytest.mark.parametrize("variant", ["B", "H"])
def test_official_B_and_H_checkpoints_load_and_run(tmp_path, variant):
    """An official-format checkpoint of B/H (any seed: random values, exact official keys) loads strictly,
    its variant is inferred, and the numbers agree with a model given the same weights directly."""
    gen = torch.Generator().manual_seed(7)
    state = {}
    for key, shapes in _official_keys().items():
        shape = shapes[variant]
        if key.endswith("num_batches_tracked"):
            state["module." + key] = torch.tensor(3)
        elif key.endswith("running_var"):
            state["module." + key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("weight_g"):
            state["module." + key] = torch.rand(shape, generator=gen) * 0.5 + 0.25
        else:
            state["module." + key] = torch.randn(shape, generator=gen) * 0.05
    path = tmp_path / f"official-{variant}.pth"
    write_checkpoint(path, state)
    deq = DEQConfig(f_solver="fixed_point", f_tol=0.0, return_final=True)
    model, _ = load_model(path, deq=deq)
    assert model.cfg.variant == variant
    images = torch.rand(2, 1, 3, 128, 128, generator=gen) * 255
    with torch.no_grad():
        out = model(images[0], images[1], solve=SolveOverrides(max_iter=3))
    assert torch.isfinite(out.flow_up).all() and out.flow_up.shape == (1, 2, 128, 128)
    # same weights, loaded by hand without the loader's remapping
    ref = DEQFlow(ModelConfig(variant=variant, deq=deq)).eval()
    ref.load_state_dict({k[len("module."):]: v for k, v in state.items()}, strict=True)
    with torch.no_grad():
        ref_out = ref(images[0], images[1], solve=SolveOverrides(max_iter=3))
    assert torch.equal(out.flow_up, ref_out.flow_up)


def test_requested_variant_must_match(official_T_path):
    with pytest.raises(CheckpointError, match="DEQ-Flow-T"):
        load_model(official_T_path, variant="H")


def test_missing_and_unexpected_keys_are_named(tmp_path, official_T_path):
    state = torch.load(official_T_path, weights_only=True)
    state.pop("module.update_block.gru.convz1.weight_g")
    state["module.extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    write_checkpoint(path, state)
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    msg = str(info.value)
    assert "update_block.gru.convz1.weight_g" in msg and "extra.weight" in msg


def test_shape_mismatch_is_named(tmp_path, official_T_path):
    state = torch.load(official_T_path, weights_only=True)
    state["module.mask.2.bias"] = torch.zeros(10)
    path = tmp_path / "bad.pth"
    write_checkpoint(path, state)
    with pytest.raises(CheckpointError, match=r"mask\.2\.bias"):
        load_model(path)


def test_corrupt_truncated_and_foreign_files(tmp_path, official_T_path):
    data = official_T_path.read_bytes()
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    for path in (trunc, garbage, empty, tmp_path / "missing.pth"):
        with pytest.raises(CheckpointError, match=str(path.name)):
            load_model(path)


def test_checkpoint_with_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refuses|corrupt"):
        load_model(path)


def test_toolkit_checkpoint_round_trip(tmp_path, official_T_path, official_T_io):
    from fakes import save_model

    deq = DEQConfig(f_solver="fixed_point", f_tol=0.0, return_final=True)
    model, _ = load_model(official_T_path, deq=deq)
    path = tmp_path / "own.pth"
    save_model(path, model, meta={"metrics": {"epe": 1.5}})
    again, meta = load_model(path)
    assert again.cfg.to_dict() == model.cfg.to_dict()
    assert meta["variant"] == "T" and meta["metrics"]["epe"] == 1.5 and "toolkit_version" in meta
    i1, i2 = (torch.from_numpy(official_T_io[k]) for k in ("image1", "image2"))
    with torch.no_grad():
        four = SolveOverrides(max_iter=4)
        assert torch.equal(model(i1, i2, solve=four).flow_up, again(i1, i2, solve=four).flow_up)
