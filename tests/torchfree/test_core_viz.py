import cv2
import numpy as np
import pytest

from deqflow.errors import InputError
from deqflow.image_io import read_image, write_image
from deqflow.viz import (
    color_wheel_image,
    error_map,
    flow_to_color,
    make_color_wheel,
    residual_plot,
    side_by_side,
)


def test_wheel_construction():
    wheel = make_color_wheel()
    assert wheel.shape == (55, 3)
    # segment starts: red, yellow, green, cyan, blue, magenta (15, 6, 4, 11, 13, 6 hues)
    for index, rgb in [(0, (255, 0, 0)), (15, (255, 255, 0)), (21, (0, 255, 0)), (25, (0, 255, 255)),
                       (36, (0, 0, 255)), (49, (255, 0, 255))]:
        assert tuple(wheel[index]) == rgb
    assert tuple(wheel[13]) == (255, 221, 0)  # floor(255 * 13/15) = floor(221.0)
    assert tuple(wheel[27]) == (0, 209, 255)  # 255 - floor(255 * 2/11) = 255 - 46
    assert tuple(wheel[54]) == (255, 0, 43)  # 255 - floor(255 * 5/6) = 255 - 212


def test_flow_to_color_hand_values():
    # Normalised by the largest radius (1, + eps 1e-5), so each unit vector has radius 0.99999.
    flow = np.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]], np.float32)
    img = flow_to_color(flow)
    assert img.dtype == np.uint8 and img.shape == (1, 4, 3)
    # (1, 0): atan2(-0, -1) = -pi -> hue index 0, red; G = floor(255 * (1 - 0.99999)) = 0
    assert tuple(img[0, 0]) == (255, 0, 0)
    # (0, 1): atan2(-1, -0)/pi = -0.5 -> index 13.5: G = (221 + 238)/2 = 229.5 -> 1 - r(1 - 0.9) -> 229
    assert tuple(img[0, 1]) == (255, 229, 0)
    # (-1, 0): angle 0 -> index 27 = (0, 209, 255)
    assert tuple(img[0, 2]) == (0, 209, 255)
    # zero flow is white
    assert tuple(img[0, 3]) == (255, 255, 255)
    np.testing.assert_array_equal(flow_to_color(flow, convert_to_bgr=True), img[:, :, ::-1])


def test_saturation_blend_and_dimming():
    flow = np.array([[[0.0, -2.0], [-1.0, 0.0], [np.nan, 0.0], [0.0, np.inf]]])
    img = flow_to_color(flow)
    # the max-radius pixel is fully saturated: one channel 0 and one 255
    assert img[0, 0].min() == 0 and img[0, 0].max() == 255
    # half radius r = 1/2.00001 towards hue (0, 209, 255): R = 1 - r -> 127.5006,
    # G = 1 - r * 46/255 -> 232.0001, B = 1 -> 255 (floored)
    assert tuple(img[0, 1]) == (127, 232, 255)
    # non-finite pixels are black and do not count for the maximum radius
    assert tuple(img[0, 2]) == (0, 0, 0) and tuple(img[0, 3]) == (0, 0, 0)
    # beyond max_flow: the hue dimmed to 75 %: floor(0.75 * 255) = 191
    dimmed = flow_to_color(np.array([[[4.0, 0.0], [1.0, 0.0]]]), max_flow=2.0)
    assert tuple(dimmed[0, 0]) == (191, 0, 0)
    assert tuple(dimmed[0, 1]) == (255, 127, 127)  # radius 0.5: 1 - 0.5 * (1 - 0) -> 127
    with pytest.raises(InputError, match="transpose"):
        flow_to_color(np.zeros((2, 3, 4)))


def test_color_wheel_legend():
    img = color_wheel_image(64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (255, 255, 255)  # outside the disc
    assert img[31:33, 31:33].min() > 240  # near-zero flow in the centre is almost white
    r, g, b = img[32, 62]  # near the right edge: rightwards flow, radius ~0.95, red
    assert r == 255 and g < 40 and b < 40


def test_error_map_linear_and_kitti(tmp_path):
    gt = np.array([[[0.0, 0.0], [0.0, 20.0], [5.0, 0.0]]])
    pred = gt + np.array([[[0.0, 0.0], [6.0, 8.0], [100.0, 0.0]]])  # EPE 0, 10, 100 (last one invalid)
    valid = np.array([[1, 1, 0]])
    img = error_map(pred, gt, valid)
    assert img.shape == (1, 3, 3) and img.dtype == np.uint8
    inferno = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_INFERNO)[0, :, ::-1]
    np.testing.assert_array_equal(img[0, 0], inferno[0])  # zero error: bottom of the colormap
    np.testing.assert_array_equal(img[0, 1], inferno[1])  # largest valid error: top
    assert tuple(img[0, 2]) == (0, 0, 0)  # invalid
    kitti = error_map(pred, gt, valid, scale="kitti")
    assert tuple(kitti[0, 0]) == (49, 54, 149)  # EPE 0: lowest class
    # EPE 10, |gt| 20: min(10/3, 10/(0.05 * 20)) = 3.33 -> class [2, 4)
    assert tuple(kitti[0, 1]) == (253, 174, 97)
    write_image(tmp_path / "err.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "err.png"), img)
    with pytest.raises(InputError, match="scale"):
        error_map(pred, gt, scale="log")


def test_residual_plot_writes_png(tmp_path):
    path = residual_plot({"abs": [1.0, 0.1, 0.01, 1e-3], "rel": np.array([0.5, 0.05, 0.0, 5e-4])},
                         tmp_path / "res.png", title="residual")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = read_image(path)
    assert img.shape == (400, 600, 3) and img.std() > 10
    assert [p.name for p in tmp_path.iterdir()] == ["res.png"]
    with pytest.raises(InputError, match="extension"):
        residual_plot({"a": [1.0]}, tmp_path / "res.xyz")
    with pytest.raises(InputError, match="1-D"):
        residual_plot({"a": np.ones((2, 3))}, tmp_path / "r.png")


def test_side_by_side_panel():
    a = np.zeros((40, 30, 3), np.uint8)
    b = np.full((20, 10), 128, np.uint8)  # gray, half height: scaled to 40x20
    panel = side_by_side([a, b], ["image1", "flow"])
    strip = 18
    assert panel.dtype == np.uint8 and panel.shape == (strip + 40, 30 + 4 + 20, 3)
    assert panel[:strip, :30].max() > 0  # the label was drawn on the black strip
    assert (panel[strip:, 34:] == 128).all()
    with pytest.raises(InputError, match="2 images but 1 labels"):
        side_by_side([a, b], ["x"])
