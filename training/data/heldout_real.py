"""A held-out real-photograph validation set: the photographs in photos.HELDOUT_PHOTOS (never training
textures of the extended pool), each warped by known homographies with photometric changes between the
frames, plus the Middlebury motorcycle stereo pair. Deterministic; no download.

Frame 2 is a crop of the photograph at its own resolution, frame 1 samples the photograph at H(p), so the
flow H(p) - p is exact. Both frames are resampled at a sub-pixel offset, so neither is sharper. A pixel is
valid where its target lies inside frame 2 (the motion of a pixel that leaves the frame is not observable).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from deqflow.errors import InputError
from training.data.homography import HomographyConfig, apply_homography, random_homography
from training.data.photometric import PhotometricConfig, camera_frames
from training.data.photos import HELDOUT_PHOTOS, load_photo_full

MOTION_LEVELS = (2.0, 8.0, 16.0, 32.0)  # largest displacement of each pair of a photo, px


@dataclass(frozen=True)
class HeldoutRealConfig:
    """Options of the held-out set. Pair j of a photo moves at most motion_levels[j] px."""

    size: tuple[int, int] = (288, 384)
    seed: int = 31337
    motion_levels: tuple[float, ...] = MOTION_LEVELS
    homography: HomographyConfig = field(default_factory=lambda: HomographyConfig(rotation_std=1.5,
                                                                                  perspective=0.04))
    photometric: PhotometricConfig = field(default_factory=lambda: PhotometricConfig(motion_blur_prob=0.0))


@dataclass
class RealPair:
    """One validation pair: uint8 RGB images (H,W,3), exact flow (H,W,2), valid (H,W) float32."""

    name: str
    image1: np.ndarray
    image2: np.ndarray
    flow: np.ndarray
    valid: np.ndarray


def warped_photo_pair(photo: np.ndarray, rng: np.random.Generator, size: tuple[int, int], max_disp: float,
                      cfg: HeldoutRealConfig, deformation: np.ndarray | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A pair from one photograph under a random homography, plus an optional smooth displacement field
    (h, w, 2) on top of it -> (image1, image2 uint8, flow, valid). The flow stays exact: frame 1 samples the
    photograph where each pixel's motion ends."""
    h, w = size
    ph, pw = photo.shape[:2]
    margin = max_disp + 2 + (float(np.abs(deformation).max()) if deformation is not None else 0.0)
    if ph < h + 2 * margin or pw < w + 2 * margin:
        raise InputError(f"photo {pw}x{ph} is too small for {w}x{h} pairs moving {max_disp} px")
    origin = np.array([rng.uniform(margin, pw - w - margin), rng.uniform(margin, ph - h - margin)], np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    target = apply_homography(random_homography(rng, size, max_disp, cfg.homography), xs, ys)
    if deformation is not None:
        target = target + deformation
    img2 = cv2.remap(photo, xs + origin[0], ys + origin[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    img1 = cv2.remap(photo, target[..., 0] + origin[0], target[..., 1] + origin[1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)
    flow = target - np.stack([xs, ys], -1)
    inside = (target[..., 0] >= 0) & (target[..., 0] <= w - 1) & (target[..., 1] >= 0) & (target[..., 1] <= h - 1)
    mean_flow = flow[inside].mean(axis=0) if inside.any() else np.zeros(2, np.float32)
    image1, image2 = camera_frames(rng, [img1, img2], mean_flow, cfg.photometric)
    return image1, image2, flow.astype(np.float32), inside.astype(np.float32)


def heldout_homography_pairs(cfg: HeldoutRealConfig = HeldoutRealConfig()) -> list[RealPair]:
    """Every held-out photograph x every motion level, in a fixed order."""
    pairs = []
    for i, name in enumerate(HELDOUT_PHOTOS):
        photo = load_photo_full(name)
        if photo is None:
            continue
        for j, level in enumerate(cfg.motion_levels):
            rng = np.random.default_rng([cfg.seed, i, j])
            img1, img2, flow, valid = warped_photo_pair(photo, rng, cfg.size, level, cfg)
            pairs.append(RealPair(f"{name}-{level:g}px", img1, img2, flow, valid))
    return pairs


def motorcycle_pair() -> RealPair:
    """Middlebury 2014 'motorcycle' (shipped in scikit-image), the demo's real pair: flow (-d, 0)."""
    from deqflow.middlebury import motorcycle

    left, right, flow, valid = motorcycle()
    return RealPair("motorcycle", np.ascontiguousarray(left), np.ascontiguousarray(right), flow, valid)
