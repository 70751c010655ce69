"""Correlation lookups as exported: what the encoder hands to the update step, and the step's lookup.

Two formulations, same numbers as the model's CorrPyramid (within float rounding, ~1e-5):

- `grid_sample`: the model's own code (one GridSample per pyramid level). TensorRT runs GridSample natively;
  on ONNX Runtime's CPU provider it is slow (a (N*H*W)-batch, 1-channel GridSample per level).
- `gather`: the export's own formulation, built for ONNX Runtime. All (2r+1)^2 window samples of one pixel and
  level share the same fractional offset, so the windowed bilinear lookup is a (2r+2)^2 integer patch,
  interpolated once along x and once along y with two scalar weights. The encoder zero-pads every level by
  2r+2 and packs all levels of one pixel into one row; a step then needs a single GatherElements over
  precomputed flat offsets (base + constant (levels, (2r+2)^2) table) and two lerps. Clamping the patch
  corner into the padding keeps every index valid and gives exactly zero for samples outside the volume
  (zero padding, as grid_sample). Cost is linear in the number of pixels; memory is the padded pyramid
  (a little larger than the plain one; relatively more at small sizes).

Both are written so that shapes are read from tensors (traced as Shape ops): a --dynamic export stays
correct at every size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model.corr import CorrPyramid


def context_names(lookup: str, levels: int) -> list[str]:
    """Names of the correlation tensors the encoder outputs and the step graph takes."""
    return [f"corr_{i}" for i in range(levels)] if lookup == "grid_sample" else ["corr_rows"]


def pack(corr: CorrPyramid, lookup: str) -> list[Tensor]:
    """The encoder-side representation of a correlation pyramid."""
    if lookup == "grid_sample":
        return list(corr.pyramid)
    pad = 2 * corr.radius + 2
    b = corr.pyramid[0].shape[0]
    return [torch.cat([F.pad(v, (pad, pad, pad, pad)).reshape(b, -1) for v in corr.pyramid], dim=1)]


class PackedCorr:
    """Duck-types CorrPyramid for DEQFlow.step: call with coords1 (N,2,H,W) -> (N, L*(2r+1)^2, H, W)."""

    def __init__(self, tensors: list[Tensor], lookup: str, levels: int, radius: int) -> None:
        self.tensors, self.lookup, self.levels, self.radius = list(tensors), lookup, levels, radius
        if lookup == "grid_sample":
            self._pyramid = CorrPyramid.__new__(CorrPyramid)  # reuse the model's lookup on given levels
            self._pyramid.levels, self._pyramid.radius, self._pyramid.lookup = levels, radius, "grid_sample"
            self._pyramid.pyramid = self.tensors

    def __call__(self, coords: Tensor) -> Tensor:
        if self.lookup == "grid_sample":
            return self._pyramid(coords)
        return gather_lookup(self.tensors[0], coords, self.levels, self.radius)


def _stack(values: list) -> Tensor:
    """1-D float tensor from Python ints (eager) or traced 0-d size tensors (export): never a constant."""
    return torch.stack([v if isinstance(v, Tensor) else torch.tensor(v) for v in values]).to(torch.float32)


def gather_lookup(rows: Tensor, coords: Tensor, levels: int, radius: int) -> Tensor:
    """Windowed bilinear lookup in the packed, zero-padded pyramid `rows` (N*H*W, sum of padded level sizes)."""
    n, _, h, w = coords.shape
    b = n * h * w
    r, L = radius, levels
    k, s, pad = 2 * radius + 1, 2 * radius + 2, 2 * radius + 2
    hl, wl = [h], [w]
    for _ in range(L - 1):  # avg_pool2d(2) floors, level by level
        hl.append(hl[-1] // 2)
        wl.append(wl[-1] // 2)
    wp = [x + 2 * pad for x in wl]
    sizes = [(y + 2 * pad) * x for y, x in zip(hl, wp)]
    starts = [0]
    for sz in sizes[:-1]:
        starts.append(starts[-1] + sz)
    # float index arithmetic is exact: every per-row offset is far below 2**24
    wp_t = _stack(wp)
    corner = _stack([st + (pad - r) * (x + 1) for st, x in zip(starts, wp)])  # (pad-r) rows and cols in
    xmax = _stack([x + r for x in wl])
    ymax = _stack([y + r for y in hl])
    scale = torch.tensor([0.5**i for i in range(L)], dtype=torch.float32)
    c = coords.permute(0, 2, 3, 1).reshape(b, 2, 1).float()
    cx, cy = c[:, 0] * scale, c[:, 1] * scale  # (B, L)
    x0, y0 = torch.floor(cx), torch.floor(cy)
    fx, fy = (cx - x0).reshape(b * L, 1, 1), (cy - y0).reshape(b * L, 1, 1)
    lo = torch.tensor(float(-r - 2))  # a corner at or beyond -r-2 / size+r sees only zero padding
    x0 = torch.minimum(torch.maximum(x0, lo), xmax)
    y0 = torch.minimum(torch.maximum(y0, lo), ymax)
    base = (y0 * wp_t + x0 + corner).to(torch.int64)  # (B, L)
    a = torch.arange(s, dtype=torch.float32)
    offsets = (a.reshape(1, s, 1) + a.reshape(1, 1, s) * wp_t.reshape(L, 1, 1)).to(torch.int64)  # [l, dx, dy]
    idx = (base.unsqueeze(2) + offsets.reshape(1, L, s * s)).reshape(b, L * s * s)
    patch = torch.gather(rows, 1, idx).reshape(b * L, s, s)  # patch[., x, y], x first as the model's window
    lo_x = patch[:, :-1, :]
    px = lo_x + fx * (patch[:, 1:, :] - lo_x)  # (B*L, k, s)
    lo_y = px[:, :, :-1]
    out = lo_y + fy * (px[:, :, 1:] - lo_y)  # (B*L, k, k)
    return out.reshape(n, h * w, L * k * k).permute(0, 2, 1).reshape(n, L * k * k, h, w)
