"""Training augmentation with the official RAFT/DEQ-Flow parameters, without torchvision.

Order as in the official augmentors: colour jitter, eraser (occlusion), then spatial (scale/stretch,
flips, crop). Every random draw comes from a numpy Generator passed per call, so a sample's augmentation
is reproducible and DataLoader workers can own independent streams.

Geometry convention: pixel centres at integer coordinates; a flow (u, v) at pixel (x, y) points to
(x + u, y + v) in image2. A resize to (W', H') uses the effective factors sx = W'/W, sy = H'/H for the
images, the flow values and (for sparse flow) the scattered positions alike, so the three stay exactly
consistent with cv2.resize's half-pixel sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import cv2
import numpy as np

from deqflow.errors import InputError

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601 luma, as PIL/torchvision


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation options; defaults are the official dense (FlowAugmentor) values.

    Scales are drawn as 2**U(min_scale, max_scale); a zero jitter strength disables that jitter op.
    crop_margin = (dy, dx): the random crop may start up to dy past the bottom-most and dx past the
    left/right-most position before being clipped, which favours image borders (the official sparse
    crop, (20, 50), keeps more of KITTI's road and sides).
    """

    crop_size: tuple[int, int]
    min_scale: float = -0.2
    max_scale: float = 0.5
    spatial_prob: float = 0.8
    stretch_prob: float = 0.8
    max_stretch: float = 0.2
    h_flip_prob: float = 0.5
    v_flip_prob: float = 0.1
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.5 / 3.14
    asymmetric_color_prob: float = 0.2
    eraser_prob: float = 0.5
    eraser_size: tuple[int, int] = (50, 100)
    crop_margin: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise InputError(f"crop_size must be (height, width) >= 1, got {self.crop_size}")
        if self.min_scale > self.max_scale:
            raise InputError(f"min_scale {self.min_scale} > max_scale {self.max_scale}")
        if not 0 <= self.hue <= 0.5:
            raise InputError(f"hue jitter must be in [0, 0.5] (a fraction of the colour circle), "
                             f"got {self.hue}")

    def without_photometric(self) -> AugmentConfig:
        """The same geometry with colour jitter and eraser off (flow-consistency checks)."""
        return replace(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, eraser_prob=0.0)


def _dense(crop: tuple[int, int], lo: float, hi: float) -> AugmentConfig:
    return AugmentConfig(crop_size=tuple(crop), min_scale=lo, max_scale=hi)


def _sparse(crop: tuple[int, int], lo: float, hi: float, h_flip: bool) -> AugmentConfig:
    # Official SparseFlowAugmentor: no stretch, no vertical flip, symmetric and milder jitter.
    return AugmentConfig(crop_size=tuple(crop), min_scale=lo, max_scale=hi, stretch_prob=0.0,
                         h_flip_prob=0.5 if h_flip else 0.0, v_flip_prob=0.0, brightness=0.3, contrast=0.3,
                         saturation=0.3, hue=0.3 / 3.14, asymmetric_color_prob=0.0, crop_margin=(20, 50))


# Per-stage presets. kitti: no flip, as the official kitti stage; sintel_kitti / sintel_hd1k are the
# parts of the official sintel mix (RAFT's train-time ranges, horizontal flips on).
STAGE_PRESETS: dict[str, Callable[[tuple[int, int]], AugmentConfig]] = {
    "chairs": lambda crop: _dense(crop, -0.1, 1.0),
    "things": lambda crop: _dense(crop, -0.4, 0.8),
    "sintel": lambda crop: _dense(crop, -0.2, 0.6),
    "sintel_kitti": lambda crop: _sparse(crop, -0.3, 0.5, h_flip=True),
    "sintel_hd1k": lambda crop: _sparse(crop, -0.5, 0.2, h_flip=True),
    "kitti": lambda crop: _sparse(crop, -0.2, 0.4, h_flip=False),
    # synthetic scenes are rendered ~1.2x larger than the crop; mild zoom both ways
    "synthetic": lambda crop: _dense(crop, -0.3, 0.3),
}


def stage_augment(stage: str, crop_size: tuple[int, int]) -> AugmentConfig:
    """The augmentation preset of a training stage (or a part of the sintel mix)."""
    if stage not in STAGE_PRESETS:
        raise InputError(f"no augmentation preset for {stage!r}; choose one of {sorted(STAGE_PRESETS)}")
    return STAGE_PRESETS[stage](crop_size)


