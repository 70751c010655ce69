"""Synthetic scenes: determinism, exact flow (images warp onto each other), motion statistics, video."""

import cv2
import numpy as np
import pytest
import torch

from deqflow.errors import InputError
from training.data import (
    PHOTO_NAMES,
    SyntheticConfig,
    SyntheticFlowDataset,
    make_synthetic_video,
    photo_bank,
    random_texture,
    render_pair,
)


def warp_back(image2: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """image2 sampled at p + flow(p), bilinear: equals image1 where p stays visible."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(image2.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)


def test_deterministic_per_seed_and_index():
    a = SyntheticFlowDataset(size=(64, 80), length=10, seed=3)
    b = SyntheticFlowDataset(size=(64, 80), length=10, seed=3)
    other_seed = SyntheticFlowDataset(size=(64, 80), length=10, seed=4)
    s1, s2 = a.sample(5), b.sample(5)
    for x, y in zip((s1.image1, s1.image2, s1.flow), (s2.image1, s2.image2, s2.flow)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.sample(6).image1, s1.image1)
    assert not np.array_equal(other_seed.sample(5).image1, s1.image1)


def test_item_shapes_dtypes_and_valid():
    ds = SyntheticFlowDataset(size=(48, 64), length=3, seed=0)
    assert len(ds) == 3
    image1, image2, flow, valid = ds[2]
    assert image1.shape == image2.shape == (3, 48, 64) and image1.dtype == torch.float32
    assert flow.shape == (2, 48, 64) and flow.dtype == torch.float32
    assert valid.shape == (48, 64) and valid.dtype == torch.float32 and bool((valid == 1).all())
    assert 0 <= float(image1.min()) and float(image1.max()) <= 255
    with pytest.raises(IndexError):
        ds[3]


@pytest.mark.parametrize("index", range(6))
def test_flow_is_consistent_with_images(index):
    ds = SyntheticFlowDataset(size=(128, 160), length=10, seed=11, max_displacement=24, photometric=False)
    s = ds.sample(index)
    diff = np.abs(warp_back(s.image2, s.flow) - s.image1).mean(axis=2)
    assert s.noc.mean() > 0.5
    assert np.median(diff[s.noc]) < 3.0
    # the occluded / out-of-frame pixels are where consistency is not expected: they must be the worse ones
    if (~s.noc).sum() > 100:
        assert np.median(diff[~s.noc]) > np.median(diff[s.noc])


def test_photometric_realism_changes_pixels_not_geometry():
    cfg_on, cfg_off = SyntheticConfig(), SyntheticConfig(photometric=False)
    on = render_pair(np.random.default_rng(1), (64, 80), cfg_on)
    off = render_pair(np.random.default_rng(1), (64, 80), cfg_off)
    np.testing.assert_array_equal(on.flow, off.flow)
    assert not np.array_equal(on.image2, off.image2)


def test_motion_statistics_within_max_displacement():
    max_disp = 40.0
    cfg = SyntheticConfig(max_displacement=max_disp, photometric=False)
    mags = [np.linalg.norm(render_pair(np.random.default_rng([2, i]), (96, 128), cfg).flow, axis=2)
            for i in range(16)]
    all_mags = np.concatenate([m.ravel() for m in mags])
    assert all_mags.max() <= max_disp + 1e-3
    # many small and some large motions
    assert np.percentile(all_mags, 10) < 0.15 * max_disp
    assert np.percentile(all_mags, 95) > 0.4 * max_disp


def test_textures_are_offline_photos_and_textured_everywhere():
    assert "stereo_motorcycle" not in PHOTO_NAMES
    assert len(photo_bank()) >= 10
    for seed in range(8):
        tex = random_texture(np.random.default_rng(seed), (96, 96))
        assert tex.shape == (96, 96, 3) and tex.dtype == np.float32
        blocks = tex.mean(axis=2).reshape(6, 16, 6, 16).std(axis=(1, 3))
        assert blocks.min() > 1.0, f"seed {seed}: a flat 16x16 block"


def test_video_is_smooth_and_exact():
    video = make_synthetic_video(6, (96, 128), seed=5, config=SyntheticConfig(photometric=False))
    assert video.frames.shape == (6, 96, 128, 3) and video.frames.dtype == np.uint8
    assert video.flows.shape == video.flows_backward.shape == (5, 96, 128, 2)
    h, w = 96, 128
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for t in range(5):
        diff = np.abs(warp_back(video.frames[t + 1], video.flows[t]) - video.frames[t]).mean(axis=2)
        assert np.median(diff) < 3.0
        f = video.flows[t]
        back = cv2.remap(video.flows_backward[t], xs + f[..., 0], ys + f[..., 1], cv2.INTER_LINEAR)
        assert (np.linalg.norm(f + back, axis=2) < 0.5).mean() > 0.6  # forward-backward consistent
    assert np.abs(video.flows).max() <= 16.0 + 1e-3


def test_bad_arguments():
    with pytest.raises(InputError):
        SyntheticFlowDataset(size=(4, 64))
    with pytest.raises(InputError):
        SyntheticConfig(n_layers=(3, 2))
    with pytest.raises(InputError):
        make_synthetic_video(1, (32, 32))
