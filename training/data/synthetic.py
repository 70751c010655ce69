"""Synthetic layered scenes with exact ground-truth flow, generated on the fly (no download): the pair and
video renderers and the dataset. Two renderers, picked by the scene options (scene_config.py presets):
"classic" (below; the shipped model's data) and "realistic" (realistic.py: homographies, non-rigid motion,
camera effects). The layers themselves are built in layers.py.

Classic: a scene is a textured background plus foreground objects (ellipses, star polygons, noise blobs;
hard edges), composited back to front. Each layer k moves by an affine map D_k from frame-1 to frame-2
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

from dataclasses import dataclass, replace

import cv2
import numpy as np

from deqflow.errors import InputError
from training.data.augment import AugmentConfig
from training.data.flow_dataset import FlowDataset
from training.data.layers import (
    build_layers,
    cap_motion,
    compose_affine,
    draw_motion,
    flow_from_labels,
    layer_rect,
    motion_matrix,
    render_layers,
    visible_mask,
)
from training.data.realistic import render_realistic_pair
from training.data.scene_config import SyntheticConfig, synthetic_preset

_VIDEO_STREAM = 7919  # separates video seeds from pair seeds in the SeedSequence


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
                config: SyntheticConfig | None = None) -> SyntheticSample:
    """Render one random scene at `size` (H, W) with its exact flow (the renderer config.realism picks)."""
    size = _check_size(size)
    config = config or SyntheticConfig()
    share = 0.0 if config.realism is None else config.realism.classic_share
    if share > 0 and rng.random() < share:
        config = replace(config, realism=None)  # a classic layered scene, same textures
    if config.realism is not None:
        image1, image2, flow, noc = render_realistic_pair(rng, size, config)
        return SyntheticSample(image1, image2, flow, np.ones(size, np.float32), noc)
    layers = build_layers(rng, size, config, margin=int(min(config.max_displacement, 32)))
    identity = [np.eye(2, 3)] * len(layers)
    motions = []
    for layer in layers:
        m = motion_matrix(draw_motion(rng, config, layer.is_object), layer.center)
        rect = layer_rect(layer, identity[0], size)
        motions.append(m if rect is None else cap_motion(m, rect, config.max_displacement))
    img1, label1 = render_layers(layers, identity, size)
    img2, label2 = render_layers(layers, motions, size)
    flow = flow_from_labels(label1, motions)
    image1, image2 = _photometric(rng, [img1, img2], config)
    return SyntheticSample(image1, image2, flow, np.ones(size, np.float32), visible_mask(label1, label2, flow))


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
    layers = build_layers(rng, size, cfg, margin=int(min(4 * cfg.max_displacement, 96)))
    params = [draw_motion(rng, cfg, layer.is_object) for layer in layers]
    poses = [np.eye(2, 3)] * len(layers)
    image, label = render_layers(layers, poses, size)
    frames, forward, backward = [image], [], []
    fresh_weight = np.sqrt(1 - persistence**2)
    for _ in range(n_frames - 1):
        motions = []
        for layer, p, pose in zip(layers, params, poses):
            m = motion_matrix(p, pose[:, :2] @ layer.center + pose[:, 2])
            rect = layer_rect(layer, pose, size)
            motions.append(m if rect is None else cap_motion(m, rect, cfg.max_displacement))
        poses = [compose_affine(m, pose) for m, pose in zip(motions, poses)]
        next_image, next_label = render_layers(layers, poses, size)
        forward.append(flow_from_labels(label, motions))
        backward.append(flow_from_labels(next_label, [cv2.invertAffineTransform(m) for m in motions]))
        frames.append(next_image)
        label = next_label
        params = [persistence * p + fresh_weight * draw_motion(rng, cfg, layer.is_object)
                  for p, layer in zip(params, layers)]
    return SyntheticVideo(np.stack(_photometric(rng, frames, cfg)), np.stack(forward), np.stack(backward))


class SyntheticFlowDataset(FlowDataset):
    """Endless-variety training data: sample i is the scene rendered from the seed sequence (seed, i), so
    it is identical in every process and epoch. With `augment`, the augmentation (not the scene) varies.
    `preset` names the scene options (scene_config.SYNTHETIC_PRESETS); the other arguments override them.
    Yields (image1, image2, flow, valid) like the file datasets."""

    def __init__(self, size: tuple[int, int] = (256, 320), length: int = 10_000, seed: int = 0,
                 max_displacement: float = 64.0, n_layers: tuple[int, int] = (2, 5), photometric: bool = True,
                 augment: AugmentConfig | None = None, preset: str = "classic") -> None:
        super().__init__(augment, seed=seed)
        if length < 1:
            raise InputError(f"synthetic dataset length must be >= 1, got {length}")
        self.size = _check_size(size)
        self.length = int(length)
        self.config = replace(synthetic_preset(preset), max_displacement=float(max_displacement),
                              n_layers=tuple(n_layers), photometric=photometric)

    def num_samples(self) -> int:
        return self.length

    def sample(self, index: int) -> SyntheticSample:
        """The rendered scene of sample `index` (numpy, with the occlusion mask)."""
        return render_pair(np.random.default_rng([self.seed, index]), self.size, self.config)

    def load_sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        s = self.sample(index)
        return s.image1, s.image2, s.flow, None
