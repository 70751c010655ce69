"""All-pairs correlation pyramid and its windowed bilinear lookup.

The volume is computed in float32 even under autocast (fp16 cannot hold pixel coordinates or the
correlation sums precisely); lookups use align_corners=True pixel coordinates and zero padding, as the
official code. Two lookup implementations give identical numbers: `grid_sample` (one GridSample per
level) and `gather` (explicit bilinear weights and index gathers; export-friendly, no GridSample op). The third
mode, `local` (training.model.local_corr), gives the same numbers without building the volume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ALL_PAIRS_LOOKUPS = ("grid_sample", "gather")
LOOKUPS = (*ALL_PAIRS_LOOKUPS, "local")
"""grid_sample and gather look up in the all-pairs volume; local computes each lookup on demand."""


def accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (gradient checks); everything else (fp16, bf16, fp32) computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def all_pairs_correlation(fmap1: torch.Tensor, fmap2: torch.Tensor) -> torch.Tensor:
    """(N,C,H,W) x (N,C,H,W) -> (N*H*W, 1, H, W): <f1(p), f2(q)> / sqrt(C) for every pair p, q."""
    n, c, h, w = fmap1.shape
    dtype = accumulation_dtype(fmap1)
    f1 = fmap1.to(dtype).reshape(n, c, h * w)
    f2 = fmap2.to(dtype).reshape(n, c, h * w)
    corr = torch.matmul(f1.transpose(1, 2), f2) / (c**0.5)
    return corr.reshape(n * h * w, 1, h, w)


def build_pyramid(corr: torch.Tensor, levels: int) -> list[torch.Tensor]:
    pyramid = [corr]
    for _ in range(levels - 1):
        corr = F.avg_pool2d(corr, 2, stride=2)
        pyramid.append(corr)
    return pyramid


def window_offsets(radius: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(2r+1, 2r+1, 2) offsets (dx, dy); the first window axis moves dx, matching the official layout."""
    d = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    # Official: delta = stack(meshgrid(dy, dx), -1) added to (x, y) coordinates, i.e. the value
    # added to x varies along the first window axis.
    ox, oy = torch.meshgrid(d, d, indexing="ij")
    return torch.stack([ox, oy], dim=-1)


def _sample_grid_sample(volume: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """volume (B,1,h,w), xy (B,k,k,2) pixel coords -> (B,1,k,k), bilinear, zeros outside."""
    h, w = volume.shape[-2:]
    gx = 2.0 * xy[..., 0] / (w - 1) - 1.0
    gy = 2.0 * xy[..., 1] / (h - 1) - 1.0
    return F.grid_sample(volume, torch.stack([gx, gy], dim=-1), mode="bilinear",
                         padding_mode="zeros", align_corners=True)


def _sample_gather(volume: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Same numbers as `_sample_grid_sample`, written with floor, gathers and bilinear weights."""
    b, _, h, w = volume.shape
    k1, k2 = xy.shape[1:3]
    x, y = xy[..., 0].reshape(b, -1), xy[..., 1].reshape(b, -1)
    x0, y0 = torch.floor(x), torch.floor(y)
    wx1, wy1 = x - x0, y - y0
    wx0, wy0 = 1.0 - wx1, 1.0 - wy1
    flat = volume.reshape(b, h * w)
    out = torch.zeros_like(x)
    for cx, cy, wgt in ((x0, y0, wx0 * wy0), (x0 + 1, y0, wx1 * wy0), (x0, y0 + 1, wx0 * wy1),
                        (x0 + 1, y0 + 1, wx1 * wy1)):
        inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
        idx = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long()
        out = out + torch.gather(flat, 1, idx) * wgt * inside.to(wgt.dtype)
    return out.reshape(b, 1, k1, k2)


class CorrPyramid:
    """Correlation pyramid of one image pair; call it with coords1 (N,2,H,W) to get (N, L*(2r+1)^2, H, W)."""

    def __init__(self, fmap1: torch.Tensor, fmap2: torch.Tensor, levels: int = 4, radius: int = 4,
                 lookup: str = "grid_sample") -> None:
        if lookup not in ALL_PAIRS_LOOKUPS:
            raise ValueError(f"unknown all-pairs correlation lookup {lookup!r}; choose one of {ALL_PAIRS_LOOKUPS}")
        self.levels, self.radius, self.lookup = levels, radius, lookup
        self.batch = fmap1.shape[0]
        self.pyramid = build_pyramid(all_pairs_correlation(fmap1, fmap2), levels)

    def select(self, rows: torch.Tensor) -> CorrPyramid:
        """The pyramid of the pairs `rows` only (a solver stepping just the pairs still solving)."""
        out = object.__new__(CorrPyramid)
        out.levels, out.radius, out.lookup, out.batch = self.levels, self.radius, self.lookup, len(rows)
        out.pyramid = [v.view(self.batch, -1, *v.shape[1:])[rows].reshape(-1, *v.shape[1:]) for v in self.pyramid]
        return out

    def __call__(self, coords: torch.Tensor) -> torch.Tensor:
        n, _, h, w = coords.shape
        r = self.radius
        k = 2 * r + 1
        dtype = self.pyramid[0].dtype
        centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2).to(dtype)
        offsets = window_offsets(r, coords.device, dtype).reshape(1, k, k, 2)
        sample = _sample_grid_sample if self.lookup == "grid_sample" else _sample_gather
        out = []
        for i, volume in enumerate(self.pyramid):
            xy = centre / (2**i) + offsets
            out.append(sample(volume, xy).reshape(n, h, w, k * k))
        return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()
