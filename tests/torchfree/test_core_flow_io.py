import struct

import cv2
import numpy as np
import pytest

from deqflow.errors import FileFormatError, InputError
from deqflow.flow_io import (
    disparity_to_flow,
    read_disparity,
    read_flo,
    read_flow,
    read_kitti_flow,
    read_pfm,
    write_flo,
    write_flow,
    write_kitti_flow,
    write_pfm,
)
from deqflow.image_io import pair_to_batch, read_image, to_model_input, write_image


def _random_flow(h=5, w=7, seed=0):
    return np.random.default_rng(seed).normal(0, 20, size=(h, w, 2)).astype(np.float32)


# --- .flo -----------------------------------------------------------------------------------------


def test_flo_round_trip_is_bit_exact_and_header_is_little_endian(tmp_path):
    flow = _random_flow()
    path = write_flo(tmp_path / "a.flo", flow)
    data = path.read_bytes()
    assert len(data) == 12 + 5 * 7 * 2 * 4
    magic, width, height = struct.unpack("<fii", data[:12])
    assert (magic, width, height) == (202021.25, 7, 5)
    # first pixel: u then v, little-endian float32
    assert struct.unpack("<ff", data[12:20]) == (float(flow[0, 0, 0]), float(flow[0, 0, 1]))
    back = read_flo(path)
    assert back.dtype == np.float32 and back.shape == (5, 7, 2)
    assert back.tobytes() == flow.tobytes()


def test_flo_hand_written_file(tmp_path):
    # 2 wide, 1 high: pixel (0,0) = (1.5, -2), pixel (0,1) = (3, 4)
    path = tmp_path / "hand.flo"
    path.write_bytes(struct.pack("<fii4f", 202021.25, 2, 1, 1.5, -2.0, 3.0, 4.0))
    np.testing.assert_array_equal(read_flo(path), [[[1.5, -2.0], [3.0, 4.0]]])


def test_flo_big_endian_file_is_recognised(tmp_path):
    path = tmp_path / "be.flo"
    path.write_bytes(struct.pack(">fii2f", 202021.25, 1, 1, 0.25, -8.0))
    np.testing.assert_array_equal(read_flo(path), [[[0.25, -8.0]]])


@pytest.mark.parametrize(
    "payload, message",
    [
        (struct.pack("<fii", 202021.25, 4, 3) + b"\0" * (4 * 3 * 8 - 4), "truncated"),
        (struct.pack("<fii", 202021.25, 4, 3) + b"\0" * (4 * 3 * 8 + 4), "longer than"),
        (struct.pack("<fii", 1.0, 4, 3) + b"\0" * 96, "magic"),
        (struct.pack("<fii", 202021.25, -4, 3), "implausible size"),
        (struct.pack("<fii", 202021.25, 0, 3), "implausible size"),
        (b"PIEH", "too short"),
        (b"", "empty"),
    ],
)
def test_corrupt_flo_raises_file_format_error(tmp_path, payload, message):
    path = tmp_path / "bad.flo"
    path.write_bytes(payload)
    with pytest.raises(FileFormatError, match=message) as info:
        read_flo(path)
    assert "bad.flo" in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileFormatError, match="not found.*nope.flo"):
        read_flo(tmp_path / "nope.flo")


def test_write_flo_rejects_channels_first(tmp_path):
    with pytest.raises(InputError, match="transpose"):
        write_flo(tmp_path / "x.flo", np.zeros((2, 4, 5), np.float32))


