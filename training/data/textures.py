"""Textures for the synthetic flow scenes: crops of real photographs that installed packages ship
(photos.py), plus procedural noise, stripes and checkers.

Every texture gets a faint multi-octave noise detail on top, so that no region is flat: a flat region has
no recoverable motion and would teach the model to guess. The finest detail has a period of about 4 px,
which keeps the bilinear warps of the renderer accurate (a texture near the pixel frequency would alias).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from training.data.photos import PHOTO_NAMES, photo_bank, photo_pool

__all__ = ["PHOTO_NAMES", "TextureConfig", "photo_bank", "random_texture", "value_noise"]

@dataclass(frozen=True)
class TextureConfig:
    """How textures are drawn. photo_prob: chance of a photograph (else a procedural pattern)."""

    photo_prob: float = 0.7
    photo_zoom: tuple[float, float] = (0.0, 1.2)  # log2 magnification of a photo crop (< 0: minified)
    photo_set: str = "classic"  # "classic" (the shipped model's pool) or "extended" (photos.py)
    detail_std: tuple[float, float] = (4.0, 9.0)  # std of the noise detail added on top, grey levels


def value_noise(rng: np.random.Generator, shape: tuple[int, int], base_period: float,
                min_period: float = 4.0, persistence: float = 0.55) -> np.ndarray:
    """Multi-octave value noise in [0,1], float32 (h,w): random grids upsampled bicubically and summed,
    halving the period each octave down to `min_period` pixels."""
    h, w = shape
    out = np.zeros((h, w), np.float32)
    period, amp, total = float(base_period), 1.0, 0.0
    while True:
        gh, gw = int(np.ceil(h / period)) + 2, int(np.ceil(w / period)) + 2
        grid = rng.random((gh, gw), dtype=np.float32)
        big = cv2.resize(grid, (int(gw * period), int(gh * period)), interpolation=cv2.INTER_CUBIC)
        y0, x0 = rng.integers(0, int(period) + 1, size=2)
        out += amp * big[y0:y0 + h, x0:x0 + w]
        total += amp
        period /= 2.0
        amp *= persistence
        if period < min_period:
            break
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _colorize(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Map a scalar field in [0,1] through a random two- or three-colour ramp -> float32 (h,w,3)."""
    n = int(rng.integers(2, 4))
    colors = rng.uniform(0, 255, size=(n, 3)).astype(np.float32)
    if n == 2:
        return colors[0] + t[:, :, None] * (colors[1] - colors[0])
    t2 = t[:, :, None] * 2.0
    lower = colors[0] + t2 * (colors[1] - colors[0])
    upper = colors[1] + (t2 - 1.0) * (colors[2] - colors[1])
    return np.where(t2 < 1.0, lower, upper)


def _rotated_coords(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = shape
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)


def _stripes(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Sine stripes whose phase is bent by noise, so that stripes are not a 1-D (aperture) pattern."""
    xr, _ = _rotated_coords(rng, shape)
    period = rng.uniform(8, 40)
    bend = value_noise(rng, shape, base_period=rng.uniform(48, 128), min_period=16) * rng.uniform(2, 8)
    return 0.5 + 0.5 * np.sin(2 * np.pi * (xr / period + bend)).astype(np.float32)


def _checker(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    xr, yr = _rotated_coords(rng, shape)
    cell = rng.uniform(6, 32)
    board = ((np.floor(xr / cell) + np.floor(yr / cell)) % 2).astype(np.float32)
    return cv2.GaussianBlur(board, (0, 0), 0.7)  # anti-alias the rotated edges


def _procedural(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    kind = rng.choice(3, p=[0.6, 0.2, 0.2])
    if kind == 0:
        field = value_noise(rng, shape, base_period=rng.uniform(16, 96))
    elif kind == 1:
        field = _stripes(rng, shape)
    else:
        field = _checker(rng, shape)
    return _colorize(rng, field)


def _photo_crop(rng: np.random.Generator, shape: tuple[int, int], config: TextureConfig) -> np.ndarray:
    """A randomly rotated, scaled crop of a random photograph, with a random colour shift. A minified crop
    is magnified from the next smaller pyramid level (area-averaged), so no crop is sampled below its scale."""
    pool = photo_pool(config.photo_set)
    pyramid = pool[int(rng.integers(len(pool)))]
    zoom = 2.0 ** rng.uniform(*config.photo_zoom)
    level = min(int(np.ceil(-np.log2(zoom))), len(pyramid) - 1) if zoom < 1 else 0
    photo, zoom = pyramid[level], zoom * 2.0**level
    h, w = shape
    ph, pw = photo.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle) / zoom, np.sin(angle) / zoom
    cx, cy = rng.uniform(0, pw), rng.uniform(0, ph)
    # inverse map: output pixel (x, y) -> photo coordinates around a random centre
    m = np.array([[c, -s, cx - c * w / 2 + s * h / 2], [s, c, cy - s * w / 2 - c * h / 2]], np.float32)
    crop = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5:
        crop = crop[:, :, rng.permutation(3)]
    gain = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    offset = rng.uniform(-30, 30, size=3).astype(np.float32)
    return crop * gain + offset


def random_texture(rng: np.random.Generator, shape: tuple[int, int],
                   config: TextureConfig = TextureConfig()) -> np.ndarray:
    """A texture of `shape` (h, w) as float32 RGB (h,w,3) in 0..255, textured everywhere."""
    if rng.random() < config.photo_prob and photo_pool(config.photo_set):
        tex = _photo_crop(rng, shape, config)
    else:
        tex = _procedural(rng, shape)
    # squeeze into [20, 235] first: saturated (clipped) areas would be flat, and the detail must not clip
    tex = 20.0 + np.clip(tex, 0.0, 255.0) * (215.0 / 255.0)
    detail = value_noise(rng, shape, base_period=rng.uniform(5, 10))
    detail = (detail - detail.mean()) * (rng.uniform(*config.detail_std) / max(float(detail.std()), 1e-6))
    tex += detail[:, :, None]
    return np.clip(tex, 0.0, 255.0, out=tex)
