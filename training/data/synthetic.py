"""Synthetic layered scenes with exact ground-truth flow, generated on the fly (no download).

A scene is a textured background plus foreground objects (ellipses, star polygons, noise blobs; hard
edges), composited back to front. Each layer k moves by an affine map D_k from frame-1 to frame-2
coordinates. Instead of forward-splatting, both frames are rendered by inverse warping: frame 1 samples
each layer at p, frame 2 samples it at D_k^-1(q) (cv2.warpAffine, bilinear), masks likewise. Hence the
flow D_k(p) - p of the top-most layer at p is exact, and occlusions arise naturally.

Validity: as in FlyingChairs, the flow is valid at every pixel of frame 1, including pixels that become
occluded or leave the frame (their motion is still defined). `SyntheticSample.noc` marks the pixels that
stay visible, for tests and occlusion-aware metrics.

Motion: translation magnitude max_displacement * u**2 (u ~ U(0,1)): many small and some large motions,
plus small rotation/scale/shear; each layer's motion is then shrunk, if needed, so that |flow| <=
max_displacement over the layer's whole extent (the displacement of an affine map is largest at a
corner of a convex region, so checking the corners of the layer's bounding box is exact).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from deqflow.errors import InputError
from training.data.augment import AugmentConfig
from training.data.datasets import FlowDataset
from training.data.textures import TextureConfig, random_texture, value_noise

_VIDEO_STREAM = 7919  # separates video seeds from pair seeds in the SeedSequence


@dataclass(frozen=True)
class SyntheticConfig:
    """Scene options. Angles in degrees; (background, objects) pairs give the per-layer spread."""

    max_displacement: float = 64.0
    n_layers: tuple[int, int] = (2, 5)  # number of foreground objects, inclusive range
    photometric: bool = True  # brightness change, sensor noise and blur; off = exact rendering
    object_radius: tuple[float, float] = (0.06, 0.3)  # fraction of min(H, W)
    rotation_std: tuple[float, float] = (1.5, 6.0)
    log2_scale_range: tuple[float, float] = (0.03, 0.12)
    shear_range: tuple[float, float] = (0.02, 0.05)
    brightness_change: float = 0.06  # frame-to-frame gain change, fraction
    max_noise_sigma: float = 2.5  # Gaussian noise sigma ~ U(0, max), grey levels
    blur_prob: float = 0.25
    texture: TextureConfig = field(default_factory=TextureConfig)

    def __post_init__(self) -> None:
        lo, hi = self.n_layers
        if not 0 <= lo <= hi <= 100:
            raise InputError(f"n_layers must be a range (lo, hi) with 0 <= lo <= hi <= 100, "
                             f"got {self.n_layers}")
        if self.max_displacement <= 0:
            raise InputError(f"max_displacement must be positive, got {self.max_displacement}")


@dataclass
class SyntheticSample:
    """One rendered pair: uint8 RGB images (H,W,3), flow (H,W,2), valid (H,W) float32, noc (H,W) bool."""

    image1: np.ndarray
    image2: np.ndarray
    flow: np.ndarray
    valid: np.ndarray
    noc: np.ndarray


@dataclass
class SyntheticVideo:
    """A sequence: frames (N,H,W,3) uint8; flows[t] frame t -> t+1 and flows_backward[t] frame t+1 -> t,
    both (N-1,H,W,2) float32 and valid everywhere."""

    frames: np.ndarray
    flows: np.ndarray
    flows_backward: np.ndarray


@dataclass
class _Layer:
    texture: np.ndarray  # float32 (h,w,3)
    mask: np.ndarray | None  # uint8 (h,w) 0/255; None: opaque background
    origin: np.ndarray  # frame-1 position of texture pixel (0, 0)
    center: np.ndarray  # rotation/scale centre in frame-1 coordinates

    @property
    def is_object(self) -> bool:
        return self.mask is not None


# --- scene construction ---------------------------------------------------------------------------


def _shape_mask(rng: np.random.Generator, radius: int) -> np.ndarray:
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


def _build_layers(rng: np.random.Generator, size: tuple[int, int], cfg: SyntheticConfig,
                  margin: int) -> list[_Layer]:
    """Background + objects. Texture origins get a random sub-pixel offset, so that frame 1 is resampled
    like frame 2 (an integer-aligned frame 1 would be systematically sharper than the warped frame 2)."""
    h, w = size
    bg = _Layer(texture=random_texture(rng, (h + 2 * margin, w + 2 * margin), cfg.texture), mask=None,
                origin=rng.uniform(0, 1, 2) - margin,
                center=np.array([(w - 1) / 2, (h - 1) / 2]))
    layers = [bg]
    for _ in range(int(rng.integers(cfg.n_layers[0], cfg.n_layers[1] + 1))):
        radius = max(3, int(rng.uniform(*cfg.object_radius) * min(h, w)))
        center = np.rint([rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)])
        side = 2 * radius + 1
        layers.append(_Layer(texture=random_texture(rng, (side, side), cfg.texture),
                             mask=_shape_mask(rng, radius), origin=center - radius + rng.uniform(0, 1, 2),
                             center=center))
    return layers


# --- motion ---------------------------------------------------------------------------------------


def _draw_motion(rng: np.random.Generator, cfg: SyntheticConfig, is_object: bool) -> np.ndarray:
    """Motion parameters (tx, ty, rotation rad, log2 scale, shear)."""
    k = int(is_object)
    r = cfg.max_displacement * rng.random() ** 2
    phi = rng.uniform(0, 2 * np.pi)
    return np.array([r * np.cos(phi), r * np.sin(phi),
                     np.deg2rad(rng.normal(0, cfg.rotation_std[k])),
                     rng.uniform(-cfg.log2_scale_range[k], cfg.log2_scale_range[k]),
                     rng.uniform(-cfg.shear_range[k], cfg.shear_range[k])])


def _motion_matrix(params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """2x3 affine p -> c + L (p - c) + t with L = rotation * scale * shear."""
    tx, ty, rot, log_s, shear = params
    c, s = np.cos(rot), np.sin(rot)
    lin = 2.0 ** log_s * np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    return np.concatenate([lin, (center - lin @ center + [tx, ty])[:, None]], axis=1)


def _cap_motion(m: np.ndarray, rect: tuple[float, float, float, float], max_disp: float) -> np.ndarray:
    """Shrink D - I so that the displacement over rect (x0, y0, x1, y1) stays <= max_disp."""
    x0, y0, x1, y1 = rect
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]])
    delta = m - np.eye(2, 3)
    worst = np.linalg.norm(corners @ delta[:, :2].T + delta[:, 2], axis=1).max()
    if worst <= max_disp:
        return m
    return np.eye(2, 3) + delta * (max_disp / worst)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Affine a after b (2x3 each)."""
    return np.concatenate([a[:, :2] @ b[:, :2], (a[:, :2] @ b[:, 2] + a[:, 2])[:, None]], axis=1)