# --- photometric ----------------------------------------------------------------------------------


def _jitter_ops(cfg: AugmentConfig, rng: np.random.Generator) -> list[tuple[str, float]]:
    """Draw torchvision-ColorJitter-style ops: factors U(1-s, 1+s), hue U(-h, h), in random order."""
    ops = []
    for name, strength in (("brightness", cfg.brightness), ("contrast", cfg.contrast),
                           ("saturation", cfg.saturation)):
        if strength > 0:
            ops.append((name, float(rng.uniform(max(0.0, 1 - strength), 1 + strength))))
    if cfg.hue > 0:
        ops.append(("hue", float(rng.uniform(-cfg.hue, cfg.hue))))
    return [ops[i] for i in rng.permutation(len(ops))]


def _apply_jitter(img: np.ndarray, ops: list[tuple[str, float]]) -> np.ndarray:
    """Apply drawn ops to uint8 RGB (..., 3) -> uint8. Contrast uses the mean grey of the whole array,
    so jointly jittered images (stacked) share one mean, as with the official stacked call."""
    out = img.astype(np.float32)
    for name, f in ops:
        if name == "brightness":
            out = np.clip(out * f, 0, 255)
        elif name == "contrast":
            mean = float((out @ _GRAY).mean())
            out = np.clip(mean + f * (out - mean), 0, 255)
        elif name == "saturation":
            gray = (out @ _GRAY)[..., None]
            out = np.clip(gray + f * (out - gray), 0, 255)
        else:  # hue: rotate H in OpenCV's full-range (0..255) uint8 HSV, which wraps naturally
            hsv = cv2.cvtColor(np.rint(out).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] += np.uint8(int(round(f * 256)) % 256)
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
    return np.rint(out).astype(np.uint8)


