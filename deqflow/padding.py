"""Padding to the multiple of 8 the network needs, and the size limits of the model input.

`InputPadder` follows the official DEQ-Flow/RAFT evaluation: replicate padding, 'sintel' mode centres
it (extra pixel right/bottom), 'kitti' mode puts all height padding at the bottom. It works on numpy
arrays and torch tensors alike; torch is imported only when a tensor is passed, so this module stays
usable on machines without PyTorch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from deqflow.errors import InputError

FEATURE_STRIDE = 8  # the encoders output features at 1/8 resolution
PAD_MODES = ("sintel", "kitti")


def _is_torch_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # if torch was never imported, x cannot be a tensor
    return torch is not None and isinstance(x, torch.Tensor)


class InputPadder:
    """Pads (..., H, W) arrays/tensors so H and W are multiples of `divisor`, and crops results back.

    `shape` is the shape of the input (only the last two entries are used).
    """

    def __init__(self, shape: Sequence[int], mode: str = "sintel", divisor: int = 8):
        if mode not in PAD_MODES:
            raise InputError(f"InputPadder: mode must be one of {PAD_MODES}, got {mode!r}")
        if isinstance(divisor, bool) or not isinstance(divisor, int | np.integer) or divisor < 1:
            raise InputError(f"InputPadder: divisor must be a positive integer, got {divisor!r}")
        shape = tuple(shape)
        if len(shape) < 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in shape[-2:]):
            raise InputError(f"InputPadder: shape must end in positive (H, W), got {shape}")
        self.height, self.width = int(shape[-2]), int(shape[-1])
        self.mode = mode
        pad_h = (divisor - self.height % divisor) % divisor
        pad_w = (divisor - self.width % divisor) % divisor
        left, right = pad_w // 2, pad_w - pad_w // 2
        top, bottom = (pad_h // 2, pad_h - pad_h // 2) if mode == "sintel" else (0, pad_h)
        self._padding = (left, right, top, bottom)

    @property
    def padding(self) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) in pixels."""
        return self._padding

    @property
    def padded_size(self) -> tuple[int, int]:
        """(H, W) after padding."""
        left, right, top, bottom = self._padding
        return self.height + top + bottom, self.width + left + right

    def _check(self, x: Any, expected: tuple[int, int], what: str) -> None:
        shape = tuple(x.shape)
        if len(shape) < 2 or shape[-2:] != expected:
            raise InputError(f"InputPadder.{what}: expected an array ending in (H, W) = {expected}, "
                             f"got shape {shape} (arrays are channels-first: (N,C,H,W) or (C,H,W))")

    def pad(self, *arrays: Any) -> list[Any]:
        """Replicate-pad each numpy array or torch tensor of shape (..., H, W)."""
        left, right, top, bottom = self._padding
        out = []
        for x in arrays:
            self._check(x, (self.height, self.width), "pad")
            if _is_torch_tensor(x):
                import torch.nn.functional as F

                # replicate padding of the last two dims needs a 3-D/4-D tensor: fold the leading dims
                folded = x.reshape(1, -1, self.height, self.width)
                padded = F.pad(folded, [left, right, top, bottom], mode="replicate")
                out.append(padded.reshape(*x.shape[:-2], *self.padded_size))
            else:
                x = np.asarray(x)
                widths = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
                out.append(np.pad(x, widths, mode="edge"))
        return out

    def unpad(self, x: Any) -> Any:
        """Crop a padded (..., H', W') array or tensor (e.g. the flow) back to the input size."""
        self._check(x, self.padded_size, "unpad")
        left, _, top, _ = self._padding
        return x[..., top : top + self.height, left : left + self.width]


def check_divisible(h: int, w: int, divisor: int = 8) -> None:
    """InputError unless H and W are multiples of `divisor`."""
    if h % divisor or w % divisor:
        raise InputError(f"image size {h}x{w} is not a multiple of {divisor}; pad it with "
                         "deqflow.padding.InputPadder (and unpad the flow afterwards)")


def min_size_for_levels(levels: int = 4) -> int:
    """Smallest H (and W) for which the coarsest correlation level is at least 2 pixels.

    The pyramid levels have sizes floor(H/8 / 2**i), i < levels (2x2 average pooling with floor).
    At size 1 the align_corners normalisation 2x/(size-1) - 1 divides by zero and the model returns
    NaN, so floor(H/8 / 2**(levels-1)) >= 2, i.e. H >= 8 * 2**levels (128 for 4 levels).
    """
    if levels < 1:
        raise InputError(f"the correlation pyramid needs at least 1 level, got {levels}")
    return FEATURE_STRIDE * 2**levels


def check_model_input_size(h: int, w: int, levels: int = 4, divisor: int = 8) -> None:
    """InputError unless an (already padded) H x W input is large enough and divisible by `divisor`."""
    if h < 1 or w < 1:
        raise InputError(f"image size {h}x{w} is empty")
    minimum = min_size_for_levels(levels)
    if h < minimum or w < minimum:
        raise InputError(
            f"image size {h}x{w} is too small for DEQ-Flow with {levels} correlation levels: H and W "
            f"must be at least {minimum} (below that the coarsest correlation level is 1 pixel wide and "
            f"the model returns NaN). Upscale the images (and divide the resulting flow by the scale "
            f"factor) or pad them to at least {minimum}x{minimum}.")
    check_divisible(h, w, divisor)
