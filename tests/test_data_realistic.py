"""The photograph-like synthetic data: determinism per seed, exact flow under homographies and
non-rigid motion, camera effects that stay in range, the texture pools and the held-out split."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
from test_data_synthetic import warp_back  # a sibling test module: pytest puts tests/ on the path

from deqflow.errors import InputError
from training.data import (
    HELDOUT_PHOTOS,
    PhotometricConfig,
    RealismConfig,
    SyntheticFlowDataset,
    build_training_set,
    photo_pool,
    render_pair,
    synthetic_preset,
)
from training.data.heldout_real import HeldoutRealConfig, heldout_homography_pairs, warped_photo_pair
from training.data.homography import apply_homography, random_homography, smooth_field
from training.data.photometric import camera_frames, motion_blur
from training.data.photos import load_photo_full


def exact_config(**changes):
    return replace(synthetic_preset("realistic"), photometric=False, max_displacement=24.0, **changes)


def test_realistic_deterministic_per_seed_and_index():
    a = SyntheticFlowDataset(size=(64, 80), length=10, seed=3, preset="realistic")
    b = SyntheticFlowDataset(size=(64, 80), length=10, seed=3, preset="realistic")
    s1, s2 = a.sample(5), b.sample(5)
    for x, y in zip((s1.image1, s1.image2, s1.flow, s1.noc), (s2.image1, s2.image2, s2.flow, s2.noc)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.sample(6).flow, s1.flow)
    other = SyntheticFlowDataset(size=(64, 80), length=10, seed=4, preset="realistic")
    assert not np.array_equal(other.sample(5).flow, s1.flow)


def test_classic_preset_is_the_default_data():
    classic = SyntheticFlowDataset(size=(64, 80), length=4, seed=2, preset="classic").sample(1)
    default = SyntheticFlowDataset(size=(64, 80), length=4, seed=2).sample(1)
    np.testing.assert_array_equal(classic.image1, default.image1)
    np.testing.assert_array_equal(classic.flow, default.flow)


@pytest.mark.parametrize("index", range(6))
def test_realistic_flow_is_exact(index):
    s = render_pair(np.random.default_rng([11, index]), (128, 160), exact_config())
    diff = np.abs(warp_back(s.image2, s.flow) - s.image1).mean(axis=2)
    assert s.noc.mean() > 0.5
    assert np.median(diff[s.noc]) < 3.0
    if (~s.noc).sum() > 100:
        assert np.median(diff[~s.noc]) > np.median(diff[s.noc])


def test_homography_only_scene_warps_back_within_tolerance():
    cfg = exact_config(n_layers=(0, 0), realism=RealismConfig(nonrigid_prob=0.0, small_motion_prob=0.0))
    for seed in range(4):
        s = render_pair(np.random.default_rng([5, seed]), (96, 128), cfg)
        diff = np.abs(warp_back(s.image2, s.flow) - s.image1).mean(axis=2)
        assert np.median(diff[s.noc]) < 2.0 and np.percentile(diff[s.noc], 90) < 8.0


def test_random_homography_is_capped_and_perspective():
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:60, 0:80].astype(np.float64)
    perspective = 0
    for _ in range(20):
        h = random_homography(rng, (60, 80), 10.0)
        disp = apply_homography(h, xs, ys) - np.stack([xs, ys], -1)
        assert np.linalg.norm(disp, axis=-1).max() <= 10.0 + 1e-3
        perspective += abs(h[2, 0]) + abs(h[2, 1]) > 1e-7
    assert perspective >= 15


def test_smooth_field_bounded():
    f = smooth_field(np.random.default_rng(1), (64, 96), amplitude=3.0, period=48.0)
    assert f.shape == (64, 96, 2) and np.abs(f).max() <= 3.0 + 1e-5
    assert np.abs(np.diff(f, axis=1)).max() < 1.0  # smooth: no folding


def test_realistic_motion_statistics():
    cfg = replace(synthetic_preset("realistic"), max_displacement=40.0)
    mags = np.concatenate([np.linalg.norm(render_pair(np.random.default_rng([2, i]), (96, 128), cfg).flow,
                                          axis=2).ravel() for i in range(24)])
    assert mags.max() <= 40.0 * 1.1
    assert np.mean(mags < 1.0) > 0.05  # a share of sub-pixel motion
    assert np.percentile(mags, 95) > 0.25 * 40.0


def test_camera_effects_stay_in_range_and_change_the_frames():
    rng = np.random.default_rng(3)
    base = np.random.default_rng(4).uniform(20, 235, (48, 64, 3)).astype(np.float32)
    cfg = PhotometricConfig(jpeg_prob=1.0, motion_blur_prob=1.0)
    for _ in range(5):
        f1, f2 = camera_frames(rng, [base.copy(), base.copy()], np.array([4.0, 1.0]), cfg)
        assert f1.dtype == f2.dtype == np.uint8 and f1.shape == base.shape
        assert not np.array_equal(f1, f2)
        ratio = f2.astype(np.float64).mean() / max(f1.astype(np.float64).mean(), 1.0)
        assert 0.4 < ratio < 2.5
    with pytest.raises(InputError):
        PhotometricConfig(jpeg_quality=(90, 20))


def test_camera_effects_off_keep_the_rendering():
    cfg = PhotometricConfig(exposure_log2=0, gain_change_log2=0, gamma_log2=0, color_change=0, vignetting=0,
                            read_noise=0, shot_noise=0, jpeg_prob=0, motion_blur_prob=0)
    base = np.random.default_rng(4).uniform(0, 255, (16, 16, 3)).astype(np.float32)
    f1, f2 = camera_frames(np.random.default_rng(0), [base, base], np.zeros(2), cfg)
    np.testing.assert_array_equal(f1, np.rint(base).astype(np.uint8))
    np.testing.assert_array_equal(f1, f2)


def test_motion_blur_keeps_mean_and_smooths_along_direction():
    img = np.zeros((21, 21), np.float32)
    img[10, 10] = 1.0
    out = motion_blur(img, np.array([1.0, 0.0]), 5.0)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    assert out[10].sum() == pytest.approx(1.0, abs=1e-5)  # horizontal streak only


def test_pools_keep_heldout_photos_out_of_training():
    from training.data.photos import PHOTO_NAMES

    assert "stereo_motorcycle" not in PHOTO_NAMES
    extended = photo_pool("extended")
    assert len(extended) >= 12
    from training.data.photos import TEST_PHOTOS

    assert not set(TEST_PHOTOS) & set(HELDOUT_PHOTOS)
    for name in HELDOUT_PHOTOS + TEST_PHOTOS:
        photo = load_photo_full(name)
        if photo is None:
            continue
        small = cv2.resize(photo, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA)
        aspect = photo.shape[0] / photo.shape[1]
        for pyramid in extended:
            level = pyramid[0]
            if abs(level.shape[0] / level.shape[1] - aspect) < 1e-2:  # same framing: compare the pixels
                resized = cv2.resize(level, small.shape[1::-1], interpolation=cv2.INTER_AREA)
                assert np.abs(resized - small).mean() > 5.0, f"held-out/test photo {name} is in the training pool"
    with pytest.raises(InputError):
        photo_pool("nope")


def test_heldout_pairs_are_exact_and_deterministic():
    cfg = HeldoutRealConfig(size=(96, 128), motion_levels=(4.0,))
    a, b = heldout_homography_pairs(cfg), heldout_homography_pairs(cfg)
    assert len(a) >= 1 and a[0].name.endswith("4px")
    np.testing.assert_array_equal(a[0].image1, b[0].image1)
    photo = load_photo_full(HELDOUT_PHOTOS[0])
    exact = replace(cfg, photometric=PhotometricConfig(exposure_log2=0, gain_change_log2=0, gamma_log2=0,
                                                       color_change=0, vignetting=0, read_noise=0, shot_noise=0,
                                                       jpeg_prob=0, motion_blur_prob=0))
    img1, img2, flow, valid = warped_photo_pair(photo, np.random.default_rng(0), (96, 128), 6.0, exact)
    diff = np.abs(warp_back(img2, flow) - img1).mean(axis=2)
    assert np.median(diff[valid > 0]) < 2.0 and np.abs(flow).max() <= 6.0


def test_presets_and_training_set():
    with pytest.raises(InputError):
        synthetic_preset("photoreal")
    ds = build_training_set("synthetic", image_size=(64, 80), synthetic_preset="realistic")
    image1, image2, flow, valid = ds[0]
    assert image1.shape == (3, 64, 80) and flow.shape == (2, 64, 80)
    assert ds.config.realism is not None


def test_heldout_scoring_sweep_and_baselines():
    import torch

    from training.config import ModelConfig
    from training.deq.config import DEQConfig
    from training.heldout_eval import baseline_scores, score_set
    from training.model.deq_flow import DEQFlow

    torch.manual_seed(0)
    model = DEQFlow(ModelConfig(variant="T", encoder_dims=(16, 24, 32),
                                deq=DEQConfig(f_solver="fixed_point", f_max_iter=4))).eval()
    pairs = heldout_homography_pairs(HeldoutRealConfig(size=(128, 128), motion_levels=(4.0,)))[:2]
    scored = score_set(model, pairs, (2, 5), "test", baselines=("zero",))
    assert scored["steps"] == [2, 5] and len(scored["deqflow"]["epe_per_pixel"]) == 2
    assert len(scored["rel_residual"]) == 2 and set(scored["per_pair"]) == {p.name for p in pairs}
    zero = baseline_scores({"h": pairs}, ("zero",))["h"]["zero"]
    assert zero == pytest.approx(scored["baselines"]["zero"]["epe_per_pixel"]) and 0 < zero <= 4.0


def test_heldout_motorcycle_pair_is_the_demo_pair():
    """The held-out set's real pair comes from the one Middlebury loader (deqflow.middlebury)."""
    from deqflow.middlebury import motorcycle
    from training.data.heldout_real import motorcycle_pair

    pair = motorcycle_pair()
    left, _, flow, valid = motorcycle()
    assert pair.name == "motorcycle" and pair.image1.shape == left.shape == (500, 741, 3)
    assert np.array_equal(pair.flow, flow) and np.array_equal(pair.valid, valid)


