"""Fixed-point-correction loss: every sampled DEQ state is decoded and supervised, later states weigh more."""

from __future__ import annotations

import torch

MAX_FLOW = 400.0  # ground truth larger than this (px) is ignored, as in the official code


def fixed_point_correction_loss(
    flow_predictions: list[torch.Tensor], flow_gt: torch.Tensor, valid: torch.Tensor,
    gamma: float = 0.8, max_flow: float = MAX_FLOW,
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_i gamma^(n-i-1) * mean(valid * |flow_i - gt|_1) over the n sampled states.

    flow_predictions: list of (N,2,H,W); flow_gt (N,2,H,W); valid (N,H,W) (>= 0.5 counts as valid).
    Returns the loss and metrics of the last prediction (EPE and 1/3/5 px over valid pixels).
    """
    n = len(flow_predictions)
    mag = torch.sqrt(torch.sum(flow_gt**2, dim=1))
    mask = ((valid >= 0.5) & (mag < max_flow)).unsqueeze(1).to(flow_gt.dtype)
    loss = flow_gt.new_zeros(())
    for i, pred in enumerate(flow_predictions):
        weight = gamma ** (n - i - 1)
        loss = loss + weight * (mask * (pred - flow_gt).abs()).mean()
    with torch.no_grad():
        epe = torch.sqrt(torch.sum((flow_predictions[-1] - flow_gt) ** 2, dim=1))
        sel = epe[mask[:, 0] > 0]
        if sel.numel() == 0:
            metrics = {"epe": 0.0, "1px": 0.0, "3px": 0.0, "5px": 0.0}
        else:
            metrics = {"epe": sel.mean().item(), "1px": (sel < 1).float().mean().item(),
                       "3px": (sel < 3).float().mean().item(), "5px": (sel < 5).float().mean().item()}
    return loss, metrics
