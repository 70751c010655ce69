"""`deqflow evaluate` with the official protocol on every fake standard layout, a folder of pairs and a
stereo pair; numbers checked by hand with a model whose flow is exactly zero."""

import json

import cv2
import numpy as np
import pytest
from fake_layouts import write_fake_all
from fakes import save_model
from helpers import silence_flow_head, tiny_model

import training.evaluate as evaluate_module
from deqflow.cli import main
from deqflow.flow_io import write_flo, write_pfm
from deqflow.image_io import write_image
from deqflow.padding import InputPadder
from training.data import make_synthetic_video

SETS = ["chairs", "things_clean", "things_final", "sintel_clean", "sintel_final", "kitti", "synthetic"]
SIZE = (132, 164)  # >= 128 for 4 pyramid levels; not a multiple of 8, so padding matters


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    root = base / "datasets"
    write_fake_all(root, size=SIZE)

    model = tiny_model(solver="anderson")
    save_model(base / "tiny.pth", model)
    save_model(base / "zero.pth", silence_flow_head(model))  # every update moves the flow by exactly 0

    frames = base / "frames"  # FolderPairs: frames/0000.png.., ground truth frames/flow/0000.flo..
    video = make_synthetic_video(3, SIZE, seed=3, max_displacement=6.0)
    for t in range(3):
        write_image(frames / f"{t:04d}.png", video.frames[t])
    for t in range(2):
        write_flo(frames / "flow" / f"{t:04d}.flo", video.flows[t])

    from skimage import data as skdata  # a real rectified pair, cropped small

    left, right, disp = skdata.stereo_motorcycle()
    rows, cols = slice(180, 180 + SIZE[0]), slice(300, 300 + SIZE[1])
    disp = disp[rows, cols].copy()
    disp[:10, :20] = np.inf  # unknown disparity
    disp[50, 60] = -np.inf
    write_image(base / "left.png", np.ascontiguousarray(left[rows, cols]))
    write_image(base / "right.png", np.ascontiguousarray(right[rows, cols]))
    write_pfm(base / "disp.pfm", disp)
    return {"base": base, "root": root, "video": video, "disp": disp}


def _record_pad_modes(monkeypatch) -> list:
    calls = []

    class Recording(InputPadder):
        def __init__(self, shape, mode="sintel", **kw):
            super().__init__(shape, mode=mode, **kw)
            calls.append((mode, self.padding))

    monkeypatch.setattr(evaluate_module, "InputPadder", Recording)
    return calls


def test_evaluate_every_standard_layout(data, tmp_path, capsys, monkeypatch):
    calls = _record_pad_modes(monkeypatch)
    out = tmp_path / "results.json"
    rc = main(["evaluate", "--checkpoint", str(data["base"] / "tiny.pth"), "--dataset", "chairs", "things",
               "sintel", "kitti", "synthetic", "--data-root", str(data["root"]), "--max-samples", "2",
               "--iters", "3", "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| set | EPE (headline) | EPE per-pixel | EPE per-image |" in printed
    for name in SETS:
        assert f"| {name} |" in printed
    assert "per-image = mean of image means (KITTI)" in printed

    payload = json.loads(out.read_text())
    assert payload["solver"] == "fixed_point" and payload["iterations_cap"] == 3  # the official protocol
    results = payload["results"]
    assert list(results) == SETS
    for name, m in results.items():
        for key in ("epe_per_pixel", "epe_per_image", "1px", "3px", "5px", "fl_all", "mean_final_abs_residual"):
            assert np.isfinite(m[key]), (name, key)
        assert m["n_images"] == (1 if name == "chairs" else 2)  # the fake chairs have one validation pair
        assert m["mean_iterations"] == 3.0
        assert 0 < m["epe_per_pixel"] < 200
        assert m["headline_metric"] == ("epe_per_image" if name == "kitti" else "epe_per_pixel")
    assert f"| kitti | {results['kitti']['epe_per_image']:.3f} (per_image) |" in printed
    # KITTI pads all the height at the bottom; the others centre it (4 rows and 4 columns missing)
    assert len(calls) == 1 + 2 * 5 + 2
    kitti_calls = calls[9:11]
    assert kitti_calls == [("kitti", (2, 2, 0, 4))] * 2
    assert all(c == ("sintel", (2, 2, 2, 2)) for c in calls[:9])


def _read_flo(path):
    raw = np.fromfile(path, np.float32)
    assert raw[0] == np.float32(202021.25)
    w, h = raw[1:3].view(np.int32)
    return raw[3:].reshape(h, w, 2)


def _read_kitti(path):
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    valid = bgr[:, :, 0] > 0
    flow = (np.stack([bgr[:, :, 2], bgr[:, :, 1]], axis=-1).astype(np.float64) - 2**15) / 64.0
    return flow, valid


def test_zero_flow_epe_equals_mean_ground_truth_magnitude(data, tmp_path, capsys):
    """With zero predicted flow, EPE = |gt|: check every reported number against numpy by hand."""
    root, base = data["root"], data["base"]
    out = tmp_path / "zero.json"
    rc = main(["evaluate", "--checkpoint", str(base / "zero.pth"), "--dataset", "chairs", "kitti",
               "--data-root", str(root), "--max-samples", "2", "--iters", "3",
               "--folder", str(base / "frames"), "--stereo", str(base / "left.png"), str(base / "right.png"),
               str(base / "disp.pfm"), "--output", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["chairs", "kitti", "folder", "stereo"]

    def check(m, mags):  # mags: per image, |gt| at its valid pixels
        pooled = np.concatenate(mags)
        assert m["n_valid"] == pooled.size
        assert m["epe_per_pixel"] == pytest.approx(pooled.mean(), rel=1e-6)
        assert m["epe_per_image"] == pytest.approx(np.mean([x.mean() for x in mags]), rel=1e-6)
        assert m["1px"] == pytest.approx((pooled < 1).mean())
        assert m["5px"] == pytest.approx((pooled < 5).mean())
        assert m["fl_all"] == pytest.approx(100 * (pooled > 3).mean())  # EPE = |gt| > 5% of |gt| always

    # chairs: chairs_split.txt marks the last of the 4 pairs as validation; dense, all pixels valid
    chairs = _read_flo(root / "FlyingChairs_release" / "data" / "00004_flow.flo")
    check(results["chairs"], [np.linalg.norm(chairs, axis=-1).ravel()])

    kitti = [_read_kitti(root / "KITTI" / "training" / "flow_occ" / f"{i:06d}_10.png") for i in (0, 1)]
    mags = [np.linalg.norm(f, axis=-1)[v] for f, v in kitti]
    assert mags[0].size != mags[1].size  # sparse masks: per-pixel and per-image EPE differ
    check(results["kitti"], mags)
    assert results["kitti"]["epe_per_image"] != results["kitti"]["epe_per_pixel"]

    check(results["folder"], [np.linalg.norm(f, axis=-1).ravel() for f in data["video"].flows[:2]])

    disp = data["disp"]
    finite = np.isfinite(disp)
    assert 0 < finite.sum() < disp.size - 200
    check(results["stereo"], [np.abs(disp[finite])])  # flow = (-d, 0): |flow| = |d|


def test_evaluate_needs_something_to_evaluate(data, capsys):
    assert main(["evaluate", "--checkpoint", str(data["base"] / "tiny.pth")]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(data["base"] / "tiny.pth"), "--dataset", "hd1k"]) == 2
    assert "unknown evaluation set 'hd1k'" in capsys.readouterr().err