def test_interrupted_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    write_flo(tmp_path / "a.flo", _random_flow())

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr("deqflow.fileio.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_flo(tmp_path / "a.flo", _random_flow(seed=1))
    assert [p.name for p in tmp_path.iterdir()] == ["a.flo"]
    np.testing.assert_array_equal(read_flo(tmp_path / "a.flo"), _random_flow())


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    write_flo(tmp_path / "a.flo", _random_flow())
    write_flo(tmp_path / "a.flo", _random_flow(seed=1))  # overwrite in place
    with pytest.raises(InputError):
        write_kitti_flow(tmp_path / "b.png", np.full((3, 3, 2), np.nan))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.flo"]
    np.testing.assert_array_equal(read_flo(tmp_path / "a.flo"), _random_flow(seed=1))


# --- KITTI PNG ------------------------------------------------------------------------------------


def test_kitti_round_trip_within_quantisation(tmp_path):
    flow = _random_flow(6, 9)
    valid = np.ones((6, 9), np.float32)
    valid[2, 3] = valid[5, 0] = 0
    write_kitti_flow(tmp_path / "k.png", flow, valid)
    back, back_valid = read_kitti_flow(tmp_path / "k.png")
    assert back.dtype == np.float32 and back_valid.dtype == np.float32
    np.testing.assert_array_equal(back_valid, valid)
    m = valid > 0
    assert np.abs(back[m] - flow[m]).max() <= 1 / 128 + 1e-6  # rounding to 1/64 px
    np.testing.assert_array_equal(back[~m], 0.0)


def test_kitti_hand_built_png_decodes_to_known_values(tmp_path):
    # OpenCV writes B, G, R: B = valid, G = v, R = u
    raw = np.zeros((1, 3, 3), np.uint16)
    raw[0, 0] = (1, 2**15 + 64, 2**15 - 128)  # u = -2, v = 1
    raw[0, 1] = (1, 2**15, 2**15 + 32)  # u = 0.5, v = 0
    raw[0, 2] = (0, 0, 0)  # invalid, stored as all zeros
    cv2.imwrite(str(tmp_path / "hand.png"), raw)
    flow, valid = read_kitti_flow(tmp_path / "hand.png")
    np.testing.assert_array_equal(flow, [[[-2.0, 1.0], [0.5, 0.0], [0.0, 0.0]]])
    np.testing.assert_array_equal(valid, [[1, 1, 0]])


def test_kitti_writer_clips_rounds_and_fills_valid(tmp_path):
    flow = np.array([[[1000.0, -1000.0], [0.01, -0.01], [0.4 / 64, 0.0]]], np.float32)
    write_kitti_flow(tmp_path / "c.png", flow)
    raw = cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_UNCHANGED)
    # R: clipped to 65535; 0.01 px * 64 = 0.64 rounds to 1; 0.4 rounds to 0
    np.testing.assert_array_equal(raw[0, :, 2], [65535, 2**15 + 1, 2**15])
    np.testing.assert_array_equal(raw[0, :, 1], [0, 2**15 - 1, 2**15])
    np.testing.assert_array_equal(raw[0, :, 0], [1, 1, 1])