def color_jitter(img1: np.ndarray, img2: np.ndarray, cfg: AugmentConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Jitter both images with one draw, or (with asymmetric_color_prob) with independent draws."""
    if rng.random() < cfg.asymmetric_color_prob:
        return _apply_jitter(img1, _jitter_ops(cfg, rng)), _apply_jitter(img2, _jitter_ops(cfg, rng))
    both = _apply_jitter(np.concatenate([img1, img2], axis=0), _jitter_ops(cfg, rng))
    return both[: img1.shape[0]], both[img1.shape[0]:]


def erase(img2: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Occlusion augmentation: 1-2 rectangles of image2 filled with its mean colour."""
    if rng.random() >= cfg.eraser_prob:
        return img2
    img2 = img2.copy()
    h, w = img2.shape[:2]
    mean = img2.reshape(-1, 3).mean(axis=0)
    lo, hi = cfg.eraser_size
    for _ in range(int(rng.integers(1, 3))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        dx, dy = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        img2[y0:y0 + dy, x0:x0 + dx] = mean
    return img2


# --- spatial --------------------------------------------------------------------------------------


def _draw_scale(cfg: AugmentConfig, shape: tuple[int, int],
                rng: np.random.Generator) -> tuple[float, float] | None:
    """Target scale factors (sx, sy), or None for no resize. The factors never shrink the image below
    the crop (+8 px), so the crop always fits."""
    h, w = shape
    ch, cw = cfg.crop_size
    floor = max((ch + 8) / h, (cw + 8) / w)
    scale = 2.0 ** rng.uniform(cfg.min_scale, cfg.max_scale)
    sx = sy = scale
    if rng.random() < cfg.stretch_prob:
        sx *= 2.0 ** rng.uniform(-cfg.max_stretch, cfg.max_stretch)
        sy *= 2.0 ** rng.uniform(-cfg.max_stretch, cfg.max_stretch)
    if rng.random() < cfg.spatial_prob:
        return max(sx, floor), max(sy, floor)
    if h < ch or w < cw:  # too small to crop without a resize
        return max(1.0, floor), max(1.0, floor)
    return None


def _resize_size(shape: tuple[int, int], fx: float, fy: float) -> tuple[int, int]:
    return max(1, int(round(shape[1] * fx))), max(1, int(round(shape[0] * fy)))


def resize_sparse_flow(flow: np.ndarray, valid: np.ndarray,
                       size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize sparse flow to size (W', H') by moving each valid point to its new pixel (no interpolation
    across invalid pixels, which would invent flow). Points landing on one pixel: the last one wins."""
    h, w = flow.shape[:2]
    nw, nh = size
    sx, sy = nw / w, nh / h
    ys, xs = np.nonzero(valid >= 0.5)
    vals = flow[ys, xs] * np.array([sx, sy], np.float32)
    nx = np.rint((xs + 0.5) * sx - 0.5).astype(np.int64)
    ny = np.rint((ys + 0.5) * sy - 0.5).astype(np.int64)
    keep = (nx >= 0) & (nx < nw) & (ny >= 0) & (ny < nh)
    out_flow = np.zeros((nh, nw, 2), np.float32)
    out_valid = np.zeros((nh, nw), np.float32)
    out_flow[ny[keep], nx[keep]] = vals[keep]
    out_valid[ny[keep], nx[keep]] = 1.0
    return out_flow, out_valid


def _crop_origin(cfg: AugmentConfig, shape: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    h, w = shape
    ch, cw = cfg.crop_size
    my, mx = cfg.crop_margin
    y0 = int(rng.integers(0, h - ch + my + 1))
    x0 = int(rng.integers(-mx, w - cw + mx + 1))
    return min(max(y0, 0), h - ch), min(max(x0, 0), w - cw)


def _flip_and_crop(cfg: AugmentConfig, rng: np.random.Generator, planes: list[np.ndarray],
                   flow: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Flip (negating the matching flow component) and crop the images/masks and the flow together."""
    if rng.random() < cfg.h_flip_prob:  # x -> W-1-x negates u
        planes = [p[:, ::-1] for p in planes]
        flow = flow[:, ::-1] * np.array([-1.0, 1.0], np.float32)
    if rng.random() < cfg.v_flip_prob:  # y -> H-1-y negates v
        planes = [p[::-1] for p in planes]
        flow = flow[::-1] * np.array([1.0, -1.0], np.float32)
    y0, x0 = _crop_origin(cfg, flow.shape[:2], rng)
    ch, cw = cfg.crop_size
    win = (slice(y0, y0 + ch), slice(x0, x0 + cw))
    return [np.ascontiguousarray(p[win]) for p in planes], np.ascontiguousarray(flow[win], dtype=np.float32)


class FlowAugmentor:
    """Dense-flow augmentor (FlyingChairs, FlyingThings3D, Sintel, synthetic)."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, img1: np.ndarray, img2: np.ndarray, flow: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 RGB (H,W,3) x2, flow (H,W,2) float32 -> the augmented, cropped triple (contiguous)."""
        cfg = self.config
        img1, img2 = color_jitter(img1, img2, cfg, rng)
        img2 = erase(img2, cfg, rng)
        scale = _draw_scale(cfg, img1.shape[:2], rng)
        if scale is not None:
            size = _resize_size(img1.shape[:2], *scale)
            sx, sy = size[0] / img1.shape[1], size[1] / img1.shape[0]
            img1 = cv2.resize(img1, size, interpolation=cv2.INTER_LINEAR)
            img2 = cv2.resize(img2, size, interpolation=cv2.INTER_LINEAR)
            flow = cv2.resize(flow, size, interpolation=cv2.INTER_LINEAR) * np.array([sx, sy], np.float32)
        (img1, img2), flow = _flip_and_crop(cfg, rng, [img1, img2], flow)
        return img1, img2, flow


class SparseFlowAugmentor:
    """Sparse-flow augmentor (KITTI, HD1K): flow is resized by scattering the valid points."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, img1: np.ndarray, img2: np.ndarray, flow: np.ndarray, valid: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """As FlowAugmentor, plus a valid mask (H,W) float32 0/1 carried through every step."""
        cfg = self.config
        img1, img2 = color_jitter(img1, img2, cfg, rng)
        img2 = erase(img2, cfg, rng)
        valid = np.asarray(valid, np.float32)
        scale = _draw_scale(cfg, img1.shape[:2], rng)
        if scale is not None:
            size = _resize_size(img1.shape[:2], *scale)
            img1 = cv2.resize(img1, size, interpolation=cv2.INTER_LINEAR)
            img2 = cv2.resize(img2, size, interpolation=cv2.INTER_LINEAR)
            flow, valid = resize_sparse_flow(flow, valid, size)
        (img1, img2, valid), flow = _flip_and_crop(cfg, rng, [img1, img2, valid], flow)
        return img1, img2, flow, valid
