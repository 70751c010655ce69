"""Layered scenes for the synthetic flow data: a textured background plus foreground objects (ellipses,
star polygons, noise blobs; hard edges), their affine motions, and compositing them back to front.

Both synthetic renderers (the affine one in synthetic.py and the warped one in realistic.py) build on
these pieces; the per-pixel label of the top-most layer gives the flow and the occlusion mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from training.data.scene_config import SyntheticConfig
from training.data.textures import random_texture, value_noise


@dataclass
class Layer:
    texture: np.ndarray  # float32 (h,w,3)
    mask: np.ndarray | None  # uint8 (h,w) 0/255; None: opaque background
    origin: np.ndarray  # frame-1 position of texture pixel (0, 0)
    center: np.ndarray  # rotation/scale centre in frame-1 coordinates

    @property
    def is_object(self) -> bool:
        return self.mask is not None


# --- scene construction ---------------------------------------------------------------------------


def shape_mask(rng: np.random.Generator, radius: int) -> np.ndarray:
    """A filled shape centred in a (2r+1)^2 box: ellipse, star polygon or noise blob (uint8 0/255)."""
    side = 2 * radius + 1
    mask = np.zeros((side, side), np.uint8)
    kind = rng.integers(3)
    if kind == 0:
        axes = (radius, max(2, int(radius * rng.uniform(0.35, 1.0))))
        cv2.ellipse(mask, (radius, radius), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    elif kind == 1:
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.45, 1.0, n)
        pts = np.stack([radius + radii * np.cos(angles), radius + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.rint(pts).astype(np.int32)], 255)
    else:
        y, x = np.mgrid[0:side, 0:side].astype(np.float32)
        dist = np.hypot(x - radius, y - radius) / radius
        noise = value_noise(rng, (side, side), base_period=max(radius / 1.5, 8.0), min_period=8.0)
        mask[(1.0 - dist) + 0.8 * (noise - 0.5) > 0.35] = 255
    if not mask.any():
        cv2.circle(mask, (radius, radius), max(2, radius // 2), 255, -1)
    return mask


def build_layers(rng: np.random.Generator, size: tuple[int, int], cfg: SyntheticConfig,
                  margin: int) -> list[Layer]:
    """Background + objects. Texture origins get a random sub-pixel offset, so that frame 1 is resampled
    like frame 2 (an integer-aligned frame 1 would be systematically sharper than the warped frame 2)."""
    h, w = size
    bg = Layer(texture=random_texture(rng, (h + 2 * margin, w + 2 * margin), cfg.texture), mask=None,
                origin=rng.uniform(0, 1, 2) - margin,
                center=np.array([(w - 1) / 2, (h - 1) / 2]))
    layers = [bg]
    for _ in range(int(rng.integers(cfg.n_layers[0], cfg.n_layers[1] + 1))):
        radius = max(3, int(rng.uniform(*cfg.object_radius) * min(h, w)))
        center = np.rint([rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)])
        side = 2 * radius + 1
        layers.append(Layer(texture=random_texture(rng, (side, side), cfg.texture),
                             mask=shape_mask(rng, radius), origin=center - radius + rng.uniform(0, 1, 2),
                             center=center))
    return layers


# --- motion ---------------------------------------------------------------------------------------


def draw_motion(rng: np.random.Generator, cfg: SyntheticConfig, is_object: bool) -> np.ndarray:
    """Motion parameters (tx, ty, rotation rad, log2 scale, shear)."""
    k = int(is_object)
    r = cfg.max_displacement * rng.random() ** 2
    phi = rng.uniform(0, 2 * np.pi)
    return np.array([r * np.cos(phi), r * np.sin(phi),
                     np.deg2rad(rng.normal(0, cfg.rotation_std[k])),
                     rng.uniform(-cfg.log2_scale_range[k], cfg.log2_scale_range[k]),
                     rng.uniform(-cfg.shear_range[k], cfg.shear_range[k])])


def motion_matrix(params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """2x3 affine p -> c + L (p - c) + t with L = rotation * scale * shear."""
    tx, ty, rot, log_s, shear = params
    c, s = np.cos(rot), np.sin(rot)
    lin = 2.0 ** log_s * np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    return np.concatenate([lin, (center - lin @ center + [tx, ty])[:, None]], axis=1)


def cap_motion(m: np.ndarray, rect: tuple[float, float, float, float], max_disp: float) -> np.ndarray:
    """Shrink D - I so that the displacement over rect (x0, y0, x1, y1) stays <= max_disp."""
    x0, y0, x1, y1 = rect
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]])
    delta = m - np.eye(2, 3)
    worst = np.linalg.norm(corners @ delta[:, :2].T + delta[:, 2], axis=1).max()
    if worst <= max_disp:
        return m
    return np.eye(2, 3) + delta * (max_disp / worst)


def compose_affine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine a after b (2x3 each)."""
    return np.concatenate([a[:, :2] @ b[:, :2], (a[:, :2] @ b[:, 2] + a[:, 2])[:, None]], axis=1)