def test_realistic_mix_draws_classic_scenes_at_its_share(monkeypatch):
    """realistic-mix: 30 % of the scenes come from the classic layered renderer (same textures); a classic
    scene is exactly what the classic renderer makes from the generator after the share's draw."""
    import training.data.synthetic as synthetic

    assert synthetic_preset("realistic-mix").realism.classic_share == 0.3
    assert synthetic_preset("realistic").realism.classic_share == 0.0
    calls = {"realistic": 0}

    def fake_realistic(rng, size, config):
        calls["realistic"] += 1
        z = np.zeros((*size, 3), np.float32)
        return z, z, np.zeros((*size, 2), np.float32), np.ones(size, bool)

    monkeypatch.setattr(synthetic, "render_realistic_pair", fake_realistic)
    cfg = replace(synthetic_preset("realistic-mix"), photometric=False, max_displacement=8.0, n_layers=(0, 1))
    n = 120
    for i in range(n):
        render_pair(np.random.default_rng([7, i]), (32, 40), cfg)
    classic = n - calls["realistic"]
    assert 0.18 * n <= classic <= 0.42 * n, classic  # binomial(120, 0.3): mean 36, sd 5
    # the first seed whose draw picks the classic renderer reproduces it exactly
    i = next(i for i in range(n) if np.random.default_rng([7, i]).random() < 0.3)
    rng = np.random.default_rng([7, i])
    got = render_pair(rng, (32, 40), cfg)
    ref_rng = np.random.default_rng([7, i])
    ref_rng.random()
    ref = render_pair(ref_rng, (32, 40), replace(cfg, realism=None))
    np.testing.assert_array_equal(got.flow, ref.flow)
    np.testing.assert_array_equal(got.image2, ref.image2)


