"""Flow for one image pair with the PyTorch model: numpy in, numpy out, padding handled."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deqflow.image_io import pair_to_batch
from deqflow.padding import InputPadder
from training.deq import SolverStats
from training.deq.weight_norm import reset_weight_norm
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


@torch.no_grad()
def flow_trajectory(model: DEQFlow, image1: np.ndarray, image2: np.ndarray, steps: list[int] | tuple[int, ...],
                    *, pad_mode: str = "sintel") -> tuple[dict[int, np.ndarray], list[float]]:
    """Plain fixed-point iteration from the cold start, no early stop: the full-resolution flow after each
    k in `steps`, and the relative residual ||f(z)-z|| / ||f(z)|| of every step up to max(steps).

    One solve serves every k, so "accuracy after k iterations" curves cost one run, not one run per k.
    """
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be positive iteration counts, got {steps}")
    batch1, batch2 = pair_to_batch(image1, image2)
    padder = InputPadder(batch1.shape, mode=pad_mode)
    t1, t2 = (torch.from_numpy(np.ascontiguousarray(b)) for b in padder.pad(batch1, batch2))
    t1, t2 = model.check_inputs(t1, t2)
    if model.cfg.wnorm:
        reset_weight_norm(model.update_block)
    ctx = model.encode(t1, t2)
    net, coords1 = model.initial_state(ctx)
    wanted, flows, residuals = set(steps), {}, []
    for k in range(1, max(steps) + 1):
        new_net, new_coords = model.step(ctx, net, coords1)
        diff = torch.cat([(new_net - net).flatten(), (new_coords - coords1).flatten()]).norm()
        size = torch.cat([new_net.flatten(), new_coords.flatten()]).norm()
        residuals.append(float(diff / size.clamp_min(1e-12)))
        net, coords1 = new_net, new_coords
        if k in wanted:
            up = model.decode(net, coords1 - ctx.coords0)
            flows[k] = padder.unpad(up)[0].permute(1, 2, 0).numpy().astype(np.float32)
    return flows, residuals
