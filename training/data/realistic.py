"""Photograph-like synthetic pairs with exact flow: a camera homography, rigid plus smooth non-rigid
object motion, a share of small and sub-pixel scenes, optionally a share of rectified stereo scenes (slanted
planes moving horizontally), and camera effects that differ between the frames.

Rendering is anchored in frame 2: each layer k is placed in frame 2 at its texture origin, and frame 1
samples the layer at D_k(p), where D_k is any smooth map from frame-1 pixels to frame-2 positions (a
homography, an affine motion after it, a smooth deformation on top). No map is ever inverted, so D_k may
be non-rigid, and the flow D_k(p) - p of the top-most layer at p is exact by construction.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from training.data.homography import apply_homography, random_homography, smooth_field
from training.data.layers import (
    Layer,
    build_layers,
    draw_motion,
    motion_matrix,
    pixel_grid,
    render_layers,
    visible_mask,
)
from training.data.photometric import camera_frames
from training.data.scene_config import RealismConfig, SyntheticConfig


def _window(layer: Layer, size: tuple[int, int], reach: float) -> tuple[slice, slice] | None:
    """Frame-1 pixels that can show the layer: its frame-2 box grown by the largest displacement."""
    h, w = size
    if not layer.is_object:
        return slice(0, h), slice(0, w)
    th, tw = layer.mask.shape
    x0, y0 = np.floor(layer.origin - reach - 1).astype(int)
    x1, y1 = np.ceil(layer.origin + [tw, th] + reach + 1).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    return None if x0 >= x1 or y0 >= y1 else (slice(y0, y1), slice(x0, x1))


def _layer_map(rng: np.random.Generator, layer: Layer, camera: np.ndarray, win: tuple[slice, slice],
               size: tuple[int, int], max_disp: float, cfg: SyntheticConfig) -> np.ndarray:
    """D_k on the window's pixels (h, w, 2): camera homography, the object's own affine motion (objects
    only), a smooth deformation (sometimes); objects' displacement then shrunk to at most max_disp."""
    real: RealismConfig = cfg.realism
    xs, ys = (g[win] for g in pixel_grid(size))
    follows = not layer.is_object or rng.random() < real.object_follows_camera_prob
    pos = apply_homography(camera, xs, ys) if follows else np.stack([xs, ys], -1)
    if layer.is_object:
        m = motion_matrix(draw_motion(rng, replace(cfg, max_displacement=max_disp), True), layer.center)
        pos = pos @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
    if rng.random() < real.nonrigid_prob:
        period = rng.uniform(*real.nonrigid_period)
        amplitude = min(real.nonrigid_amplitude * max_disp, 0.15 * period)
        pos = pos + smooth_field(rng, xs.shape, rng.uniform(0, amplitude), period)
    if layer.is_object:
        disp = pos - np.stack([xs, ys], -1)
        worst = float(np.linalg.norm(disp, axis=-1).max())
        if worst > max_disp:
            pos = np.stack([xs, ys], -1) + disp * np.float32(max_disp / worst)
    return pos.astype(np.float32)


def _stereo_maps(rng: np.random.Generator, layers: list[Layer], size: tuple[int, int], max_disp: float) -> list:
    """(window, D_k) per layer of a rectified stereo pair: D_k(p) = p + s (d_k(p), 0), where d_k is a slanted
    plane's disparity (affine in p), nearer layers (later in the list) have larger disparities, and one sign s
    holds for the scene; 0 <= d_k <= max_disp."""
    h, w = size
    sign = float(rng.choice([-1.0, 1.0]))
    background = rng.uniform(0.05, 0.6) * max_disp
    levels = [background, *np.sort(rng.uniform(background, max_disp, len(layers) - 1))]
    maps = []
    for layer, level in zip(layers, levels):
        win = _window(layer, size, max_disp)
        if win is None:
            maps.append(None)
            continue
        xs, ys = (g[win] for g in pixel_grid(size))
        extent = float(np.hypot(h, w)) if not layer.is_object else float(max(layer.mask.shape))
        angle = rng.uniform(0, 2 * np.pi)
        slope = rng.uniform(0, 0.25) * max_disp / extent  # the plane's disparity change per pixel
        d = level + slope * (np.cos(angle) * (xs - layer.center[0]) + np.sin(angle) * (ys - layer.center[1]))
        d = np.clip(d, 0.0, max_disp).astype(np.float32)
        maps.append((win, np.stack([xs + np.float32(sign) * d, ys], -1)))
    return maps


