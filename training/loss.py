"""Fixed-point-correction loss: every sampled DEQ state is decoded and supervised, later states weigh more;
optionally a drift penalty on any state that is worse than the state before it."""

from __future__ import annotations

import torch

MAX_FLOW = 400.0  # ground truth larger than this (px) is ignored, as in the official code


def fixed_point_correction_loss(
    flow_predictions: list[torch.Tensor], flow_gt: torch.Tensor, valid: torch.Tensor,
    gamma: float = 0.8, max_flow: float = MAX_FLOW, drift_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_i gamma^(n-i-1) * l_i, l_i = mean(valid * |flow_i - gt|_1), over the n sampled states.

    drift_weight > 0 adds drift_weight * sum_i relu(l_i - l_{i-1}) with l_{i-1} held constant: a state
    later on the trajectory may not be worse than an earlier one, and only the later state is pushed (the
    fixed point must not drift away from the early iterates' answer; the early ones are not made worse).

    flow_predictions: list of (N,2,H,W); flow_gt (N,2,H,W); valid (N,H,W) (>= 0.5 counts as valid).
    Returns the loss and metrics of the last prediction (EPE and 1/3/5 px over valid pixels).
    """
    n = len(flow_predictions)
    mag = torch.sqrt(torch.sum(flow_gt**2, dim=1))
    mask = ((valid >= 0.5) & (mag < max_flow)).unsqueeze(1).to(flow_gt.dtype)
    loss = flow_gt.new_zeros(())
    previous = None
    drift = flow_gt.new_zeros(())
    for i, pred in enumerate(flow_predictions):
        term = (mask * (pred - flow_gt).abs()).mean()
        loss = loss + gamma ** (n - i - 1) * term
        if previous is not None:
            drift = drift + torch.relu(term - previous)
        previous = term.detach()
    if drift_weight > 0:
        loss = loss + drift_weight * drift
    with torch.no_grad():
        epe = torch.sqrt(torch.sum((flow_predictions[-1] - flow_gt) ** 2, dim=1))
        sel = epe[mask[:, 0] > 0]
        if sel.numel() == 0:
            metrics = {"epe": 0.0, "1px": 0.0, "3px": 0.0, "5px": 0.0}
        else:
            metrics = {"epe": sel.mean().item(), "1px": (sel < 1).float().mean().item(),
                       "3px": (sel < 3).float().mean().item(), "5px": (sel < 5).float().mean().item()}
        metrics["drift"] = float(drift)
    return loss, metrics
