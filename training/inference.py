"""Flow for one image pair with the PyTorch model: numpy in, numpy out, padding handled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deqflow.image_io import pair_to_batch
from deqflow.padding import InputPadder
from training.deq import SolverStats
from training.model.deq_flow import DEQFlow


@dataclass
class PairResult:
    flow: np.ndarray  # (H, W, 2) float32, full resolution, padding removed
    stats: SolverStats
    state: tuple[torch.Tensor, torch.Tensor]  # fixed point (hidden, flow_low) on the padded grid


@torch.no_grad()
def estimate_flow(model: DEQFlow, image1: np.ndarray, image2: np.ndarray, *, iters: int | None = None,
                  pad_mode: str = "sintel", cached_state=None, device: str | torch.device = "cpu") -> PairResult:
    """image1, image2: (H,W,3) uint8 RGB. Pads to a multiple of 8 (replicate), runs, unpads."""
    batch1, batch2 = pair_to_batch(image1, image2)
    padder = InputPadder(batch1.shape, mode=pad_mode)
    t1, t2 = (torch.from_numpy(np.ascontiguousarray(b)).to(device) for b in padder.pad(batch1, batch2))
    out = model(t1, t2, iters=iters, cached_state=cached_state)
    flow = padder.unpad(out.flow_up)[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    return PairResult(flow=flow, stats=out.stats, state=out.state)
