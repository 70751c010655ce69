"""RAFT-style residual encoders at 1/8 resolution (feature net: instance norm; context net: batch norm).

Parameter names follow the official checkpoints (`conv1`, `norm1`, `layer{1,2,3}.{0,1}`, `downsample.{0,1}`,
`conv2`) so official weights load without renaming.

Memory saving (`Encoder.memory_saving`): the encoders run at 1/2 to 1/8 of the image size and hold most of
what autograd keeps for one DEQ training step (the DEQ solve itself keeps nothing). With the option on, the
stem and every residual block are activation-checkpointed: only each segment's input is kept, and the
segment's forward is recomputed during backward. Forward values are unchanged (same ops, same order) and
so are the gradients; the cost is one more encoder forward per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)  # affine=False: no parameters, as in the official fnet
    if kind == "group":
        return nn.GroupNorm(num_groups=max(1, channels // 8), num_channels=channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


class ResidualBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.norm1 = _norm(norm, planes)
        self.norm2 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1:
            self.downsample = None
        else:
            # Official checkpoints also carry this norm as `norm3` (the same module, registered twice).
            self.norm3 = _norm(norm, planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class Encoder(nn.Module):
    """7x7/2 stem, three residual stages (official widths 64, 96/2, 128/2), 1x1 projection: 1/8 size."""

    def __init__(self, output_dim: int, norm: str, dropout: float = 0.0,
                 dims: tuple[int, int, int] = (64, 96, 128)) -> None:
        super().__init__()
        d1, d2, d3 = dims
        self.norm1 = _norm(norm, d1)
        self.conv1 = nn.Conv2d(3, d1, 7, stride=2, padding=3)
        self.relu1 = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(ResidualBlock(d1, d1, norm), ResidualBlock(d1, d1, norm))
        self.layer2 = nn.Sequential(ResidualBlock(d1, d2, norm, 2), ResidualBlock(d2, d2, norm))
        self.layer3 = nn.Sequential(ResidualBlock(d2, d3, norm, 2), ResidualBlock(d3, d3, norm))
        self.conv2 = nn.Conv2d(d3, output_dim, 1)
        self.dropout = nn.Dropout2d(p=dropout) if dropout > 0 else None
        self.memory_saving = False  # activation checkpointing of the stem and residual blocks (module docstring)
        self.recomputed_segments = 0  # segments re-run by backward: proof that the checkpointed path ran
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu1(self.norm1(self.conv1(x)))

    def segments(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The stem and the six residual blocks, in order: the units that memory saving checkpoints."""
        return [self._stem, *self.layer1, *self.layer2, *self.layer3]

    def _checkpointing(self) -> bool:
        exporting = torch.jit.is_tracing() or torch.compiler.is_exporting()
        return self.memory_saving and torch.is_grad_enabled() and not exporting

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._checkpointing():
            for segment in self.segments():
                x = checkpoint(segment, x, use_reentrant=False, context_fn=self._checkpoint_contexts)
        else:
            x = self.layer3(self.layer2(self.layer1(self._stem(x))))
        x = self.conv2(x)
        if self.training and self.dropout is not None:
            x = self.dropout(x)
        return x

    def _checkpoint_contexts(self):
        return nullcontext(), self._recomputing()

    @contextmanager
    def _recomputing(self) -> Iterator[None]:
        """Around a segment's recomputation in backward. A BatchNorm in training mode would count the batch a
        second time in its running statistics, so they are restored afterwards: a step with memory saving
        leaves the model in the same state as one without."""
        self.recomputed_segments += 1
        buffers = [b for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]
        saved = [b.clone() for b in buffers]
        try:
            yield
        finally:
            with torch.no_grad():
                for buf, old in zip(buffers, saved):
                    buf.copy_(old)
