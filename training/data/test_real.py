"""The real test set (issue 24): photographs withdrawn from training and validation (photos.TEST_PHOTOS), warped
by homographies, and by homographies with a smooth non-rigid deformation on top, with photometric changes between
the frames. It is scored once per shipped model (scripts/test_report.py) and chooses nothing: no rate, snapshot,
data setting or stop rule may be picked by it. Deterministic; no download.

Its seed, sizes and motion levels differ from the validation set's, so the two never share a pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from training.data.heldout_real import HeldoutRealConfig, RealPair, warped_photo_pair
from training.data.homography import smooth_field
from training.data.photometric import PhotometricConfig
from training.data.photos import TEST_PHOTOS, load_photo_full

TEST_MOTION_LEVELS = (1.0, 4.0, 12.0, 30.0)  # largest homography displacement of each pair of a photo, px


@dataclass(frozen=True)
class RealTestConfig(HeldoutRealConfig):
    """Options of the test set. Each photo gives one homography pair per motion level and one deformed pair
    per level: the same kind of homography plus a smooth field of amplitude `deform_share` x the level, at a
    spatial period drawn from `deform_period` px."""

    size: tuple[int, int] = (208, 288)  # the smallest test photograph is 300 px high: room for 30 px + deformation
    seed: int = 271828
    motion_levels: tuple[float, ...] = TEST_MOTION_LEVELS
    deform_share: float = 0.3
    deform_period: tuple[float, float] = (40.0, 120.0)
    photometric: PhotometricConfig = field(default_factory=lambda: PhotometricConfig(motion_blur_prob=0.0))


def _deformation(rng: np.random.Generator, cfg: RealTestConfig, level: float) -> np.ndarray:
    period = rng.uniform(*cfg.deform_period)
    return smooth_field(rng, cfg.size, min(cfg.deform_share * level, 0.15 * period), period)


def real_test_pairs(cfg: RealTestConfig = RealTestConfig()) -> list[RealPair]:
    """Every test photograph x every motion level x (homography, deformed), in a fixed order."""
    pairs = []
    for i, name in enumerate(TEST_PHOTOS):
        photo = load_photo_full(name)
        if photo is None:
            continue
        for j, level in enumerate(cfg.motion_levels):
            for kind, deformed in (("homography", False), ("deformed", True)):
                rng = np.random.default_rng([cfg.seed, i, j, int(deformed)])
                field_ = _deformation(rng, cfg, level) if deformed else None
                img1, img2, flow, valid = warped_photo_pair(photo, rng, cfg.size, level, cfg, field_)
                pairs.append(RealPair(f"{name}-{kind}-{level:g}px", img1, img2, flow, valid))
    return pairs
