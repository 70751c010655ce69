"""Dataset loaders on fake copies of the standard layouts; stage mixes; generic folders; errors."""

import cv2
import numpy as np
import pytest
import torch
from fake_layouts import write_fake_all
from torch.utils.data import DataLoader

from deqflow.errors import InputError
from deqflow.flow_io import read_kitti_flow, write_flo, write_kitti_flow
from deqflow.image_io import write_image
from training.data import (
    HD1K,
    KITTI,
    FlyingChairs,
    FlyingThings3D,
    FolderPairs,
    MpiSintel,
    StereoPairDataset,
    build_training_set,
    render_pair,
    stage_augment,
)

SIZE = (64, 96)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    write_fake_all(root, size=SIZE)
    return root


def check_sample(sample, size=SIZE):
    image1, image2, flow, valid = sample
    assert image1.shape == image2.shape == (3, *size)
    assert flow.shape == (2, *size) and valid.shape == size
    for t in sample:
        assert t.dtype == torch.float32
    assert 0 <= float(image1.min()) and float(image1.max()) <= 255
    assert set(torch.unique(valid).tolist()) <= {0.0, 1.0}


def warp_error(image1, image2, flow, valid) -> float:
    """Median |image1(p) - image2(p + flow)| over valid pixels whose target is inside the frame."""
    img1, img2 = image1.permute(1, 2, 0).numpy(), image2.permute(1, 2, 0).numpy()
    f = flow.permute(1, 2, 0).numpy()
    h, w = f.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    tx, ty = xs + f[..., 0], ys + f[..., 1]
    back = cv2.remap(img2, tx, ty, cv2.INTER_LINEAR)
    sel = (valid.numpy() > 0.5) & (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return float(np.median(np.abs(back - img1).mean(axis=2)[sel]))


def test_chairs(fake_root):
    data = fake_root / "FlyingChairs_release" / "data"
    train, val = FlyingChairs(data, "training"), FlyingChairs(data, "validation")
    assert (len(train), len(val)) == (3, 1)
    sample = train[0]
    check_sample(sample)
    assert bool((sample[3] == 1).all())  # dense: valid everywhere
    assert warp_error(*sample) < 4.0  # the fake content is a real flow pair
    split = fake_root / "my_split.txt"
    split.write_text("2\n2\n1\n1\n")
    assert len(FlyingChairs(data, "validation", split_file=split)) == 2


def test_chairs_without_split_file_is_a_clear_error(tmp_path, fake_root):
    data = tmp_path / "data"
    data.mkdir()
    for f in (fake_root / "FlyingChairs_release" / "data").iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    with pytest.raises(InputError, match="chairs_split.txt"):
        FlyingChairs(data)


def test_things(fake_root):
    root = fake_root / "FlyingThings3D"
    clean, final = FlyingThings3D(root, "frames_cleanpass"), FlyingThings3D(root, "frames_finalpass")
    # 2 sequences x 3 pairs x 2 directions, left camera
    assert len(clean) == len(final) == 12
    assert len(FlyingThings3D(root, split="TEST")) == 12
    assert len(FlyingThings3D(root, cameras=("left", "right"), directions=("into_future",))) == 12
    for i in (0, 11):  # a forward and a backward pair
        check_sample(clean[i])
        assert warp_error(*clean[i]) < 4.0


def test_sintel(fake_root):
    root = fake_root / "Sintel"
    clean, final = MpiSintel(root, "training", "clean"), MpiSintel(root, "training", "final")
    assert len(clean) == len(final) == 6
    check_sample(final[4])
    assert warp_error(*clean[4]) < 4.0
    assert clean.extra_info[:4] == [("scene_1", 0), ("scene_1", 1), ("scene_1", 2), ("scene_2", 0)]
    test = MpiSintel(root, "test", "final")
    image1, image2, info = test[5]
    assert test.is_test and len(test) == 6 and info == ("scene_2", 2) and image1.shape == (3, *SIZE)


def test_kitti_sparse_valid_is_read_back(fake_root):
    root = fake_root / "KITTI"
    kitti = KITTI(root, "training")
    assert len(kitti) == 4
    sample = kitti[2]
    check_sample(sample)
    flow, valid = read_kitti_flow(root / "training" / "flow_occ" / "000002_10.png")
    np.testing.assert_array_equal(sample[3].numpy(), valid)
    np.testing.assert_allclose(sample[2].permute(1, 2, 0).numpy(), flow)
    assert 0.3 < float(sample[3].mean()) < 0.9 and not bool(sample[3][0].any())  # sparse, no "sky" points
    assert warp_error(*sample) < 4.0
    test = KITTI(root, "testing")
    assert len(test) == 4 and test[1][2] == "000001_10.png"


def test_hd1k(fake_root):
    hd1k = HD1K(fake_root / "HD1k")
    assert len(hd1k) == 6  # 2 sequences x (4 flows - 1)
    check_sample(hd1k[3])
    assert 0 < float(hd1k[3][3].mean()) < 1


def test_stage_mixes(fake_root):
    crop = (48, 64)
    n = {"chairs": 3, "things": 24, "kitti": 4, "sintel": 100 * 6 + 100 * 6 + 200 * 4 + 5 * 6 + 12}
    for stage, expected in n.items():
        ds = build_training_set(stage, root=fake_root, image_size=crop, seed=0)
        assert len(ds) == expected, stage
        check_sample(ds[len(ds) - 1], crop)
    synthetic = build_training_set("synthetic", root=fake_root, image_size=crop, synthetic_length=7)
    assert len(synthetic) == 7
    check_sample(synthetic[0], crop)
    batch = next(iter(DataLoader(build_training_set("sintel", root=fake_root, image_size=crop), batch_size=4,
                                 shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert batch[0].shape == (4, 3, *crop) and batch[3].shape == (4, *crop)
    with pytest.raises(InputError, match="unknown training stage"):
        build_training_set("nope", root=fake_root)


def test_repetition_is_a_view(fake_root):
    sintel = MpiSintel(fake_root / "Sintel")
    tripled = 3 * sintel
    assert len(tripled) == 18 and len(sintel) == 6
    torch.testing.assert_close(tripled[13][2], sintel[1][2])
    with pytest.raises(IndexError):
        tripled[18]


def test_augmented_loader_is_reproducible(fake_root):
    aug = stage_augment("sintel", (48, 64))
    a = MpiSintel(fake_root / "Sintel", augment=aug, seed=5)
    b = MpiSintel(fake_root / "Sintel", augment=aug, seed=5)
    for x, y in zip(a[2], b[2]):
        torch.testing.assert_close(x, y)
    kitti = KITTI(fake_root / "KITTI", augment=stage_augment("kitti", (48, 64)))
    check_sample(kitti[0], (48, 64))


def test_folder_pairs(tmp_path):
    frames, flows = tmp_path / "dense", tmp_path / "dense" / "flow"
    samples = [render_pair(np.random.default_rng(i), SIZE) for i in range(3)]
    for i, s in enumerate(samples):
        write_image(frames / f"{i:04d}.png", s.image1)
        write_flo(flows / f"{i:04d}.flo", s.flow)
    ds = FolderPairs(frames)
    assert len(ds) == 2 and not ds.sparse and ds.extra_info == ["0000.png", "0001.png"]
    check_sample(ds[1])
    np.testing.assert_allclose(ds[1][2].permute(1, 2, 0).numpy(), samples[1].flow)

    kitti_flows = tmp_path / "kitti_gt"
    valid = np.zeros(SIZE, np.float32)
    valid[::2] = 1
    for i in range(2):
        write_kitti_flow(kitti_flows / f"{i:04d}.png", samples[i].flow, valid)
    sparse = FolderPairs(frames, kitti_flows)
    assert sparse.sparse
    np.testing.assert_array_equal(sparse[0][3].numpy(), valid)

    (flows / "0001.flo").unlink()
    with pytest.raises(InputError, match="0001.png"):
        FolderPairs(frames)


def test_stereo_pair():
    rng = np.random.default_rng(0)
    left = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    disparity = np.full(SIZE, 7.5, np.float32)
    disparity[:10] = np.inf
    ds = StereoPairDataset(left, left[..., 0], disparity)  # grayscale right image -> 3 channels
    assert len(ds) == 1 and len(5 * ds) == 5
    image1, image2, flow, valid = ds[0]
    assert image2.shape == (3, *SIZE)
    assert bool((valid[:10] == 0).all()) and bool((valid[10:] == 1).all())
    assert bool((flow[0, 10:] == -7.5).all()) and bool((flow[1] == 0).all())
    assert bool((flow[:, :10] == 0).all())
    with pytest.raises(InputError):
        StereoPairDataset(left, left, disparity[:, :-1])


@pytest.mark.parametrize("make", [
    lambda root: FlyingChairs(root / "FlyingChairs_release" / "data"),
    lambda root: FlyingThings3D(root / "FlyingThings3D"),
    lambda root: MpiSintel(root / "Sintel"),
    lambda root: KITTI(root / "KITTI"),
    lambda root: HD1K(root / "HD1k"),
    lambda root: FolderPairs(root / "frames"),
    lambda root: build_training_set("chairs", root=root),
])
def test_missing_root_names_the_path(tmp_path, make):
    root = tmp_path / "nowhere"
    with pytest.raises(InputError, match="nowhere"):
        make(root)


def test_empty_root_is_an_error(tmp_path):
    (tmp_path / "KITTI" / "training" / "image_2").mkdir(parents=True)
    with pytest.raises(InputError, match="no \\*_10.png"):
        KITTI(tmp_path / "KITTI")