def _sample(src: np.ndarray, pos: np.ndarray, origin: np.ndarray, border: int) -> np.ndarray:
    mx = np.ascontiguousarray(pos[..., 0] - np.float32(origin[0]))
    my = np.ascontiguousarray(pos[..., 1] - np.float32(origin[1]))
    return cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=border, borderValue=0)


def _render_frame1(layers: list[Layer], maps: list, size: tuple[int, int]):
    """Frame 1 and its exact flow: each layer sampled at D_k(p), composited back to front."""
    h, w = size
    image = np.empty((h, w, 3), np.float32)
    label = np.zeros((h, w), np.int8)
    flow = np.zeros((h, w, 2), np.float32)
    xs, ys = pixel_grid(size)
    for k, (layer, item) in enumerate(zip(layers, maps)):
        if item is None:
            continue
        win, pos = item
        if layer.mask is None:
            image[win] = _sample(layer.texture, pos, layer.origin, cv2.BORDER_REFLECT_101)
            sel = np.ones(pos.shape[:2], bool)
        else:
            sel = _sample(layer.mask, pos, layer.origin, cv2.BORDER_CONSTANT) > 127
            tex = _sample(layer.texture, pos, layer.origin, cv2.BORDER_REFLECT_101)
            image[win][sel] = tex[sel]
        label[win][sel] = k
        flow[win][sel] = pos[sel] - np.stack([xs[win][sel], ys[win][sel]], -1)
    return image, label, flow


def render_realistic_pair(rng: np.random.Generator, size: tuple[int, int], cfg: SyntheticConfig):
    """One photograph-like scene at `size` (H, W) -> (image1, image2 uint8, flow, noc)."""
    real: RealismConfig = cfg.realism
    max_disp = cfg.max_displacement
    stereo = real.stereo_share > 0 and rng.random() < real.stereo_share  # no draw at share 0: streams kept
    if stereo:
        max_disp = max_disp * rng.uniform(0.5, 1.0)
    elif rng.random() < real.small_motion_prob:
        max_disp = min(max_disp, rng.uniform(*real.small_motion_max))
    layers = build_layers(rng, size, cfg, margin=int(min(max_disp, 32)) + 2)
    if stereo:
        maps = _stereo_maps(rng, layers, size, max_disp)
    else:
        nonrigid_room = real.nonrigid_amplitude * max_disp
        camera = random_homography(rng, size, max(max_disp - 1.5 * nonrigid_room, 0.25 * max_disp),
                                   real.homography)
        maps = []
        for layer in layers:
            win = _window(layer, size, max_disp)
            maps.append(None if win is None else (win, _layer_map(rng, layer, camera, win, size, max_disp, cfg)))
    img1, label1, flow = _render_frame1(layers, maps, size)
    img2, label2 = render_layers(layers, [np.eye(2, 3)] * len(layers), size)
    noc = visible_mask(label1, label2, flow)
    mean_flow = flow[noc].mean(axis=0) if noc.any() else np.zeros(2, np.float32)
    if not cfg.photometric:  # exact rendering, only quantised (tests)
        image1, image2 = (np.clip(np.rint(f), 0, 255).astype(np.uint8) for f in (img1, img2))
    else:
        image1, image2 = camera_frames(rng, [img1, img2], mean_flow, real.photometric)
    return image1, image2, flow, noc
