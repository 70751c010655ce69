import numpy as np
import pytest

from deqflow.errors import InputError
from deqflow.padding import InputPadder, check_divisible, check_model_input_size, min_size_for_levels


@pytest.mark.parametrize(
    "hw, mode, expected",
    [
        ((436, 1024), "sintel", (0, 0, 2, 2)),  # 436 % 8 = 4 -> 2 top, 2 bottom
        ((375, 1242), "kitti", (3, 3, 0, 1)),  # 375 % 8 = 7 -> 1 bottom; 1242 % 8 = 2 -> 6 = 3 + 3
        ((375, 1242), "sintel", (3, 3, 0, 1)),  # 1 row: extra pixel goes to the bottom
        ((370, 1241), "kitti", (3, 4, 0, 6)),  # 370 % 8 = 2 -> 6 bottom; 1241 % 8 = 1 -> 7 = 3 + 4
        ((370, 1241), "sintel", (3, 4, 3, 3)),
        ((128, 128), "sintel", (0, 0, 0, 0)),
        ((17, 30), "sintel", (1, 1, 3, 4)),  # 17 -> 24: 7 = 3 + 4; 30 -> 32: 2 = 1 + 1
    ],
)
def test_padding_sizes(hw, mode, expected):
    padder = InputPadder((1, 3, *hw), mode=mode)
    assert padder.padding == expected
    left, right, top, bottom = expected
    assert padder.padded_size == (hw[0] + top + bottom, hw[1] + left + right)
    assert padder.padded_size[0] % 8 == 0 and padder.padded_size[1] % 8 == 0


def test_divisor_other_than_8():
    assert InputPadder((10, 10), divisor=4).padding == (1, 1, 1, 1)
    assert InputPadder((10, 10), divisor=1).padding == (0, 0, 0, 0)


def test_pad_replicates_edges_and_unpad_restores():
    x = np.arange(2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    padder = InputPadder(x.shape, mode="sintel")  # 5 -> 8: top 1, bottom 2; 6 -> 8: left 1, right 1
    assert padder.padding == (1, 1, 1, 2)
    (p,) = padder.pad(x)
    assert p.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(p[:, :, 1:6, 1:7], x)
    np.testing.assert_array_equal(p[:, :, 0, 1:7], x[:, :, 0])  # top row replicated
    np.testing.assert_array_equal(p[:, :, 6, 1:7], x[:, :, -1])  # bottom rows replicated
    np.testing.assert_array_equal(p[:, :, 7, 1:7], x[:, :, -1])
    np.testing.assert_array_equal(p[:, :, 1:6, 0], x[:, :, :, 0])
    assert p[0, 0, 0, 0] == x[0, 0, 0, 0] and p[0, 0, 7, 7] == x[0, 0, 4, 5]  # corners
    np.testing.assert_array_equal(padder.unpad(p), x)


def test_pad_several_arrays_and_chw():
    a = np.ones((3, 7, 9), np.uint8)
    b = np.zeros((3, 7, 9), np.uint8)
    padder = InputPadder(a.shape, mode="kitti")
    pa, pb = padder.pad(a, b)
    assert pa.shape == pb.shape == (3, 8, 16) and pa.dtype == np.uint8
    np.testing.assert_array_equal(padder.unpad(pa), a)


def test_numpy_and_torch_give_identical_results():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(2, 3, 13, 21)).astype(np.float32)
    for mode in ("sintel", "kitti"):
        padder = InputPadder(x.shape, mode=mode)
        (pn,) = padder.pad(x)
        (pt,) = padder.pad(torch.from_numpy(x))
        assert isinstance(pt, torch.Tensor)
        np.testing.assert_array_equal(pt.numpy(), pn)
        np.testing.assert_array_equal(padder.unpad(pt).numpy(), x)
    # (C,H,W) and 5-D tensors work too
    padder = InputPadder((13, 21))
    (p3,) = padder.pad(torch.from_numpy(x[0]))
    np.testing.assert_array_equal(p3.numpy(), padder.pad(x[0])[0])
    (p5,) = padder.pad(torch.from_numpy(x[None]))
    assert tuple(p5.shape) == (1, 2, 3, 16, 24)


def test_shape_mismatch_is_an_input_error():
    padder = InputPadder((1, 3, 20, 20))
    with pytest.raises(InputError, match=r"\(20, 20\).*\(1, 3, 21, 20\)"):
        padder.pad(np.zeros((1, 3, 21, 20)))
    with pytest.raises(InputError, match=r"unpad.*\(24, 24\)"):
        padder.unpad(np.zeros((1, 2, 20, 20)))
    with pytest.raises(InputError, match="mode"):
        InputPadder((8, 8), mode="middle")
    with pytest.raises(InputError, match="positive"):
        InputPadder((0, 8))


def test_check_divisible():
    check_divisible(440, 1024)
    with pytest.raises(InputError, match="436x1024.*InputPadder"):
        check_divisible(436, 1024)


def test_min_size_arithmetic():
    # levels have size floor(H/8 / 2**i); the coarsest must be >= 2
    assert min_size_for_levels(4) == 128
    assert min_size_for_levels(2) == 32
    assert min_size_for_levels(1) == 16
    for h in (96, 104, 120):  # 96 and 104 give NaN in the official model
        with pytest.raises(InputError, match=f"{h}x200 is too small.*at least 128.*Upscale"):
            check_model_input_size(h, 200)
    for h in (128, 136):  # fine in the official model
        check_model_input_size(h, 168)
    for levels in (1, 2, 3, 4, 5):  # the bound is tight: the smallest accepted size, 8 pixels less is refused
        smallest = min_size_for_levels(levels)
        check_model_input_size(smallest, smallest, levels=levels)
        with pytest.raises(InputError, match=f"at least {smallest}"):
            check_model_input_size(smallest - 8, smallest, levels=levels)
    with pytest.raises(InputError, match="at least 1 level"):
        min_size_for_levels(0)
    check_model_input_size(32, 32, levels=2)
    with pytest.raises(InputError, match="multiple of 8"):
        check_model_input_size(130, 200)
