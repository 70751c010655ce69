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

- `local`: no volume at all (training.model.local_corr): the encoder hands over fmap1 / sqrt(C) (N, H*W, C) and
  the packed, zero-padded pyramid of fmap2 (N, positions, C); a step gathers each patch position's feature vector
  and dots it with fmap1, then the same two lerps. Memory grows with the pixel count, not its square. Both
  context tensors have the batch first, so a host loop selects the samples still solving by their first axis.

All are written so that shapes are read from tensors (traced as Shape ops): a --dynamic export stays
correct at every size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from training.model.corr import CorrPyramid
from training.model.local_corr import LocalCorr, patch_index, window_lerp

LOCAL_CONTEXT = ["corr_fmap1", "corr_fmap2"]


def context_names(lookup: str, levels: int) -> list[str]:
    """Names of the correlation tensors the encoder outputs and the step graph takes."""
    if lookup == "local":
        return list(LOCAL_CONTEXT)
    return [f"corr_{i}" for i in range(levels)] if lookup == "grid_sample" else ["corr_rows"]


def pack(corr: CorrPyramid | LocalCorr, lookup: str) -> list[Tensor]:
    """The encoder-side representation of a correlation pyramid (or of the on-demand correlation's inputs)."""
    if lookup == "local":
        return [corr.f1, corr.f2]
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
        elif lookup == "local":
            self._local = LocalCorr.from_context(self.tensors[0], self.tensors[1], levels, radius)

    def __call__(self, coords: Tensor) -> Tensor:
        if self.lookup == "grid_sample":
            return self._pyramid(coords)
        if self.lookup == "local":
            return self._local(coords)
        return gather_lookup(self.tensors[0], coords, self.levels, self.radius)


def gather_lookup(rows: Tensor, coords: Tensor, levels: int, radius: int) -> Tensor:
    """Windowed bilinear lookup in the packed, zero-padded pyramid `rows` (N*H*W, sum of padded level sizes)."""
    idx, fx, fy = patch_index(coords, levels, radius)
    s = 2 * radius + 2
    patch = torch.gather(rows, 1, idx.reshape(idx.shape[0], levels * s * s)).reshape(-1, s, s)
    return window_lerp(patch, fx, fy, coords.shape, levels, radius)  # patch[., x, y]: x first as the model