@pytest.mark.parametrize("index", range(4))
def test_stereo_scenes_are_horizontal_one_signed_bounded_and_exact(index):
    """A rectified stereo scene: no vertical motion at all, one sign of disparity over the frame, at most
    max_displacement, nearer layers moving more, and the flow still exact (frame 2 warped back is frame 1)."""
    cfg = exact_config()
    cfg = replace(cfg, realism=replace(cfg.realism, stereo_share=1.0))
    s = render_pair(np.random.default_rng([13, index]), (128, 160), cfg)
    assert np.all(s.flow[..., 1] == 0)
    fx = s.flow[..., 0]
    assert np.all(fx >= 0) or np.all(fx <= 0)
    assert 0.5 < np.abs(fx).max() <= cfg.max_displacement + 1e-4
    diff = np.abs(warp_back(s.image2, s.flow) - s.image1).mean(axis=2)
    assert s.noc.mean() > 0.3 and np.median(diff[s.noc]) < 3.0


def test_stereo_share_splits_the_scenes(monkeypatch):
    """realistic-stereo renders about a quarter of its photograph-like scenes as stereo pairs (the classic share
    aside); at share 0 (the other presets) no scene is."""
    import training.data.realistic as realistic

    calls = []
    real_maps = realistic._stereo_maps
    monkeypatch.setattr(realistic, "_stereo_maps", lambda *a: calls.append(1) or real_maps(*a))
    cfg = replace(synthetic_preset("realistic-stereo"), photometric=False)
    cfg = replace(cfg, realism=replace(cfg.realism, classic_share=0.0))
    for i in range(80):
        render_pair(np.random.default_rng([17, i]), (32, 40), cfg)
    assert 10 <= len(calls) <= 30, len(calls)  # binomial(80, 0.25): mean 20, sd 3.9
    before = len(calls)
    precise = replace(synthetic_preset("realistic-precise"), photometric=False)
    for i in range(20):
        render_pair(np.random.default_rng([17, i]), (32, 40), precise)
    assert len(calls) == before


