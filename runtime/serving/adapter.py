"""The one place where serving runs the runtime: a batch of pairs, one pair of a stream with its warm state
(backends are opened from a runtime.backends.BackendChoice). Only runtime's public names are used."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime import WarmState


@dataclass
class PairOutput:
    """One batch item's outputs (padded size, as the model produced them)."""

    flow: np.ndarray  # (2,H,W) float32
    iterations: int  # this pair's own solver steps
    residual: float
    state: WarmState | None = None
    stop_reason: str = ""  # why this pair's solve ended (deqflow.solver_spec.STOP_REASONS)


def static_batch(backend) -> int | None:
    """The batch size a static export was made for (None when the batch axis is dynamic)."""
    dim = backend.inputs[0].shape[0] if backend.inputs and backend.inputs[0].shape else None
    return int(dim) if isinstance(dim, int) and dim > 0 else None


def infer_batch(backend, image1: np.ndarray, image2: np.ndarray) -> list[PairOutput]:
    """(N,3,H,W) pairs in one solve (chunked to a static export's batch size). Every pair stops by its own rule
    and reports its own iterations, as it would alone."""
    step = static_batch(backend) or len(image1)
    out: list[PairOutput] = []
    for i in range(0, len(image1), step):
        r = backend.infer(image1[i:i + step], image2[i:i + step])
        residual = np.asarray(r.residual, np.float32).reshape(-1)
        out += [PairOutput(np.asarray(r.flow[k], np.float32), int(r.sample_iterations[k]), float(residual[k]),
                           stop_reason=r.stop_reasons[k]) for k in range(len(r.flow))]
    return out


def infer_pair(backend, image1: np.ndarray, image2: np.ndarray, state: WarmState | None) -> PairOutput:
    """One (3,H,W) pair of a stream, warm-started from `state` when the backend can (split layout / torch)."""
    warm = state if backend.supports_warm_start else None
    r = backend.infer(image1[None], image2[None], state=warm)
    return PairOutput(np.asarray(r.flow[0], np.float32), int(r.iterations),
                      float(np.asarray(r.residual, np.float32).reshape(-1)[0]), r.state, r.stop_reasons[0])


def levels_of(backend) -> int:
    """Correlation levels of the model (they set the smallest usable input)."""
    return int(getattr(backend, "levels", 4))
