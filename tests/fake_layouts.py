"""Tiny, real-format copies of the standard dataset layouts, for tests (ptlflow-style dummy datasets).

Content comes from the synthetic renderer, so every flow file is the exact flow between its images and a
model or metric can be checked end to end. Files use the real formats: PPM + .flo (Chairs), PNG + PFM
(Things), PNG + .flo (Sintel), PNG + 16-bit KITTI PNG with sparse valid masks (KITTI, HD1K).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from deqflow.flow_io import write_flo, write_kitti_flow, write_pfm
from deqflow.image_io import write_image
from training.data.synthetic import SyntheticConfig, SyntheticVideo, make_synthetic_video, render_pair

Size = tuple[int, int]


def _config(size: Size) -> SyntheticConfig:
    # motion scaled to the tiny image, so that most pixels stay inside the frame
    return SyntheticConfig(max_displacement=max(4.0, min(size) / 6))


def _video(n_frames: int, size: Size, seed: int) -> SyntheticVideo:
    """Clean sequence (no noise or gain change), as the clean passes of Sintel and Things."""
    return make_synthetic_video(n_frames, size, seed=seed, max_displacement=max(2.0, min(size) / 12),
                                config=SyntheticConfig(photometric=False))


def _final_pass(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 'final' rendering of a clean frame: blur, haze and noise, as the final passes add effects."""
    f = cv2.GaussianBlur(frame.astype(np.float32), (0, 0), 1.0) * 0.85 + 20.0
    f += rng.normal(0.0, 2.0, f.shape)
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def write_fake_chairs(root: str | os.PathLike, n: int = 4, size: Size = (128, 160), seed: int = 0) -> Path:
    """`<root>/FlyingChairs_release/data/NNNNN_{img1,img2}.ppm, NNNNN_flow.flo` and chairs_split.txt
    (the last max(1, n // 4) pairs are validation). Returns the FlyingChairs_release folder."""
    base = Path(root) / "FlyingChairs_release"
    data = base / "data"
    for i in range(n):
        s = render_pair(np.random.default_rng([seed, i]), size, _config(size))
        write_image(data / f"{i + 1:05d}_img1.ppm", s.image1)
        write_image(data / f"{i + 1:05d}_img2.ppm", s.image2)
        write_flo(data / f"{i + 1:05d}_flow.flo", s.flow)
    n_val = max(1, n // 4) if n > 1 else 0
    split = [1] * (n - n_val) + [2] * n_val
    (base / "chairs_split.txt").write_text("".join(f"{v}\n" for v in split))
    return base


def write_fake_things(root: str | os.PathLike, n_sequences: int = 2, n_frames: int = 4, size: Size = (128, 160),
                      seed: int = 0) -> Path:
    """FlyingThings3D with TRAIN and TEST, sequences A/0000.., both cameras, clean and final passes,
    into_future and into_past PFM flows (3 channels). Frames are numbered from 0006 as in the release;
    the flows that point outside the sequence (future of the last, past of the first frame) are zero."""
    base = Path(root) / "FlyingThings3D"
    zero = np.zeros(size + (2,), np.float32)
    for s_idx, split in enumerate(("TRAIN", "TEST")):
        for q in range(n_sequences):
            for c_idx, (cam, tag) in enumerate((("left", "L"), ("right", "R"))):
                video = _video(n_frames, size, seed=seed + 1000 * s_idx + 10 * q + c_idx)
                rng = np.random.default_rng([seed, 300, s_idx, q, c_idx])
                seq = Path(split) / "A" / f"{q:04d}"
                for t in range(n_frames):
                    frame = 6 + t
                    write_image(base / "frames_cleanpass" / seq / cam / f"{frame:04d}.png", video.frames[t])
                    write_image(base / "frames_finalpass" / seq / cam / f"{frame:04d}.png",
                                _final_pass(video.frames[t], rng))
                    future = video.flows[t] if t < n_frames - 1 else zero
                    past = video.flows_backward[t - 1] if t > 0 else zero
                    flow_dir = base / "optical_flow" / seq
                    name = f"{frame:04d}_{tag}.pfm"
                    write_pfm(flow_dir / "into_future" / cam / f"OpticalFlowIntoFuture_{name}", future)
                    write_pfm(flow_dir / "into_past" / cam / f"OpticalFlowIntoPast_{name}", past)
    return base


def write_fake_sintel(root: str | os.PathLike, n_scenes: int = 2, n_frames: int = 4, size: Size = (128, 160),
                      seed: int = 0) -> Path:
    """MPI-Sintel: training and test, clean and final, frame_0001.png.., training/flow/<scene>/*.flo."""
    base = Path(root) / "Sintel"
    for s_idx, split in enumerate(("training", "test")):
        for k in range(n_scenes):
            scene = f"scene_{k + 1}"
            video = _video(n_frames, size, seed=seed + 100 * s_idx + k)
            rng = np.random.default_rng([seed, 200, s_idx, k])
            for t in range(n_frames):
                name = f"frame_{t + 1:04d}"
                write_image(base / split / "clean" / scene / f"{name}.png", video.frames[t])
                write_image(base / split / "final" / scene / f"{name}.png", _final_pass(video.frames[t], rng))
                if split == "training" and t < n_frames - 1:
                    write_flo(base / split / "flow" / scene / f"{name}.flo", video.flows[t])
    return base


def _lidar_mask(rng: np.random.Generator, size: Size) -> np.ndarray:
    """KITTI-like sparsity: nothing in the top quarter (sky), ~70% density below."""
    valid = rng.random(size) < 0.7
    valid[: size[0] // 4] = False
    return valid.astype(np.float32)


def write_fake_kitti(root: str | os.PathLike, n: int = 4, size: Size = (128, 160), seed: int = 0) -> Path:
    """KITTI 2015: training/image_2/NNNNNN_{10,11}.png, sparse flow_occ and flow_noc 16-bit PNGs, and
    testing/image_2."""
    base = Path(root) / "KITTI"
    for s_idx, split in enumerate(("training", "testing")):
        for i in range(n):
            rng = np.random.default_rng([seed, 500 + s_idx, i])
            s = render_pair(rng, size, _config(size))
            write_image(base / split / "image_2" / f"{i:06d}_10.png", s.image1)
            write_image(base / split / "image_2" / f"{i:06d}_11.png", s.image2)
            if split == "training":
                valid = _lidar_mask(rng, size)
                write_kitti_flow(base / split / "flow_occ" / f"{i:06d}_10.png", s.flow, valid)
                write_kitti_flow(base / split / "flow_noc" / f"{i:06d}_10.png", s.flow, valid * s.noc)
    return base


def write_fake_hd1k(root: str | os.PathLike, n_sequences: int = 2, n_frames: int = 4, size: Size = (128, 160),
                    seed: int = 0) -> Path:
    """HD1K: hd1k_input/image_2/SSSSSS_FFFF.png and sparse hd1k_flow_gt/flow_occ/SSSSSS_FFFF.png, one flow
    per frame (the last one all invalid, as it has no next frame)."""
    base = Path(root) / "HD1k"
    for q in range(n_sequences):
        video = _video(n_frames, size, seed=seed + 700 + q)
        rng = np.random.default_rng([seed, 700, q])
        for t in range(n_frames):
            name = f"{q:06d}_{t:04d}.png"
            write_image(base / "hd1k_input" / "image_2" / name, video.frames[t])
            if t < n_frames - 1:
                flow, valid = video.flows[t], _lidar_mask(rng, size)
            else:
                flow, valid = np.zeros(size + (2,), np.float32), np.zeros(size, np.float32)
            write_kitti_flow(base / "hd1k_flow_gt" / "flow_occ" / name, flow, valid)
    return base


def write_fake_all(root: str | os.PathLike, size: Size = (128, 160), seed: int = 0) -> dict[str, Path]:
    """Every standard layout under `root` with default counts -> {name: dataset folder}."""
    return {
        "chairs": write_fake_chairs(root, size=size, seed=seed),
        "things": write_fake_things(root, size=size, seed=seed),
        "sintel": write_fake_sintel(root, size=size, seed=seed),
        "kitti": write_fake_kitti(root, size=size, seed=seed),
        "hd1k": write_fake_hd1k(root, size=size, seed=seed),
    }
