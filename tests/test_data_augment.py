"""Augmentation: flow stays consistent with the transformed images; flips negate the right component."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from deqflow.errors import InputError
from training.data import (
    AugmentConfig,
    FlowAugmentor,
    SparseFlowAugmentor,
    SyntheticFlowDataset,
    random_texture,
    resize_sparse_flow,
    stage_augment,
)

H, W = 96, 128
T = (5.0, -3.0)  # image2(q) = image1(q - T): flow is T everywhere


@pytest.fixture(scope="module")
def shifted_pair():
    big = random_texture(np.random.default_rng(0), (H + 20, W + 20)).astype(np.uint8)
    tx, ty = int(T[0]), int(T[1])
    img1 = np.ascontiguousarray(big[10:10 + H, 10:10 + W])
    img2 = np.ascontiguousarray(big[10 - ty:10 - ty + H, 10 - tx:10 - tx + W])
    flow = np.broadcast_to(np.array(T, np.float32), (H, W, 2)).copy()
    return img1, img2, flow


def geometry_only(crop=(H, W), **kw) -> AugmentConfig:
    base = AugmentConfig(crop_size=crop, spatial_prob=0.0, stretch_prob=0.0, h_flip_prob=0.0, v_flip_prob=0.0)
    return replace(base.without_photometric(), **kw)


def warp_error(img1, img2, flow, mask=None) -> float:
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    tx, ty = xs + flow[..., 0], ys + flow[..., 1]
    back = cv2.remap(img2.astype(np.float32), tx, ty, cv2.INTER_LINEAR)
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    if mask is not None:
        inside &= mask
    return float(np.median(np.abs(back - img1).mean(axis=2)[inside]))


def test_input_pair_is_consistent(shifted_pair):
    assert warp_error(*shifted_pair) == 0.0


def test_h_flip_negates_u(shifted_pair):
    img1, img2, flow = shifted_pair
    o1, o2, of = FlowAugmentor(geometry_only(h_flip_prob=1.0))(img1, img2, flow, np.random.default_rng(0))
    np.testing.assert_array_equal(o1, img1[:, ::-1])
    np.testing.assert_allclose(of[..., 0], -T[0])
    np.testing.assert_allclose(of[..., 1], T[1])
    assert warp_error(o1, o2, of) == 0.0


def test_v_flip_negates_v(shifted_pair):
    img1, img2, flow = shifted_pair
    o1, o2, of = FlowAugmentor(geometry_only(v_flip_prob=1.0))(img1, img2, flow, np.random.default_rng(0))
    np.testing.assert_array_equal(o1, img1[::-1])
    np.testing.assert_allclose(of[..., 0], T[0])
    np.testing.assert_allclose(of[..., 1], -T[1])
    assert warp_error(o1, o2, of) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_scale_stretch_flip_crop_keep_flow_consistent(shifted_pair, seed):
    img1, img2, flow = shifted_pair
    cfg = geometry_only(crop=(64, 96), min_scale=0.2, max_scale=0.6, spatial_prob=1.0, stretch_prob=1.0,
                        h_flip_prob=1.0, v_flip_prob=1.0)
    o1, o2, of = FlowAugmentor(cfg)(img1, img2, flow, np.random.default_rng(seed))
    assert o1.shape == o2.shape == (64, 96, 3) and of.shape == (64, 96, 2) and of.dtype == np.float32
    # magnified and flipped both ways: u = -5 sx, v = +3 sy with sx, sy > 1
    assert (of[..., 0] < -T[0]).all() and (of[..., 1] > -T[1]).all()
    assert np.ptp(of[..., 0]) < 1e-4 and np.ptp(of[..., 1]) < 1e-4
    assert warp_error(o1, o2, of) < 3.0


def test_synthetic_scene_stays_consistent_after_augmentation():
    ds = SyntheticFlowDataset(size=(120, 160), length=4, seed=2, max_displacement=20, photometric=False)
    cfg = geometry_only(crop=(96, 128), min_scale=-0.2, max_scale=0.4, spatial_prob=1.0, stretch_prob=1.0,
                        h_flip_prob=1.0, v_flip_prob=1.0)
    for i in range(4):
        s = ds.sample(i)
        o1, o2, of = FlowAugmentor(cfg)(s.image1, s.image2, s.flow, np.random.default_rng(i))
        assert warp_error(o1, o2, of) < 3.0


def test_seeded_and_photometric_paths(shifted_pair):
    img1, img2, flow = shifted_pair
    aug = FlowAugmentor(AugmentConfig(crop_size=(64, 96)))
    a = aug(img1, img2, flow, np.random.default_rng(7))
    b = aug(img1, img2, flow, np.random.default_rng(7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].dtype == np.uint8 and a[0].shape == (64, 96, 3)
    # joint jitter treats identical images identically; asymmetric jitter does not
    joint = replace(geometry_only(), brightness=0.4, contrast=0.4, saturation=0.4, hue=0.15,
                    asymmetric_color_prob=0.0)
    j1, j2, _ = FlowAugmentor(joint)(img1, img1.copy(), flow, np.random.default_rng(1))
    np.testing.assert_array_equal(j1, j2)
    assert not np.array_equal(j1, img1)
    asym = replace(joint, asymmetric_color_prob=1.0)
    k1, k2, _ = FlowAugmentor(asym)(img1, img1.copy(), flow, np.random.default_rng(1))
    assert not np.array_equal(k1, k2)


def test_eraser_touches_image2_only(shifted_pair):
    img1, img2, flow = shifted_pair
    o1, o2, _ = FlowAugmentor(geometry_only(eraser_prob=1.0))(img1, img2, flow, np.random.default_rng(3))
    np.testing.assert_array_equal(o1, img1)
    changed = (o2 != img2).any(axis=2)
    assert changed.any()
    mean = img2.reshape(-1, 3).mean(axis=0)
    assert np.abs(o2[changed].astype(np.float32) - mean).max() <= 1.0  # filled with the mean colour


def test_sparse_augmentor_keeps_valid_points_consistent(shifted_pair):
    img1, img2, flow = shifted_pair
    rng = np.random.default_rng(4)
    valid = (rng.random((H, W)) < 0.3).astype(np.float32)
    sparse_flow = flow * valid[..., None]
    cfg = replace(stage_augment("kitti", (64, 96)).without_photometric(), min_scale=0.3, max_scale=0.3,
                  spatial_prob=1.0, h_flip_prob=1.0)
    o1, o2, of, ov = SparseFlowAugmentor(cfg)(img1, img2, sparse_flow, valid, np.random.default_rng(5))
    assert ov.shape == (64, 96) and ov.dtype == np.float32 and set(np.unique(ov)) <= {0.0, 1.0}
    sel = ov > 0.5
    assert sel.mean() > 0.1
    new_w = int(round(W * 2**0.3))
    np.testing.assert_allclose(of[sel, 0], -T[0] * new_w / W, rtol=1e-5)  # h-flip: u negated
    assert (of[sel, 1] < 0).all() and (of[~sel] == 0).all()
    assert warp_error(o1, o2, of, mask=sel) < 3.0


def test_resize_sparse_flow_moves_points_and_scales_values():
    flow = np.zeros((10, 20, 2), np.float32)
    valid = np.zeros((10, 20), np.float32)
    flow[4, 6], valid[4, 6] = (2.0, -1.0), 1.0
    out_flow, out_valid = resize_sparse_flow(flow, valid, (60, 30))  # 3x
    ys, xs = np.nonzero(out_valid)
    assert (ys.tolist(), xs.tolist()) == ([13], [19])  # pixel centres: (6 + 0.5) * 3 - 0.5 = 19
    np.testing.assert_allclose(out_flow[13, 19], (6.0, -3.0))


def test_stage_presets():
    crop = (64, 96)
    assert (stage_augment("chairs", crop).min_scale, stage_augment("chairs", crop).max_scale) == (-0.1, 1.0)
    assert (stage_augment("things", crop).min_scale, stage_augment("things", crop).max_scale) == (-0.4, 0.8)
    assert (stage_augment("sintel", crop).min_scale, stage_augment("sintel", crop).max_scale) == (-0.2, 0.6)
    kitti = stage_augment("kitti", crop)
    assert (kitti.min_scale, kitti.max_scale, kitti.v_flip_prob) == (-0.2, 0.4, 0.0)
    dense = stage_augment("synthetic", crop)
    assert (dense.spatial_prob, dense.stretch_prob, dense.max_stretch) == (0.8, 0.8, 0.2)
    assert (dense.h_flip_prob, dense.v_flip_prob, dense.eraser_prob) == (0.5, 0.1, 0.5)
    assert dense.asymmetric_color_prob == 0.2 and dense.hue == pytest.approx(0.5 / 3.14)
    assert dense.brightness == dense.contrast == dense.saturation == 0.4
    with pytest.raises(InputError):
        stage_augment("nope", crop)
    with pytest.raises(InputError):
        AugmentConfig(crop_size=(64, 96), min_scale=1.0, max_scale=0.0)
