"""Multi-tensor DEQ states (e.g. DEQ-Flow's hidden state and coordinates) as one (B, D) solver vector."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from deqflow.errors import InputError


class StatePacker:
    """Packs tensors that share the batch dimension into one (B, D) tensor and back.

    Anderson, Broyden and the residual statistics need a single vector per sample; the packer fixes
    the per-sample shapes once, so `unpack` returns views (no copies) in the original layout. The batch
    size is read from the packed tensor, so one packer serves any batch size.
    """

    def __init__(self, shapes_like: Sequence[Tensor]) -> None:
        if len(shapes_like) == 0:
            raise InputError("StatePacker needs at least one tensor")
        if any(t.dim() < 1 for t in shapes_like):
            raise InputError("every state tensor needs a leading batch dimension")
        if len({t.shape[0] for t in shapes_like}) != 1:
            shapes = [tuple(t.shape) for t in shapes_like]
            raise InputError(f"state tensors must share the batch size, got {shapes}")
        self.shapes = [tuple(t.shape[1:]) for t in shapes_like]
        self.sizes = [int(torch.Size(s).numel()) for s in self.shapes]

    @property
    def dim(self) -> int:
        """Length D of the packed per-sample vector."""
        return sum(self.sizes)

    def pack(self, *tensors: Tensor) -> Tensor:
        if len(tensors) != len(self.shapes):
            raise InputError(f"expected {len(self.shapes)} state tensors, got {len(tensors)}")
        for i, (t, shape) in enumerate(zip(tensors, self.shapes)):
            if tuple(t.shape[1:]) != shape:
                raise InputError(f"state tensor {i} has per-sample shape {tuple(t.shape[1:])}, "
                                 f"expected {shape}")
        return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)

    def unpack(self, z: Tensor) -> tuple[Tensor, ...]:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise InputError(f"packed state must have shape (B, {self.dim}), got {tuple(z.shape)}")
        parts = torch.split(z, self.sizes, dim=1)
        return tuple(p.reshape(z.shape[0], *shape) for p, shape in zip(parts, self.shapes))
