import numpy as np
import pytest

from deqflow.errors import InputError
from deqflow.metrics import FlowMetricAccumulator, epe_map, flow_metrics


def _case():
    """2x2 image with EPEs 0, 1, 3.5, 10 (errors along u) and chosen gt magnitudes."""
    gt = np.array([[[1.0, 0.0], [10.0, 0.0]], [[100.0, 0.0], [0.0, 20.0]]], np.float32)
    err = np.array([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 3.5], [6.0, 8.0]]], np.float32)
    return gt + err, gt


def test_epe_map_hand_values():
    pred, gt = _case()
    np.testing.assert_allclose(epe_map(pred, gt), [[0, 1], [3.5, 10]], rtol=1e-6)
    assert epe_map(pred, gt).dtype == np.float32


def test_flow_metrics_hand_computed():
    pred, gt = _case()
    m = flow_metrics(pred, gt)
    assert m["epe"] == pytest.approx((0 + 1 + 3.5 + 10) / 4)  # 3.625
    assert m["1px"] == 0.25  # only EPE 0 is < 1
    assert m["3px"] == 0.5  # 0 and 1
    assert m["5px"] == 0.75  # 0, 1 and 3.5
    # Fl-all outliers: EPE > 3 and EPE > 0.05|gt|: 3.5 vs |gt|=100 -> 0.035 (inlier); 10 vs |gt|=20 -> 0.5
    assert m["fl_all"] == 25.0
    assert m["n_valid"] == 4


def test_valid_mask_and_max_flow():
    pred, gt = _case()
    valid = np.array([[1.0, 0.0], [0.7, 0.2]])  # >= 0.5 is valid: EPE 0 and 3.5
    m = flow_metrics(pred, gt, valid)
    assert m["n_valid"] == 2 and m["epe"] == pytest.approx(1.75)
    assert (m["1px"], m["3px"], m["5px"], m["fl_all"]) == (0.5, 0.5, 1.0, 0.0)
    m = flow_metrics(pred, gt, valid.astype(bool) | True, max_flow=50.0)  # drops |gt| = 100
    assert m["n_valid"] == 3 and m["epe"] == pytest.approx(11 / 3)
    assert m["fl_all"] == pytest.approx(100 / 3)


def test_per_pixel_and_per_image_epe_differ():
    pred_a, gt_a = _case()  # 4 valid pixels, EPE sum 14.5, mean 3.625
    gt_b = np.zeros((2, 2, 2), np.float32)
    pred_b = np.array([[[2.0, 0.0], [50.0, 0.0]], [[50.0, 0.0], [50.0, 0.0]]], np.float32)
    valid_b = np.array([[1, 0], [0, 0]])  # 1 valid pixel with EPE 2
    acc = FlowMetricAccumulator()
    acc.add(pred_a, gt_a)
    r = acc.add(pred_b, gt_b, valid_b)
    assert r["epe"] == 2.0 and r["n_valid"] == 1
    s = acc.summary()
    assert s["epe_per_pixel"] == pytest.approx((14.5 + 2) / 5)  # 3.3
    assert s["epe_per_image"] == pytest.approx((3.625 + 2) / 2)  # 2.8125
    assert s["n_images"] == 2 and s["n_valid"] == 5
    assert s["1px"] == pytest.approx(1 / 5)
    assert s["3px"] == pytest.approx(3 / 5)  # 0, 1 and 2
    assert s["5px"] == pytest.approx(4 / 5)
    assert s["fl_all"] == pytest.approx(100 / 5)  # only EPE 10 of image a
    assert [p["epe"] for p in acc.per_image] == [pytest.approx(3.625), 2.0]


def test_add_batch_matches_single_adds():
    rng = np.random.default_rng(1)
    gt = rng.normal(0, 5, (3, 4, 5, 2))
    pred = gt + rng.normal(0, 2, gt.shape)
    valid = rng.random((3, 4, 5)) > 0.3
    one, many = FlowMetricAccumulator(), FlowMetricAccumulator()
    for i in range(3):
        one.add(pred[i], gt[i], valid[i])
    many.add_batch(pred, gt, valid)
    assert one.summary() == many.summary()


def test_empty_valid_gives_nan_and_is_left_out_of_per_image_mean():
    pred, gt = _case()
    m = flow_metrics(pred, gt, np.zeros((2, 2)))
    assert m["n_valid"] == 0 and np.isnan(m["epe"]) and np.isnan(m["fl_all"])
    acc = FlowMetricAccumulator()
    acc.add(pred, gt, np.zeros((2, 2)))
    acc.add(pred, gt)
    assert acc.summary()["epe_per_image"] == pytest.approx(3.625)
    assert acc.summary()["n_images"] == 2


def test_bad_inputs_raise_input_error():
    pred, gt = _case()
    with pytest.raises(InputError, match=r"differ in shape.*\(2, 2, 2\).*\(2, 3, 2\)"):
        flow_metrics(pred, np.zeros((2, 3, 2)))
    with pytest.raises(InputError, match="valid mask has shape"):
        flow_metrics(pred, gt, np.ones((3, 3)))
    gt_nan = gt.copy()
    gt_nan[0, 1, 0] = np.nan
    with pytest.raises(InputError, match="gt has 1 non-finite"):
        flow_metrics(pred, gt_nan)
    valid = np.ones((2, 2))
    valid[0, 1] = 0
    assert flow_metrics(pred, gt_nan, valid)["n_valid"] == 3  # NaN where invalid is fine
    pred_nan = pred.copy()
    pred_nan[1, 1] = np.inf
    with pytest.raises(InputError, match="pred has 1 non-finite"):
        flow_metrics(pred_nan, gt)
    with pytest.raises(InputError, match=r"\(H,W,2\)"):
        flow_metrics(np.zeros((2, 4, 5)), np.zeros((2, 4, 5)))  # channels-first is not the layout
