"""Global motion aggregation (GMA, Jiang et al. 2021), the official `--gma` option.

`Attention` computes a softmax self-similarity of the context features once per image pair;
`Aggregate` mixes motion features with it inside every update step (residual, learned scale gamma).
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, *, dim: int, max_pos_size: int = 100, heads: int = 4, dim_head: int = 128) -> None:
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_qk = nn.Conv2d(dim, 2 * heads * dim_head, 1, bias=False)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """(N,C,H,W) -> attention weights (N, heads, H*W, H*W)."""
        n, _, h, w = fmap.shape
        q, k = self.to_qk(fmap).chunk(2, dim=1)
        q = q.reshape(n, self.heads, -1, h * w).transpose(-1, -2) * self.scale  # (N,heads,HW,d)
        k = k.reshape(n, self.heads, -1, h * w)  # (N,heads,d,HW)
        return torch.softmax(q @ k, dim=-1)


class Aggregate(nn.Module):
    def __init__(self, dim: int, heads: int = 4, dim_head: int = 128) -> None:
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_v = nn.Conv2d(dim, inner, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.project = nn.Conv2d(inner, dim, 1, bias=False) if dim != inner else None

    def forward(self, attn: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
        n, _, h, w = fmap.shape
        v = self.to_v(fmap).reshape(n, self.heads, -1, h * w).transpose(-1, -2)  # (N,heads,HW,d)
        out = (attn @ v).transpose(-1, -2).reshape(n, -1, h, w)
        if self.project is not None:
            out = self.project(out)
        return fmap + self.gamma * out
