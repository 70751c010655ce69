"""What one fixed-point solve recorded, per sample: one type for the host solver of the split layout (numpy
arrays) and the torch solvers (tensors, left on their device so that a training step never waits for a copy).

Only operations numpy arrays and torch tensors share are used here (indexing, `.any()`), so the type stays
torch-free; `as_numpy` converts either for reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


def as_numpy(x: Any) -> np.ndarray:
    """numpy view/copy of a numpy array or a torch tensor (any device) without importing torch."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def json_floats(x: Any) -> list[float | None]:
    """Per-sample values as JSON-safe floats (None for NaN/Inf)."""
    return [v if math.isfinite(v) else None for v in np.asarray(as_numpy(x), np.float64).ravel().tolist()]


@dataclass
class SolveStats:
    """Convergence record of one solve (or of consecutive solves: training.deq.solvers.concat_stats).

    Every sample stops by its own rule, as it would alone: `sample_iterations` and `reasons` are its own
    (deqflow.solver_spec.STOP_REASONS); `iterations` and `reason` summarise the batch (its longest solve, its
    worst reason). Traces are (N, iterations): row i holds sample i's ||f(z) - z|| ("abs") and that over
    ||f(z)|| + REL_EPS ("rel") at each of its evaluations in order, NaN after its last; the lowest values never
    count a NaN."""

    iterations: int  # steps of the batch: the most evaluations of f any sample took
    abs_trace: Any  # (N, iterations)
    rel_trace: Any  # (N, iterations)
    abs_lowest: Any  # (N,)
    rel_lowest: Any  # (N,)
    nonfinite: Any  # (N,) bool: the sample met NaN/Inf and its solve stopped there
    reason: str = ""
    sample_iterations: np.ndarray | None = None  # (N,) evaluations of f per sample (None: `iterations` each)
    reasons: list[str] | None = None  # (N,) why each sample's solve ended
    stalled: Any | None = None  # (N,) bool when the stagnation test ran
    flow_trace: Any | None = None  # (N, iterations) flow steps, when a flow tolerance was tested
    sradius: Any | None = None  # (N,) Jacobian spectral radius at the fixed point, when estimated

    def __post_init__(self) -> None:
        n = len(self.abs_trace)
        if self.sample_iterations is None:
            self.sample_iterations = np.full(n, int(self.iterations), np.int64)
        if self.reasons is None:
            self.reasons = [self.reason] * n

    @property
    def sample_work(self) -> int:
        """Evaluations of f summed over the samples: the work a solve that steps only unfinished samples does."""
        return int(np.sum(self.sample_iterations))

    def _last(self, trace: Any) -> Any:
        """Each sample's value at its own last evaluation (lists index numpy arrays and tensors alike)."""
        last = [max(int(k), 1) - 1 for k in self.sample_iterations]
        return trace[list(range(len(last))), last]

    @property
    def final_abs(self) -> Any:
        return self._last(self.abs_trace)

    @property
    def final_rel(self) -> Any:
        return self._last(self.rel_trace)

    @property
    def has_nonfinite(self) -> bool:
        return bool(self.nonfinite.any())

    def as_dict(self, traces: bool = False) -> dict:
        """Plain-Python summary (per-sample lists) for logs and JSON reports."""
        out: dict = {
            "iterations": int(self.iterations),
            "abs_lowest": json_floats(self.abs_lowest),
            "rel_lowest": json_floats(self.rel_lowest),
            "final_abs": json_floats(self.final_abs),
            "final_rel": json_floats(self.final_rel),
            "sradius": None if self.sradius is None else json_floats(self.sradius),
            "nonfinite": self.has_nonfinite,
            "stalled": None if self.stalled is None else [bool(v) for v in as_numpy(self.stalled).tolist()],
            "stop_reason": self.reason,
            "sample_iterations": [int(k) for k in self.sample_iterations],
            "stop_reasons": list(self.reasons),
        }
        if traces:
            out["abs_trace"] = [json_floats(row) for row in as_numpy(self.abs_trace)]
            out["rel_trace"] = [json_floats(row) for row in as_numpy(self.rel_trace)]
        return out
