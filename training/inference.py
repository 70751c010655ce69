"""Accuracy-after-k-iterations curves of the PyTorch model: numpy in, one flow per step count out, padding
handled. (One pair's flow, numpy in and out, is the runtime's path: runtime.FlowEstimator with its torch backend.)"""

from __future__ import annotations

import numpy as np
import torch

from deqflow.image_io import pair_to_batch
from deqflow.padding import InputPadder
from training.deq import fixed_point_iter
from training.model.deq_flow import DEQFlow


def _padded_tensors(image1: np.ndarray, image2: np.ndarray, pad_mode: str,
                    device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor, InputPadder]:
    """(H,W,3) uint8 RGB pair -> padded float (1,3,Hp,Wp) tensors and the padder that undoes it."""
    batch1, batch2 = pair_to_batch(image1, image2)
    padder = InputPadder(batch1.shape, mode=pad_mode)
    t1, t2 = (torch.from_numpy(np.ascontiguousarray(b)).to(device) for b in padder.pad(batch1, batch2))
    return t1, t2, padder


@torch.no_grad()
def flow_trajectory(model: DEQFlow, image1: np.ndarray, image2: np.ndarray, steps: list[int] | tuple[int, ...],
                    *, pad_mode: str = "sintel") -> tuple[dict[int, np.ndarray], list[float]]:
    """Plain fixed-point iteration from the cold start, no early stop: the full-resolution flow after each
    k in `steps`, and the relative residual ||f(z)-z|| / (||f(z)|| + REL_EPS) of every step up to max(steps).

    One solve serves every k (the solver's snapshots at `indexing`), so "accuracy after k iterations" curves
    cost one run, not one run per k.
    """
    if not steps or min(steps) < 1:
        raise ValueError(f"steps must be positive iteration counts, got {steps}")
    t1, t2, padder = _padded_tensors(image1, image2, pad_mode)
    ctx, packer, f, z0 = model.fixed_point_problem(t1, t2)
    wanted = sorted(set(steps))
    solved = fixed_point_iter(f, z0, max_iter=wanted[-1], tol=0.0, indexing=wanted, return_final=True)
    flows = {}
    for k, z in zip(wanted, solved.trajectory):
        net, coords1 = packer.unpack(z)
        up = model.decode(net, coords1 - ctx.coords0)
        flows[k] = padder.unpad(up)[0].permute(1, 2, 0).numpy().astype(np.float32)
    return flows, solved.stats.rel_trace[0].tolist()