def layer_rect(layer: Layer, pose: np.ndarray,
                size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """Bounding box of the layer in the frame at `pose`, clipped to the frame (None if outside)."""
    h, w = size
    if not layer.is_object:
        return 0.0, 0.0, w - 1.0, h - 1.0
    th, tw = layer.mask.shape
    box = layer.origin + np.array([[0, 0], [tw - 1, 0], [0, th - 1], [tw - 1, th - 1]])
    pts = box @ pose[:, :2].T + pose[:, 2]
    x0, y0 = np.maximum(pts.min(axis=0), 0.0)
    x1, y1 = np.minimum(pts.max(axis=0), [w - 1.0, h - 1.0])
    return None if x0 > x1 or y0 > y1 else (x0, y0, x1, y1)


# --- rendering ------------------------------------------------------------------------------------


def render_layers(layers: list[Layer], poses: list[np.ndarray],
            size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Composite the layers at their poses (frame-1 -> this frame) -> (float32 RGB, int8 top-layer label)."""
    h, w = size
    image = np.empty((h, w, 3), np.float32)
    label = np.zeros((h, w), np.int8)
    for k, (layer, pose) in enumerate(zip(layers, poses)):
        inv = cv2.invertAffineTransform(pose)
        inv[:, 2] -= layer.origin  # frame -> texture pixel coordinates
        if layer.mask is None:
            cv2.warpAffine(layer.texture, inv, (w, h), dst=image,
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)
            continue
        rect = layer_rect(layer, pose, size)
        if rect is None:
            continue
        # one extra pixel each side: the bilinear mask reaches half a pixel past the box's pixel centres
        x0, y0 = max(int(np.floor(rect[0])) - 1, 0), max(int(np.floor(rect[1])) - 1, 0)
        x1, y1 = min(int(np.ceil(rect[2])) + 2, w), min(int(np.ceil(rect[3])) + 2, h)
        roi = inv.copy()
        roi[:, 2] += inv[:, :2] @ [x0, y0]  # warp only the object's window
        dsize = (x1 - x0, y1 - y0)
        mask = cv2.warpAffine(layer.mask, roi, dsize, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 127
        tex = cv2.warpAffine(layer.texture, roi, dsize, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT_101)
        image[y0:y1, x0:x1][mask] = tex[mask]
        label[y0:y1, x0:x1][mask] = k
    return image, label


@functools.lru_cache(maxsize=8)
def pixel_grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    return xs, ys


def flow_from_labels(label: np.ndarray, motions: list[np.ndarray]) -> np.ndarray:
    """Per pixel, the displacement D(p) - p of the top-most layer's motion D."""
    xs, ys = pixel_grid(label.shape)
    flow = np.zeros(label.shape + (2,), np.float32)
    for k, m in enumerate(motions):
        sel = label == k
        if not sel.any():
            continue
        d = (m - np.eye(2, 3)).astype(np.float32)
        x, y = xs[sel], ys[sel]
        flow[sel, 0] = d[0, 0] * x + d[0, 1] * y + d[0, 2]
        flow[sel, 1] = d[1, 0] * x + d[1, 1] * y + d[1, 2]
    return flow


def visible_mask(label1: np.ndarray, label2: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Pixels whose layer is still the top-most one at their target in frame 2 (inside the frame)."""
    h, w = label1.shape
    xs, ys = pixel_grid(label1.shape)
    tx, ty = np.rint(xs + flow[..., 0]), np.rint(ys + flow[..., 1])
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    noc = np.zeros_like(inside)
    noc[inside] = label2[ty[inside].astype(np.int64), tx[inside].astype(np.int64)] == label1[inside]
    return noc