def test_kitti_reader_rejects_8bit_and_wrong_channels(tmp_path):
    cv2.imwrite(str(tmp_path / "eight.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileFormatError, match="eight.png.*16-bit 3-channel.*8-bit 3-channel"):
        read_kitti_flow(tmp_path / "eight.png")
    cv2.imwrite(str(tmp_path / "gray16.png"), np.zeros((4, 4), np.uint16))
    with pytest.raises(FileFormatError, match="16-bit 1-channel"):
        read_kitti_flow(tmp_path / "gray16.png")


def test_truncated_png_raises(tmp_path):
    write_kitti_flow(tmp_path / "k.png", _random_flow(20, 20))
    data = (tmp_path / "k.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="cut.png"):
        read_kitti_flow(tmp_path / "cut.png")


# --- PFM ------------------------------------------------------------------------------------------


def test_pfm_hand_written_is_flipped_bottom_up(tmp_path):
    # 2x2 single channel, little-endian; stored rows: bottom row (3, 4) first, then top row (1, 2)
    path = tmp_path / "d.pfm"
    path.write_bytes(b"Pf\n2 2\n-1.0\n" + struct.pack("<4f", 3, 4, 1, 2))
    np.testing.assert_array_equal(read_pfm(path), [[1, 2], [3, 4]])


def test_pfm_big_endian_three_channels(tmp_path):
    # 1 wide, 2 high, 3 channels, positive scale = big-endian; bottom row stored first
    path = tmp_path / "f.pfm"
    path.write_bytes(b"PF\n1 2\n1.0\n" + struct.pack(">6f", 4, 5, 6, 1, 2, 3))
    arr = read_pfm(path)
    assert arr.shape == (2, 1, 3) and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, [[[1, 2, 3]], [[4, 5, 6]]])


def test_pfm_round_trip(tmp_path):
    disp = np.random.default_rng(3).uniform(0, 100, (4, 6)).astype(np.float32)
    np.testing.assert_array_equal(read_pfm(write_pfm(tmp_path / "x.pfm", disp)), disp)
    rgb = np.random.default_rng(4).normal(size=(4, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(read_pfm(write_pfm(tmp_path / "y.pfm", rgb)), rgb)
    assert (tmp_path / "x.pfm").read_bytes().startswith(b"Pf\n6 4\n-1.0\n")


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"Pf\n2 2\n-1.0\n" + b"\0" * 12, "truncated"),
        (b"Pf\n2 2\n-1.0\n" + b"\0" * 20, "longer than"),
        (b"P6\n2 2\n255\n" + b"\0" * 12, "not a PFM"),
        (b"Pf\n2 2\n0\n" + b"\0" * 16, "non-zero"),
    ],
)
def test_corrupt_pfm_raises(tmp_path, payload, message):
    path = tmp_path / "bad.pfm"
    path.write_bytes(payload)
    with pytest.raises(FileFormatError, match=message):
        read_pfm(path)


# --- dispatch and disparity -----------------------------------------------------------------------


def test_read_flow_dispatch(tmp_path):
    flow = _random_flow()
    write_flo(tmp_path / "a.flo", flow)
    got, valid = read_flow(tmp_path / "a.flo")
    assert valid is None
    np.testing.assert_array_equal(got, flow)

    write_pfm(tmp_path / "a.pfm", flow)  # stored as 3 channels, third zero
    got, valid = read_flow(tmp_path / "a.pfm")
    assert valid is None and got.shape == (5, 7, 2)
    np.testing.assert_array_equal(got, flow)

    write_flow(tmp_path / "a.png", flow)
    got, valid = read_flow(tmp_path / "a.png")
    np.testing.assert_array_equal(valid, 1.0)
    assert np.abs(got - flow).max() <= 1 / 128 + 1e-6

    with pytest.raises(InputError, match="unknown extension '.txt'"):
        read_flow(tmp_path / "a.txt")


def test_write_flow_marks_invalid_pixels_so_read_flow_returns_the_mask(tmp_path):
    flow = _random_flow(3, 4)
    valid = np.ones((3, 4))
    valid[1, 2] = 0
    for ext in (".flo", ".pfm", ".png"):
        write_flow(tmp_path / f"m{ext}", flow, valid)
        got, got_valid = read_flow(tmp_path / f"m{ext}")
        np.testing.assert_array_equal(got_valid, valid)
        assert got[1, 2].tolist() == [0.0, 0.0]
    assert read_flo(tmp_path / "m.flo")[1, 2, 0] == np.float32(1e10)  # Middlebury 'unknown'


def test_read_flow_rejects_disparity_pfm(tmp_path):
    write_pfm(tmp_path / "d.pfm", np.ones((2, 2), np.float32))
    with pytest.raises(FileFormatError, match="1-channel"):
        read_flow(tmp_path / "d.pfm")


def test_disparity_png_and_pfm(tmp_path):
    raw = np.array([[0, 256, 512 + 64]], np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), raw)
    disp, valid = read_disparity(tmp_path / "d.png")
    np.testing.assert_array_equal(disp, [[0.0, 1.0, 2.25]])
    np.testing.assert_array_equal(valid, [[0, 1, 1]])

    write_pfm(tmp_path / "d.pfm", np.array([[1.5, np.inf, np.nan]], np.float32))
    disp, valid = read_disparity(tmp_path / "d.pfm")
    np.testing.assert_array_equal(disp, [[1.5, 0.0, 0.0]])
    np.testing.assert_array_equal(valid, [[1, 0, 0]])

    flow, fvalid = disparity_to_flow(np.array([[2.0, np.nan, 3.0]]), np.array([[1, 1, 0]]))
    np.testing.assert_array_equal(flow, [[[-2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_array_equal(fvalid, [[1, 0, 0]])


def test_disparity_png_must_be_16bit_gray(tmp_path):
    cv2.imwrite(str(tmp_path / "d.png"), np.zeros((2, 2), np.uint8))
    with pytest.raises(FileFormatError, match="16-bit 1-channel.*8-bit"):
        read_disparity(tmp_path / "d.png")


# --- images ---------------------------------------------------------------------------------------


def test_read_image_converts_depth_and_channels(tmp_path):
    bgr = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), bgr[:, :, ::-1])

    cv2.imwrite(str(tmp_path / "g16.png"), np.array([[0, 257, 65535, 385, 386]], np.uint16))
    gray = read_image(tmp_path / "g16.png")
    assert gray.shape == (1, 5, 3) and gray.dtype == np.uint8
    np.testing.assert_array_equal(gray[0, :, 0], [0, 1, 255, 1, 2])  # 385/257 = 1.498, 386/257 = 1.502
    np.testing.assert_array_equal(gray[:, :, 0], gray[:, :, 2])

    bgra = np.array([[[1, 2, 3, 0]]], np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), [[[3, 2, 1]]])


def test_read_image_errors_name_the_path(tmp_path):
    with pytest.raises(FileFormatError, match="not found.*missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(FileFormatError, match="text.png.*not an image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(FileFormatError, match="folder"):
        read_image(tmp_path)


def test_write_image_round_trip_and_batches(tmp_path):
    rgb = np.random.default_rng(5).integers(0, 256, (8, 16, 3), dtype=np.uint8)
    write_image(tmp_path / "sub" / "x.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "sub" / "x.png"), rgb)
    batch = to_model_input(rgb)
    assert batch.shape == (1, 3, 8, 16) and batch.dtype == np.float32
    assert batch[0, 0, 2, 5] == rgb[2, 5, 0] and batch[0, 2, 7, 15] == rgb[7, 15, 2]
    with pytest.raises(InputError, match=r"\(8, 16, 3\) and \(8, 8, 3\)"):
        pair_to_batch(rgb, rgb[:, :8])
    with pytest.raises(InputError, match="uint8"):
        write_image(tmp_path / "f.png", rgb.astype(np.float32))
