"""The real photographed pair every part of the toolkit uses: Middlebury 2014 'motorcycle', shipped with
scikit-image (no download), as an optical-flow pair.

A rectified stereo pair is an optical-flow pair with flow (-d, 0) for disparity d; pixels without a finite
disparity are invalid. `motorcycle` gives the full-resolution pair (the demo, the model card); `real_pair`
a resized crop at any size with the flow scaled to match (tests, compare, bench, the export checks).
numpy + OpenCV + scikit-image only. scikit-image comes with the `train` extra: a runtime-only install runs on
the user's own images (or generated ones) and says which extra brings this pair.
"""

from __future__ import annotations

import numpy as np

from deqflow.errors import InputError
from deqflow.extras import require

REAL_PAIR_VIEWS = ((1.0, (0.5, 0.5)), (2.0, (0.4, 0.45)), (1.5, (0.8, 0.2)), (3.0, (0.5, 0.6)))
"""(zoom, crop offset) of the distinct views `real_pairs` takes."""


def motorcycle() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(left, right) uint8 RGB (H,W,3), flow (H,W,2) float32 (0 where invalid) and valid (H,W) float32."""
    data = require("skimage.data", "the Middlebury motorcycle pair (use your own images or --inputs random "
                                   "without it)")

    left, right, disp = data.stereo_motorcycle()
    valid = np.isfinite(disp)
    flow = np.zeros((*disp.shape, 2), np.float32)
    flow[..., 0] = -np.where(valid, disp, 0)
    return left, right, flow, valid.astype(np.float32)


def real_pair(size: tuple[int, int] = (128, 160), zoom: float = 1.0, offset: tuple[float, float] = (0.5, 0.5)):
    """The pair at `size` (H,W): resized (INTER_AREA when shrinking) to cover `size` x `zoom`, then cropped at
    `offset` (fractions of the slack). Returns (image1, image2, flow (H,W,2), valid (H,W)), the flow scaled
    with the images (nearest-neighbour, so invalid pixels stay invalid)."""
    import cv2

    left, right, flow, valid = motorcycle()
    h, w = int(size[0]), int(size[1])
    if h < 8 or w < 8:
        raise InputError(f"real_pair: size {size} is too small")
    scale = max(h / left.shape[0], w / left.shape[1]) * float(zoom)
    sh, sw = max(h, round(left.shape[0] * scale)), max(w, round(left.shape[1] * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    l2 = cv2.resize(left, (sw, sh), interpolation=interp)
    r2 = cv2.resize(right, (sw, sh), interpolation=interp)
    fx = cv2.resize(flow[..., 0], (sw, sh), interpolation=cv2.INTER_NEAREST)
    v = cv2.resize(valid.astype(np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST) > 0
    y0, x0 = round((sh - h) * offset[0]), round((sw - w) * offset[1])
    rows, cols = slice(y0, y0 + h), slice(x0, x0 + w)
    out_flow = np.zeros((h, w, 2), np.float32)
    out_flow[..., 0] = np.where(v[rows, cols], fx[rows, cols] * (sw / left.shape[1]), 0)
    return (np.ascontiguousarray(l2[rows, cols]), np.ascontiguousarray(r2[rows, cols]), out_flow,
            v[rows, cols].astype(np.float32))


def real_pairs(size: tuple[int, int] = (128, 160), count: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` distinct real image pairs at `size`: different zooms and crops of the motorcycle pair."""
    if not 1 <= count <= len(REAL_PAIR_VIEWS):
        raise InputError(f"real_pairs: count must be 1..{len(REAL_PAIR_VIEWS)}, got {count}")
    return [real_pair(size, zoom, off)[:2] for zoom, off in REAL_PAIR_VIEWS[:count]]
