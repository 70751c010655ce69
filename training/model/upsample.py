"""Convex 8x upsampling of the 1/8-resolution flow (RAFT), written without F.unfold.

The 3x3 neighbourhood is gathered with a zero pad and nine slices instead of `unfold` (im2col): same
numbers, and it exports to plain Pad/Slice/Concat ONNX nodes that TensorRT accepts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FACTOR = 8


def neighbourhood3x3(x: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) -> (N,C,9,H,W): the zero-padded 3x3 neighbours in row-major order (as F.unfold)."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1))
    return torch.stack([p[..., dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], dim=2)


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """flow (N,2,H,W), mask (N,9*64,H,W) logits -> (N,2,8H,8W): per-pixel softmax-weighted neighbours."""
    n, _, h, w = flow.shape
    weights = torch.softmax(mask.reshape(n, 1, 9, FACTOR, FACTOR, h, w), dim=2)
    neigh = neighbourhood3x3(FACTOR * flow).reshape(n, 2, 9, 1, 1, h, w)
    up = torch.sum(weights * neigh, dim=2)  # (N,2,8,8,H,W)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, FACTOR * h, FACTOR * w)
