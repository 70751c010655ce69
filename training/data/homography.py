"""Camera motion as a full homography (perspective, not only affine) and smooth non-rigid displacement
fields, both as dense maps from frame-1 pixels to frame-2 positions.

A homography is drawn in the four-corner form: the frame's corners move by a similarity (rotation, zoom,
translation) plus independent per-corner offsets (the perspective part), and it is shrunk towards the
identity until no pixel of the frame moves more than the cap. Shrinking the corner targets keeps the map a
true homography, so the flow of a static scene seen by a moving camera stays exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from deqflow.errors import InputError
from training.data.textures import value_noise

_SHRINK_TRIES = 12


@dataclass(frozen=True)
class HomographyConfig:
    """Camera motion options. Angles in degrees; perspective is a fraction of min(H, W)."""

    rotation_std: float = 2.0
    log2_zoom_range: float = 0.1
    perspective: float = 0.06  # per-corner offset up to this fraction of the frame's smaller side

    def __post_init__(self) -> None:
        if min(self.rotation_std, self.log2_zoom_range, self.perspective) < 0:
            raise InputError(f"homography options must be >= 0, got {self}")


def apply_homography(h: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Map pixel coordinates by the 3x3 homography h -> (..., 2) float32 positions."""
    den = h[2, 0] * xs + h[2, 1] * ys + h[2, 2]
    x = (h[0, 0] * xs + h[0, 1] * ys + h[0, 2]) / den
    y = (h[1, 0] * xs + h[1, 1] * ys + h[1, 2]) / den
    return np.stack([x, y], axis=-1).astype(np.float32)


def _corner_targets(rng: np.random.Generator, corners: np.ndarray, max_disp: float,
                    cfg: HomographyConfig) -> np.ndarray:
    """Where the frame's corners go: similarity about the centre, translation r * u^2, perspective jitter."""
    centre = corners.mean(axis=0)
    angle = np.deg2rad(rng.normal(0.0, cfg.rotation_std))
    zoom = 2.0 ** rng.uniform(-cfg.log2_zoom_range, cfg.log2_zoom_range)
    c, s = np.cos(angle) * zoom, np.sin(angle) * zoom
    r, phi = max_disp * rng.random() ** 2, rng.uniform(0, 2 * np.pi)
    moved = (corners - centre) @ np.array([[c, s], [-s, c]]) + centre + [r * np.cos(phi), r * np.sin(phi)]
    side = float(np.min(corners.max(axis=0) - corners.min(axis=0)))
    return moved + rng.uniform(-1, 1, (4, 2)) * cfg.perspective * side * rng.random()


def random_homography(rng: np.random.Generator, size: tuple[int, int], max_disp: float,
                      cfg: HomographyConfig = HomographyConfig()) -> np.ndarray:
    """A random homography (3x3, frame 1 -> frame 2) under which no pixel of the (H, W) frame moves
    farther than max_disp and the frame does not fold (positive denominator at every corner)."""
    h, w = size
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    targets = _corner_targets(rng, corners, max_disp, cfg)
    xs, ys = (g.astype(np.float64) for g in np.meshgrid(np.arange(w), np.arange(h)))
    for _ in range(_SHRINK_TRIES):
        mat = cv2.getPerspectiveTransform(corners.astype(np.float32), targets.astype(np.float32))
        den = mat[2, 0] * corners[:, 0] + mat[2, 1] * corners[:, 1] + mat[2, 2]
        if den.min() > 0:
            worst = float(np.linalg.norm(apply_homography(mat, xs, ys) - np.stack([xs, ys], -1), axis=-1).max())
            if worst <= max_disp:
                return mat
            factor = 0.98 * max_disp / worst
        else:
            factor = 0.5
        targets = corners + factor * (targets - corners)
    return np.eye(3)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], amplitude: float,
                 period: float) -> np.ndarray:
    """A smooth random displacement field (h, w, 2) float32 with |component| <= amplitude: low-frequency
    value noise (finest period period/2), so its slope stays about amplitude / period (no folding)."""
    out = np.empty((*shape, 2), np.float32)
    for c in range(2):
        noise = value_noise(rng, shape, base_period=period, min_period=period / 2)
        out[..., c] = (2.0 * noise - 1.0) * amplitude
    return out
