"""scripts/average_checkpoints.py: the mean of snapshot weights, loadable, and a clear error for snapshots of
different architectures."""

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("average_checkpoints", ROOT / "scripts" / "average_checkpoints.py")
average_checkpoints = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(average_checkpoints)


def test_average_is_the_mean_of_the_weights(tmp_path):
    from training.checkpoint import load_model

    a, b = save_tiny_checkpoint(tmp_path / "a.pth", seed=0), save_tiny_checkpoint(tmp_path / "b.pth", seed=1)
    out = tmp_path / "avg.pth"
    assert average_checkpoints.main([str(a), str(b), "--output", str(out)]) == 0
    ma, mb, mo = (load_model(p)[0].state_dict() for p in (a, b, out))
    floats = [k for k, v in ma.items() if v.is_floating_point()]
    assert floats and not torch.equal(ma[floats[0]], mb[floats[0]])
    for k in floats:
        torch.testing.assert_close(mo[k], (ma[k] + mb[k]) / 2, rtol=0, atol=1e-6)
    assert load_model(out)[1]["averaged_from"] == [str(a), str(b)]


def test_different_architectures_are_refused(tmp_path):
    from deqflow.errors import CheckpointError

    a = save_tiny_checkpoint(tmp_path / "a.pth")
    b = save_tiny_checkpoint(tmp_path / "b.pth", encoder_dims=(16, 24, 40))
    with pytest.raises(CheckpointError, match="does not have the same weights"):
        average_checkpoints.average([str(a), str(b)])


def test_weighted_mean_interpolates(tmp_path):
    from training.checkpoint import load_model

    a, b = save_tiny_checkpoint(tmp_path / "a.pth", seed=0), save_tiny_checkpoint(tmp_path / "b.pth", seed=1)
    out = tmp_path / "wise.pth"
    # weights 1 and 3 are normalised to 0.25 / 0.75
    assert average_checkpoints.main([str(a), str(b), "--weights", "1", "3", "--output", str(out)]) == 0
    ma, mb, mo = (load_model(p)[0].state_dict() for p in (a, b, out))
    for k, v in ma.items():
        if v.is_floating_point():
            torch.testing.assert_close(mo[k], 0.25 * ma[k] + 0.75 * mb[k], rtol=0, atol=1e-6)
    assert load_model(out)[1]["averaging_weights"] == [0.25, 0.75]


@pytest.mark.parametrize("weights", [["1"], ["1", "-1"], ["0", "0"]])
def test_bad_weights_are_refused(tmp_path, capsys, weights):
    a, b = save_tiny_checkpoint(tmp_path / "a.pth", seed=0), save_tiny_checkpoint(tmp_path / "b.pth", seed=1)
    with pytest.raises(SystemExit) as exc:
        average_checkpoints.main([str(a), str(b), "--weights", *weights, "--output", str(tmp_path / "o.pth")])
    assert exc.value.code == 2
    assert "--weights needs 2 non-negative numbers" in capsys.readouterr().err
    assert not (tmp_path / "o.pth").exists()
