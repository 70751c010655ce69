"""What a real camera does to the two frames of a pair, after the scene is rendered: motion blur along
the motion, vignetting, an exposure (gain) and white-balance change between the frames, a gamma curve,
signal-dependent sensor noise, 8-bit quantisation and JPEG compression.

Real pairs differ photometrically (auto exposure, flicker, compression), so a model trained on identical
brightness learns brightness constancy that real photographs break. The flow is untouched: every effect
is per pixel or a small blur, never a displacement.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from deqflow.errors import InputError

_MAX_BLUR_PX = 9.0  # longest motion-blur streak


@dataclass(frozen=True)
class PhotometricConfig:
    """Camera effects. Ranges are (lo, hi) of uniform draws; *_log2 are log2 factors."""

    exposure_log2: float = 0.35  # shared gain of the pair, 2**U(-x, x)
    gain_change_log2: float = 0.15  # frame-to-frame gain change, 2**N(0, x)
    gamma_log2: float = 0.25  # shared gamma 2**U(-x, x), each frame then differs by up to a fifth of it
    color_change: float = 0.05  # per-frame, per-channel white-balance gain 1 + U(-x, x)
    vignetting: float = 0.35  # darkening at the corners, U(0, x) per frame
    read_noise: float = 3.0  # Gaussian sigma U(0, x), grey levels
    shot_noise: float = 0.4  # signal-dependent variance U(0, x) * intensity
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)
    motion_blur_prob: float = 0.3
    motion_blur_exposure: float = 0.35  # streak length U(0, x) * |mean flow|, at most _MAX_BLUR_PX

    def __post_init__(self) -> None:
        lo, hi = self.jpeg_quality
        if not 1 <= lo <= hi <= 100:
            raise InputError(f"jpeg_quality must be a range within 1..100, got {self.jpeg_quality}")
        for name in ("jpeg_prob", "motion_blur_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be a probability, got {getattr(self, name)}")


def motion_blur(img: np.ndarray, direction: np.ndarray, length: float) -> np.ndarray:
    """Average along a straight streak of `length` px in `direction` (a linear motion-blur kernel)."""
    n = int(np.ceil(length)) | 1
    if length < 1.0 or not np.any(direction):
        return img
    kernel = np.zeros((n, n), np.float32)
    d = direction / np.linalg.norm(direction)
    half = (n - 1) / 2
    for t in np.linspace(-length / 2, length / 2, 4 * n):
        kernel[int(round(half + t * d[1])), int(round(half + t * d[0]))] += 1.0
    return cv2.filter2D(img, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT_101)


def _vignette(shape: tuple[int, int], strength: float, centre: np.ndarray) -> np.ndarray:
    """Multiplicative falloff 1 - strength * r^2, r = 1 at the farthest corner."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xs - centre[0]) / w) ** 2 + ((ys - centre[1]) / h) ** 2
    return (1.0 - strength * r2 / r2.max()).astype(np.float32)


def _jpeg(rng: np.random.Generator, img: np.ndarray, quality: tuple[int, int]) -> np.ndarray:
    q = int(rng.integers(quality[0], quality[1] + 1))
    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy() if ok else img


def camera_frames(rng: np.random.Generator, frames: list[np.ndarray], mean_flow: np.ndarray,
                  cfg: PhotometricConfig = PhotometricConfig()) -> list[np.ndarray]:
    """float32 RGB frames in 0..255 -> uint8 RGB frames with the camera effects; the pair shares the
    sensor (noise level, JPEG chance) and differs in exposure, white balance, gamma, vignetting, blur."""
    h, w = frames[0].shape[:2]
    exposure = 2.0 ** rng.uniform(-cfg.exposure_log2, cfg.exposure_log2)
    gamma = 2.0 ** rng.uniform(-cfg.gamma_log2, cfg.gamma_log2)
    read, shot = rng.uniform(0, cfg.read_noise), rng.uniform(0, cfg.shot_noise)
    blurred = rng.random() < cfg.motion_blur_prob
    speed = float(np.linalg.norm(mean_flow))
    out = []
    for img in frames:
        if blurred:
            length = min(rng.uniform(0, cfg.motion_blur_exposure) * speed, _MAX_BLUR_PX)
            img = motion_blur(img, mean_flow, length)
        gain = exposure * 2.0 ** rng.normal(0, cfg.gain_change_log2)
        colour = 1.0 + rng.uniform(-cfg.color_change, cfg.color_change, 3).astype(np.float32)
        vignette = _vignette((h, w), rng.uniform(0, cfg.vignetting), rng.uniform(0.3, 0.7, 2) * [w, h])
        lin = np.clip(img * vignette[:, :, None] * colour * np.float32(gain), 0.0, 255.0)
        frame_gamma = gamma * 2.0 ** rng.uniform(-cfg.gamma_log2 / 5, cfg.gamma_log2 / 5)
        img = 255.0 * (lin / 255.0) ** np.float32(frame_gamma)
        sigma = np.sqrt(read**2 + shot * img)
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * sigma
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        out.append(_jpeg(rng, img, cfg.jpeg_quality) if rng.random() < cfg.jpeg_prob else img)
    return out
