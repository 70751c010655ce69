"""Reduced-resolution inference (deqflow.resolution, `deqflow infer --scale/--max-side`): the sizes the model runs
at, the flow brought back to the input size with exact per-axis vector factors (hand-computed fields), and the
whole path through `deqflow infer` on the committed tiny split export (pair, warm-started folder, refusals)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from helpers import TINY_ONNX, TINY_ONNX_SIZE

from deqflow.cli import main
from deqflow.errors import InputError
from deqflow.flow_io import read_flo
from deqflow.image_io import write_image
from deqflow.resolution import Resolution, downscale_pair, upsample_flow


@pytest.mark.parametrize("option, size, expected", [
    (Resolution(scale=0.5), (1080, 1920), (544, 960)),  # 540 -> nearest multiple of 8
    (Resolution(max_side=512), (1080, 1920), (288, 512)),
    (Resolution(max_side=500), (1080, 1920), (280, 496)),  # the longer side never exceeds N
    (Resolution(scale=0.35), (500, 741), (176, 256)),
    (Resolution(max_side=1000), (500, 741), (500, 741)),  # within the limit: untouched, not rounded
    (Resolution(scale=1.0), (500, 741), (500, 741)),
    (Resolution(), (500, 741), (500, 741)),
])
def test_model_size(option, size, expected):
    assert option.model_size(size) == expected


@pytest.mark.parametrize("kw, words", [({"scale": 0.5, "max_side": 100}, "not both"), ({"scale": 0.0}, "(0, 1]"),
                                       ({"scale": 1.5}, "(0, 1]"), ({"scale": float("nan")}, "(0, 1]"),
                                       ({"max_side": 4}, "at least 8")])
def test_bad_options_are_refused(kw, words):
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace("]", r"\]")):
        Resolution(**kw)


def test_constant_flow_at_half_size_doubles():
    small = np.empty((4, 6, 2), np.float32)
    small[..., 0], small[..., 1] = 1.5, -0.25
    full = upsample_flow(small, (8, 12))
    assert full.shape == (8, 12, 2) and full.dtype == np.float32
    np.testing.assert_array_equal(full[..., 0], 3.0)
    np.testing.assert_array_equal(full[..., 1], -0.5)


def test_zoom_field_comes_back_exactly_with_per_axis_factors():
    """A zoom motion u = k (X - cx), v = k (Y - cy) (continuous pixel coordinates, centres at i + 0.5) sampled at
    540x968 for a 1080x1920 input: its bilinear upsampling, with u times 1920/968 and v times 1080/540, is the
    full-size field at every pixel whose centre lies between small pixel centres (1e-4 px); one common factor of
    2 would be off by up to k * 1920 * (1 - 968/960) / 2 px in u."""
    (hs, ws), (h, w), k, (cx, cy) = (540, 968), (1080, 1920), 0.01, (700.0, 400.0)
    xs_small = (np.arange(ws) + 0.5) * w / ws  # small pixel centres in full-size coordinates
    ys_small = (np.arange(hs) + 0.5) * h / hs
    small = np.empty((hs, ws, 2), np.float32)
    small[..., 0] = (k * (xs_small - cx) * ws / w)[None, :]  # motion in small-image pixels
    small[..., 1] = (k * (ys_small - cy) * hs / h)[:, None]
    full = upsample_flow(small, (h, w))
    x, y = np.arange(w) + 0.5, np.arange(h) + 0.5
    inner_x = (x >= xs_small[0]) & (x <= xs_small[-1])
    inner_y = (y >= ys_small[0]) & (y <= ys_small[-1])
    np.testing.assert_allclose(full[inner_y][:, inner_x, 0], np.broadcast_to(k * (x[inner_x] - cx),
                                                                             (inner_y.sum(), inner_x.sum())), atol=1e-4)
    np.testing.assert_allclose(full[inner_y][:, inner_x, 1], np.broadcast_to(k * (y[inner_y] - cy)[:, None],
                                                                             (inner_y.sum(), inner_x.sum())), atol=1e-4)
    one_factor = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)[..., 0] * 2.0
    assert float(np.abs(one_factor[inner_y][:, inner_x] - full[inner_y][:, inner_x, 0]).max()) > 0.05


def test_downscale_is_area_interpolation_and_identity_at_full_size():
    img = np.zeros((8, 8, 3), np.uint8)
    img[::2, ::2] = 200  # one bright pixel per 2x2 block: the area average is 50 everywhere
    a, b = downscale_pair(img, img, (4, 4))
    assert a.shape == (4, 4, 3) and int(a.min()) == int(a.max()) == 50 and np.array_equal(a, b)
    same = downscale_pair(img, img, (8, 8))
    assert same[0] is img


# --- through `deqflow infer` on the tiny static 64x96 export --------------------------------------------------


@pytest.fixture
def big_pair(tmp_path):
    """A smooth 128x192 pair (twice the export's size) moved by (4, -2) px, as files."""
    rng = np.random.default_rng(7)
    base = cv2.resize(rng.random((20, 30, 3)).astype(np.float32), (210, 140), interpolation=cv2.INTER_CUBIC)
    img = np.clip(base * 255, 0, 255).astype(np.uint8)
    frames = [np.ascontiguousarray(img[6 - 2 * i:134 - 2 * i, 4 + 4 * i:196 + 4 * i]) for i in range(3)]
    for i, frame in enumerate(frames):
        write_image(tmp_path / "frames" / f"f{i}.png", frame)
    return tmp_path / "frames", frames


def test_infer_max_side_returns_the_input_size_and_equals_upsampled_small_run(big_pair, tmp_path):
    from runtime import FlowEstimator, create_backend

    folder, frames = big_pair
    pair = ["--image1", str(folder / "f0.png"), "--image2", str(folder / "f1.png")]
    rc = main(["infer", "--model", str(TINY_ONNX), *pair, "--max-side", "96", "--threads", "1",
               "--output", str(tmp_path / "out")])
    assert rc == 0
    flow = read_flo(tmp_path / "out" / "flow.flo")
    assert flow.shape == (128, 192, 2)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["size"] == [128, 192] and summary["model_size"] == list(TINY_ONNX_SIZE)
    assert summary["resolution"] == {"max_side": 96}
    with create_backend("onnxruntime", TINY_ONNX, threads=1) as backend:
        small = FlowEstimator(backend)(*downscale_pair(frames[0], frames[1], TINY_ONNX_SIZE))
    np.testing.assert_allclose(flow, upsample_flow(small.flow, (128, 192)), atol=1e-5)


def test_infer_folder_warm_starts_at_the_reduced_size(big_pair, tmp_path):
    folder, _ = big_pair
    out = tmp_path / "seq"
    rc = main(["infer", "--model", str(TINY_ONNX), "--folder", str(folder), "--scale", "0.5", "--warm-start",
               "--threads", "1", "--format", "flo", "--output", str(out)])
    assert rc == 0
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["warm"] for r in records] == [False, True]
    assert read_flo(out / "flow" / "f1.flo").shape == (128, 192, 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_size"] == [64, 96] and summary["resolution"] == {"scale": 0.5}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processing"]["resolution"] == {"scale": 0.5}
    rc = main(["infer", "--model", str(TINY_ONNX), "--folder", str(folder), "--warm-start", "--threads", "1",
               "--format", "flo", "--output", str(out)])  # a full-size rerun cannot reuse the reduced frames
    assert rc == 2


@pytest.mark.parametrize("flags, words", [
    (["--max-side", "64"], ("--max-side 64 runs the model at 40x64", "exported for 64x96", "--max-side 96")),
    (["--scale", "0.1"], ("--scale 0.1 runs the model at 16x16", "minimum 32x32", "--scale 0.25")),
])
def test_infer_refuses_a_reduced_size_the_model_cannot_take(big_pair, tmp_path, capsys, flags, words):
    folder, _ = big_pair
    rc = main(["infer", "--model", str(TINY_ONNX), "--image1", str(folder / "f0.png"), "--image2",
               str(folder / "f1.png"), *flags, "--threads", "1", "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
