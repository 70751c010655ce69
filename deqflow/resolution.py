"""Reduced-resolution inference: run the model on a smaller copy of the pair and bring the flow back.

For users who prefer speed to accuracy (the all-pairs correlation grows with the square of the pixel count, so
halving each side makes it 16x smaller). The pair is shrunk with area interpolation (OpenCV INTER_AREA: no
aliasing), each side rounded to a multiple of the feature stride (8) so the model runs at exactly that size with
no padding; the flow comes back bilinearly to the input size with each vector component multiplied by its own
axis' factor (u by W_in / W_small, v by H_in / H_small): the rounding makes the two factors differ slightly, and
one common factor would bend every vector. The accuracy cost on real pairs is in docs/reduced_resolution.json
(scripts/bench_reduced_resolution.py). numpy + OpenCV only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from deqflow.errors import InputError
from deqflow.padding import FEATURE_STRIDE


@dataclass(frozen=True)
class Resolution:
    """How far to shrink a pair before inference: `scale` (0 < scale <= 1, each side) or `max_side` (the longer
    side at most this many pixels), never both; neither means full size. A pair already within the limit (or
    scale 1) is not resized at all, so the flow is the full-size flow exactly."""

    scale: float | None = None
    max_side: int | None = None

    def __post_init__(self) -> None:
        if self.scale is not None and self.max_side is not None:
            raise InputError("give --scale or --max-side, not both")
        if self.scale is not None and not (np.isfinite(self.scale) and 0 < self.scale <= 1):
            raise InputError(f"--scale must be in (0, 1], got {self.scale}")
        if self.max_side is not None and self.max_side < FEATURE_STRIDE:
            raise InputError(f"--max-side must be at least {FEATURE_STRIDE}, got {self.max_side}")

    @property
    def active(self) -> bool:
        return self.scale is not None or self.max_side is not None

    def factor(self, size: tuple[int, int]) -> float:
        """The requested shrink factor for an (H, W) pair (1: no resize)."""
        if self.scale is not None:
            return float(self.scale)
        if self.max_side is not None:
            return min(1.0, self.max_side / max(size))
        return 1.0

    def model_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) the model runs at for an (H, W) input: the input itself when nothing is shrunk, else each side
        times the factor, rounded to the nearest multiple of 8 (at least 8; never above --max-side)."""
        h, w = int(size[0]), int(size[1])
        f = self.factor((h, w))
        if f >= 1:
            return h, w
        cap = self.max_side if self.max_side is not None else max(h, w)
        limit = max(FEATURE_STRIDE, cap // FEATURE_STRIDE * FEATURE_STRIDE)
        small = tuple(min(limit, max(FEATURE_STRIDE, round(s * f / FEATURE_STRIDE) * FEATURE_STRIDE))
                      for s in (h, w))
        return (h, w) if small == (h, w) else small

    def describe(self) -> dict | None:
        """The option as recorded in summaries and manifests (None when inactive)."""
        if not self.active:
            return None
        return {"scale": self.scale} if self.scale is not None else {"max_side": self.max_side}

    def flag(self) -> str:
        """The option in command-line words, for messages."""
        return f"--scale {self.scale:g}" if self.scale is not None else f"--max-side {self.max_side}"


def downscale_pair(image1: np.ndarray, image2: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Both (H,W,C) images shrunk to `size` (H, W) with area interpolation; unchanged when already that size."""
    if tuple(image1.shape[:2]) == tuple(size):
        return image1, image2
    h, w = int(size[0]), int(size[1])
    return tuple(np.ascontiguousarray(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
                 for img in (image1, image2))


def upsample_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h,w,2) flow computed at a reduced size -> (H,W,2) float32 at `size`: bilinear (pixel centres aligned,
    as the images were shrunk) with u scaled by W/w and v by H/h, the exact per-axis factors."""
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"flow must have shape (H,W,2), got {flow.shape}")
    (h, w), (big_h, big_w) = flow.shape[:2], (int(size[0]), int(size[1]))
    if (h, w) == (big_h, big_w):
        return flow
    out = cv2.resize(flow, (big_w, big_h), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= big_w / w
    out[..., 1] *= big_h / h
    return np.ascontiguousarray(out, dtype=np.float32)
