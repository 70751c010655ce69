"""scripts/widen_checkpoint.py: a wider model that computes exactly what its source computes (evaluation and a
training step), whose new channels carry features and get gradients, and a clear refusal to narrow."""

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import save_tiny_checkpoint

from deqflow.solver_spec import SolveOverrides

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("widen_checkpoint", ROOT / "scripts" / "widen_checkpoint.py")
widen_checkpoint = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(widen_checkpoint)


def test_the_wider_model_computes_what_its_source_computes(tmp_path):
    from training.checkpoint import load_model

    src = save_tiny_checkpoint(tmp_path / "tiny.pth", corr_levels=2, corr_radius=2)
    out = tmp_path / "wide.pth"
    widen_checkpoint.main(["--checkpoint", str(src), "--encoder-dims", "24", "32", "48", "--output", str(out)])
    narrow, _ = load_model(src)
    wide, meta = load_model(out)
    assert wide.cfg.encoder_dims == (24, 32, 48) and meta["widened_from"]["encoder_dims"] == [16, 24, 32]
    g = torch.Generator().manual_seed(1)
    i1 = torch.rand(2, 3, 64, 96, generator=g) * 255
    i2 = torch.roll(i1, 2, dims=3)
    with torch.no_grad():
        a, b = (m(i1, i2, solve=SolveOverrides(max_iter=5, tol=0.0)).flow_up for m in (narrow, wide))
    assert torch.equal(a, b)
    narrow.train(), wide.train()
    a, b = (m(i1, i2).flow_predictions[-1] for m in (narrow, wide))
    assert torch.equal(a, b)  # batch-statistics norms too: old channels never read the new ones
    b.abs().mean().backward()
    reads = wide.fnet.layer1[0].conv1.weight
    assert float(reads[:16, 16:].abs().max()) == 0 and float(reads.grad[:16, 16:].abs().max()) > 0
    assert float(wide.fnet.conv1.weight[16:].abs().max()) > 0  # the new channels carry features


def test_narrowing_is_refused(tmp_path):
    src = save_tiny_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(SystemExit, match="at least the source's"):
        widen_checkpoint.main(["--checkpoint", str(src), "--encoder-dims", "8", "24", "32", "--output",
                               str(tmp_path / "w.pth")])