def test_classic_share_must_be_a_probability():
    with pytest.raises(InputError, match="classic_share must be a probability"):
        RealismConfig(classic_share=1.5)


def test_train_cli_offers_exactly_the_presets():
    """`deqflow train --synthetic-preset` lists the names itself (importing the presets would load torch when
    the CLI builds its parser); this keeps the list equal to SYNTHETIC_PRESETS."""
    import argparse

    from training.commands import train
    from training.data.scene_config import SYNTHETIC_PRESETS

    p = argparse.ArgumentParser()
    train.add_arguments(p)
    action = next(a for a in p._actions if a.dest == "synthetic_preset")
    assert sorted(action.choices) == sorted(SYNTHETIC_PRESETS)


def test_real_test_set_is_exact_deterministic_and_apart_from_validation():
    from training.data.test_real import RealTestConfig, real_test_pairs

    cfg = RealTestConfig(size=(96, 128), motion_levels=(4.0,))
    a, b = real_test_pairs(cfg), real_test_pairs(cfg)
    assert [p.name for p in a] == [f"{n}-{k}-4px" for n in ("chelsea", "coins", "camera", "clock")
                                   for k in ("homography", "deformed")]
    np.testing.assert_array_equal(a[1].image1, b[1].image1)
    np.testing.assert_array_equal(a[1].flow, b[1].flow)
    assert cfg.seed != HeldoutRealConfig().seed
    # the deformed pair's flow is the homography plus a smooth field: not a homography any more
    deformed = a[1].flow
    assert np.abs(deformed).max() <= 4.0 * (1 + cfg.deform_share) + 1e-3
    ys, xs = np.mgrid[0:96, 0:128].astype(np.float32)
    src = np.stack([xs, ys], -1).reshape(-1, 2)

    def homography_misfit(flow: np.ndarray) -> float:
        dst = src + flow.reshape(-1, 2)
        hom, _ = cv2.findHomography(src, dst, 0)
        fit = cv2.perspectiveTransform(src[None], hom)[0]
        return float(np.abs(fit - dst).max())

    assert homography_misfit(a[0].flow) < 1e-2 < 0.05 < homography_misfit(deformed)
