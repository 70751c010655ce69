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

    Traces are (N, iterations): ||f(z) - z|| ("abs") and that over ||f(z)|| + REL_EPS ("rel") at every
    evaluation; the lowest values never count a NaN. `reason` is one of deqflow.solver_spec.STOP_REASONS."""

    iterations: int  # evaluations of f
    abs_trace: Any  # (N, iterations)
    rel_trace: Any  # (N, iterations)
    abs_lowest: Any  # (N,)
    rel_lowest: Any  # (N,)
    nonfinite: Any  # (N,) bool: the sample met NaN/Inf and the solve stopped there
    reason: str = ""
    stalled: Any | None = None  # (N,) bool when the stagnation test ran
    flow_trace: Any | None = None  # (N, iterations) flow steps, when a flow tolerance was tested
    sradius: Any | None = None  # (N,) Jacobian spectral radius at the fixed point, when estimated

    @property
    def final_abs(self) -> Any:
        return self.abs_trace[:, -1]

    @property
    def final_rel(self) -> Any:
        return self.rel_trace[:, -1]

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
        }
        if traces:
            out["abs_trace"] = [json_floats(row) for row in as_numpy(self.abs_trace)]
            out["rel_trace"] = [json_floats(row) for row in as_numpy(self.rel_trace)]
        return out
