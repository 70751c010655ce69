"""Optical-flow error metrics with the definitions used by RAFT/DEQ-Flow evaluation.

Layout: one flow is a numpy array (H,W,2) (u, v last); a batch is (N,H,W,2). A valid mask is (H,W)
(bool, or numbers where >= 0.5 means valid), None meaning every pixel is valid.

- EPE of a pixel: ||pred - gt||_2.
- `1px`/`3px`/`5px`: fraction (0..1) of valid pixels with EPE < 1/3/5.
- `fl_all` (KITTI "F1"/"Fl-all"): percentage (0..100) of valid pixels with EPE > 3 and EPE > 5% of |gt|.
- Two dataset-level EPEs, which differ when images have different numbers of valid pixels:
  `epe_per_pixel` averages over all valid pixels of all images (Sintel, Chairs, Things "EPE");
  `epe_per_image` averages the per-image means (KITTI "EPE" as reported by RAFT and DEQ-Flow).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deqflow.errors import InputError

THRESHOLDS = (1, 3, 5)
FL_ABS = 3.0  # Fl-all outlier: EPE > 3 px ...
FL_REL = 0.05  # ... and EPE > 5 % of the ground-truth magnitude


def _epe(pred: np.ndarray, gt: np.ndarray, what: str) -> np.ndarray:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 3 or pred.shape[2] != 2:
        raise InputError(f"{what}: pred must have shape (H,W,2), got {pred.shape}")
    if pred.shape != gt.shape:
        raise InputError(f"{what}: pred and gt differ in shape: {pred.shape} vs {gt.shape}")
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite pixels are checked by the callers
        diff = pred.astype(np.float64) - gt.astype(np.float64)
        return np.sqrt((diff**2).sum(axis=2))


def epe_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-pixel end-point error (H,W) float32 of two (H,W,2) flows."""
    return _epe(pred, gt, "epe_map").astype(np.float32)


def valid_mask(gt: np.ndarray, valid: np.ndarray | None = None, max_flow: float | None = None) -> np.ndarray:
    """Bool (H,W): valid >= 0.5 (all if None), and |gt| < max_flow if given (training drops |gt| >= 400)."""
    shape = np.shape(gt)[:2]
    if valid is None:
        mask = np.ones(shape, dtype=bool)
    else:
        valid = np.asarray(valid)
        if valid.shape != shape:
            raise InputError(f"valid mask has shape {valid.shape}, expected {shape} to match gt")
        mask = valid.copy() if valid.dtype == bool else valid >= 0.5
    if max_flow is not None:
        mask &= np.sqrt((np.asarray(gt, dtype=np.float64) ** 2).sum(axis=2)) < max_flow
    return mask


@dataclass
class _Counts:
    """Sums over the valid pixels of one or more images, from which every metric follows."""

    n_valid: int = 0
    epe_sum: float = 0.0
    below: dict[int, int] = field(default_factory=lambda: dict.fromkeys(THRESHOLDS, 0))
    outliers: int = 0

    def add(self, other: _Counts) -> None:
        self.n_valid += other.n_valid
        self.epe_sum += other.epe_sum
        for t in THRESHOLDS:
            self.below[t] += other.below[t]
        self.outliers += other.outliers

    def metrics(self) -> dict[str, float]:
        """epe, 1px/3px/5px, fl_all, n_valid; NaN rates when there is no valid pixel."""
        n = self.n_valid
        if n == 0:
            return {**dict.fromkeys(("epe", "1px", "3px", "5px", "fl_all"), float("nan")), "n_valid": 0}
        out = {"epe": self.epe_sum / n, **{f"{t}px": self.below[t] / n for t in THRESHOLDS}}
        return {**out, "fl_all": 100.0 * self.outliers / n, "n_valid": n}


def _counts(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None, max_flow: float | None,
            what: str) -> _Counts:
    epe = _epe(pred, gt, what)
    mask = valid_mask(gt, valid, max_flow)
    gt_bad = mask & ~np.isfinite(gt).all(axis=2)
    if gt_bad.any():
        raise InputError(f"{what}: gt has {int(gt_bad.sum())} non-finite pixels marked valid; "
                         "pass a valid mask that excludes them")
    pred_bad = mask & ~np.isfinite(pred).all(axis=2)
    if pred_bad.any():
        raise InputError(f"{what}: pred has {int(pred_bad.sum())} non-finite (NaN/Inf) pixels where gt "
                         "is valid; the model diverged or the input was bad")
    e = epe[mask]
    mag = np.sqrt((np.asarray(gt, dtype=np.float64)[mask] ** 2).sum(axis=1))
    return _Counts(n_valid=int(e.size), epe_sum=float(e.sum()),
                   below={t: int((e < t).sum()) for t in THRESHOLDS},
                   outliers=int(((e > FL_ABS) & (e > FL_REL * mag)).sum()))


def flow_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None,
                 max_flow: float | None = None) -> dict[str, float]:
    """Metrics of one (H,W,2) prediction: epe (mean over valid pixels), 1px/3px/5px (fractions),
    fl_all (percent), n_valid. With no valid pixel every metric is NaN and n_valid is 0."""
    return _counts(pred, gt, valid, max_flow, "flow_metrics").metrics()


class FlowMetricAccumulator:
    """Pools metrics over a dataset, one image at a time.

    `summary()` gives epe_per_pixel (all valid pixels pooled: the Sintel/Chairs "EPE"), epe_per_image
    (mean of per-image means: the KITTI "EPE" of RAFT/DEQ-Flow), pooled 1px/3px/5px (fractions) and
    fl_all (percent), n_images and n_valid. Images without a valid pixel count in n_images but do not
    enter epe_per_image. Per-image results are kept in `per_image`, in the order added.
    """

    def __init__(self, max_flow: float | None = None):
        self.max_flow = max_flow
        self.per_image: list[dict[str, float]] = []
        self._total = _Counts()

    def add(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
        """Add one (H,W,2) prediction; returns its own metrics."""
        counts = _counts(pred, gt, valid, self.max_flow, "FlowMetricAccumulator.add")
        self._total.add(counts)
        self.per_image.append(counts.metrics())
        return self.per_image[-1]

    def add_batch(self, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add (N,H,W,2) predictions with (N,H,W,2) gt and optional (N,H,W) valid, image by image."""
        pred, gt = np.asarray(pred), np.asarray(gt)
        if pred.ndim != 4 or pred.shape != gt.shape:
            raise InputError(f"add_batch: pred and gt must both be (N,H,W,2), got {pred.shape} "
                             f"and {gt.shape}")
        if valid is not None and np.shape(valid) != pred.shape[:3]:
            raise InputError(f"add_batch: valid must be (N,H,W) = {pred.shape[:3]}, got {np.shape(valid)}")
        for i in range(pred.shape[0]):
            self.add(pred[i], gt[i], None if valid is None else valid[i])

    def summary(self) -> dict[str, float]:
        """Dataset-level metrics (see the class docstring for which EPE is which)."""
        pooled = self._total.metrics()
        means = [r["epe"] for r in self.per_image if r["n_valid"] > 0]
        return {"epe_per_pixel": pooled.pop("epe"),
                "epe_per_image": float(np.mean(means)) if means else float("nan"),
                **pooled, "n_images": len(self.per_image)}
