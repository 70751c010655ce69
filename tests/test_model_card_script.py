"""scripts/model_card.py: each pair's EPE and the median over pairs, on hand-computed flows."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("model_card", ROOT / "scripts" / "model_card.py")
model_card = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(model_card)


def test_median_over_pairs_is_robust_to_one_failed_pair():
    acc = model_card.FlowMetricAccumulator()
    gt = np.zeros((4, 6, 2), np.float32)
    for dx, dy in ((3, 4), (0, 1), (6, 8)):  # EPE 5, 1 and 10 px (3-4-5 triangles)
        acc.add(gt + np.array([dx, dy], np.float32), gt)
    assert model_card._per_pair(acc) == [5.0, 1.0, 10.0]
    assert np.median(model_card._per_pair(acc)) == 5.0
    assert abs(acc.summary()["epe_per_pixel"] - 16 / 3) < 1e-6  # the mean moves with the failed pair