def _layer_rect(layer: _Layer, pose: np.ndarray,
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


def _render(layers: list[_Layer], poses: list[np.ndarray],
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
        rect = _layer_rect(layer, pose, size)
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
def _grid(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
    return xs, ys


def _flow_from_labels(label: np.ndarray, motions: list[np.ndarray]) -> np.ndarray:
    """Per pixel, the displacement D(p) - p of the top-most layer's motion D."""
    xs, ys = _grid(label.shape)
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


def _visible(label1: np.ndarray, label2: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Pixels whose layer is still the top-most one at their target in frame 2 (inside the frame)."""
    h, w = label1.shape
    xs, ys = _grid(label1.shape)
    tx, ty = np.rint(xs + flow[..., 0]), np.rint(ys + flow[..., 1])
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    noc = np.zeros_like(inside)
    noc[inside] = label2[ty[inside].astype(np.int64), tx[inside].astype(np.int64)] == label1[inside]
    return noc


def _photometric(rng: np.random.Generator, frames: list[np.ndarray],
                 cfg: SyntheticConfig) -> list[np.ndarray]:
    """Shared blur, a slowly drifting global gain, per-frame sensor noise; then quantise to uint8."""
    if cfg.photometric:
        sigma_blur = rng.uniform(0.3, 1.0) if rng.random() < cfg.blur_prob else 0.0
        noise = rng.uniform(0, cfg.max_noise_sigma)
        gain, b = 1.0, cfg.brightness_change
        for t, img in enumerate(frames):
            if t > 0:
                gain = float(np.clip(gain + rng.uniform(-b, b), 1 - 3 * b, 1 + 3 * b))
            if sigma_blur > 0:
                img = cv2.GaussianBlur(img, (0, 0), sigma_blur)
            img = img * gain + rng.standard_normal(img.shape, dtype=np.float32) * noise
            frames[t] = img
    return [np.clip(np.rint(f), 0, 255).astype(np.uint8) for f in frames]


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = (int(s) for s in size)
    if h < 8 or w < 8:
        raise InputError(f"synthetic image size must be at least 8x8, got {size}")
    return h, w


def render_pair(rng: np.random.Generator, size: tuple[int, int],
                config: SyntheticConfig = SyntheticConfig()) -> SyntheticSample:
    """Render one random scene at `size` (H, W) with its exact flow."""
    size = _check_size(size)
    layers = _build_layers(rng, size, config, margin=int(min(config.max_displacement, 32)))
    identity = [np.eye(2, 3)] * len(layers)
    motions = []
    for layer in layers:
        m = _motion_matrix(_draw_motion(rng, config, layer.is_object), layer.center)
        rect = _layer_rect(layer, identity[0], size)
        motions.append(m if rect is None else _cap_motion(m, rect, config.max_displacement))
    img1, label1 = _render(layers, identity, size)
    img2, label2 = _render(layers, motions, size)
    flow = _flow_from_labels(label1, motions)
    image1, image2 = _photometric(rng, [img1, img2], config)
    return SyntheticSample(image1, image2, flow, np.ones(size, np.float32), _visible(label1, label2, flow))


def make_synthetic_video(n_frames: int, size: tuple[int, int], seed: int = 0, max_displacement: float = 16.0,
                         config: SyntheticConfig | None = None, persistence: float = 0.97) -> SyntheticVideo:
    """A smooth sequence for warm-start experiments: each layer's motion evolves as an AR(1) process
    (new = persistence * old + sqrt(1 - persistence^2) * fresh draw), so consecutive flows are similar.
    `config` (its max_displacement replaced) sets the scene; flows are exact as in `render_pair`."""
    if n_frames < 2:
        raise InputError(f"a video needs at least 2 frames, got {n_frames}")
    size = _check_size(size)
    base = config or SyntheticConfig()
    cfg = replace(base, max_displacement=float(max_displacement))
    rng = np.random.default_rng([seed, _VIDEO_STREAM])
    layers = _build_layers(rng, size, cfg, margin=int(min(4 * cfg.max_displacement, 96)))
    params = [_draw_motion(rng, cfg, layer.is_object) for layer in layers]
    poses = [np.eye(2, 3)] * len(layers)
    image, label = _render(layers, poses, size)
    frames, forward, backward = [image], [], []
    fresh_weight = np.sqrt(1 - persistence**2)
    for _ in range(n_frames - 1):
        motions = []
        for layer, p, pose in zip(layers, params, poses):
            m = _motion_matrix(p, pose[:, :2] @ layer.center + pose[:, 2])
            rect = _layer_rect(layer, pose, size)
            motions.append(m if rect is None else _cap_motion(m, rect, cfg.max_displacement))
        poses = [_compose(m, pose) for m, pose in zip(motions, poses)]
        next_image, next_label = _render(layers, poses, size)
        forward.append(_flow_from_labels(label, motions))
        backward.append(_flow_from_labels(next_label, [cv2.invertAffineTransform(m) for m in motions]))
        frames.append(next_image)
        label = next_label
        params = [persistence * p + fresh_weight * _draw_motion(rng, cfg, layer.is_object)
                  for p, layer in zip(params, layers)]
    return SyntheticVideo(np.stack(_photometric(rng, frames, cfg)), np.stack(forward), np.stack(backward))


class SyntheticFlowDataset(FlowDataset):
    """Endless-variety training data: sample i is the scene rendered from the seed sequence (seed, i), so
    it is identical in every process and epoch. With `augment`, the augmentation (not the scene) varies.
    Yields (image1, image2, flow, valid) like the file datasets."""

    def __init__(self, size: tuple[int, int] = (256, 320), length: int = 10_000, seed: int = 0,
                 max_displacement: float = 64.0, n_layers: tuple[int, int] = (2, 5), photometric: bool = True,
                 augment: AugmentConfig | None = None) -> None:
        super().__init__(augment, seed=seed)
        if length < 1:
            raise InputError(f"synthetic dataset length must be >= 1, got {length}")
        self.size = _check_size(size)
        self.length = int(length)
        self.config = SyntheticConfig(max_displacement=float(max_displacement), n_layers=tuple(n_layers),
                                      photometric=photometric)

    def num_samples(self) -> int:
        return self.length

    def sample(self, index: int) -> SyntheticSample:
        """The rendered scene of sample `index` (numpy, with the occlusion mask)."""
        return render_pair(np.random.default_rng([self.seed, index]), self.size, self.config)

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        s = self.sample(index)
        return s.image1, s.image2, s.flow, None
