"""Textures for the synthetic flow scenes: real photographs that ship inside scikit-image, plus
procedural noise, stripes and checkers.

Every texture gets a faint multi-octave noise detail on top, so that no region is flat: a flat region has
no recoverable motion and would teach the model to guess. The finest detail has a period of about 4 px,
which keeps the bilinear warps of the renderer accurate (a texture near the pixel frequency would alias).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

# skimage.data images stored inside the wheel (no pooch download). `stereo_motorcycle` is deliberately
# absent: it is the held-out real evaluation pair and must never leak into training textures.
PHOTO_NAMES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)
_PHOTO_MAX_SIDE = 512  # larger photos are shrunk once at load; crops are only magnified (no aliasing)


@dataclass(frozen=True)
class TextureConfig:
    """How textures are drawn. photo_prob: chance of a photograph (else a procedural pattern)."""

    photo_prob: float = 0.7
    photo_zoom: tuple[float, float] = (0.0, 1.2)  # log2 magnification of a photo crop
    detail_std: tuple[float, float] = (4.0, 9.0)  # std of the noise detail added on top, grey levels


@functools.cache
def photo_bank() -> tuple[np.ndarray, ...]:
    """The usable photographs as float32 RGB (H,W,3), loaded once per process.

    A photo whose loader needs the network (an older or newer scikit-image) is skipped, never fetched.
    """
    from skimage import data

    photos = []
    for name in PHOTO_NAMES:
        try:
            img = np.asarray(getattr(data, name)())
        except Exception:  # any loader failure (file missing in this version, needs pooch): skip it
            continue
        if img.dtype == bool:
            img = img.astype(np.uint8) * 255
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = img[:, :, :3].astype(np.float32)
        side = max(img.shape[:2])
        if side > _PHOTO_MAX_SIDE:
            f = _PHOTO_MAX_SIDE / side
            img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        photos.append(img)
    return tuple(photos)


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


def _photo_crop(rng: np.random.Generator, shape: tuple[int, int],
                zoom_log2: tuple[float, float]) -> np.ndarray:
    """A randomly rotated, scaled crop of a random photograph, with a random colour shift."""
    photos = photo_bank()
    photo = photos[int(rng.integers(len(photos)))]
    h, w = shape
    ph, pw = photo.shape[:2]
    zoom = 2.0 ** rng.uniform(*zoom_log2)
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
    if rng.random() < config.photo_prob and photo_bank():
        tex = _photo_crop(rng, shape, config.photo_zoom)
    else:
        tex = _procedural(rng, shape)
    # squeeze into [20, 235] first: saturated (clipped) areas would be flat, and the detail must not clip
    tex = 20.0 + np.clip(tex, 0.0, 255.0) * (215.0 / 255.0)
    detail = value_noise(rng, shape, base_period=rng.uniform(5, 10))
    detail = (detail - detail.mean()) * (rng.uniform(*config.detail_std) / max(float(detail.std()), 1e-6))
    tex += detail[:, :, None]
    return np.clip(tex, 0.0, 255.0, out=tex)
