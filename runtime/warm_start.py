"""Warm start for video: which backends can start a solve from a previous frame's fixed point (one rule,
`check_warm_start`), and the geometry that moves a solved frame's fixed point along its own flow
(`forward_warp_state`, with its numpy nearest-neighbour fill `nearest_points`).

The fixed-point loop itself is deqflow.host_solver (shared with the exporter's verification, the scripts and
the tests); backends import it from there.
"""

from __future__ import annotations

import numpy as np

from deqflow.errors import InputError
from deqflow.host_solver import WarmState, as_numpy

WARM_START_NEEDS = "the split layout (export with --layout split) or the torch backend"
"""What a warm start from a previous fixed point needs: a solver loop outside one graph."""


def check_warm_start(backend) -> None:
    """InputError when `backend` cannot start a solve from a previous fixed point (its `supports_warm_start`),
    in the backend's own words (`no_warm_start`): the one rule the CLI, FlowEstimator and Backend.infer apply."""
    if not backend.supports_warm_start:
        raise InputError(f"{backend.label}: {backend.no_warm_start}")


def forward_warp_state(state: WarmState) -> WarmState:
    """Carry a solved frame's fixed point along its own flow, for the next pair of a video.

    The fixed point of pair t-1 -> t describes the scene at frame t-1; the next pair starts at frame t, where
    everything has moved by that flow (constant velocity). Every cell of the 1/8 grid is moved to its rounded
    landing cell, taking its flow and hidden state with it; where several land on one cell the largest motion
    wins (a moving object usually occludes what is behind it); cells nothing lands on (disocclusions) take
    the state of the nearest landing point, as the official Sintel warm start's nearest-neighbour
    `forward_interpolate` does (`nearest_points`: numpy only, so the runtime needs no scipy). Cells whose flow
    leaves the image are dropped. Returns numpy arrays (every backend accepts them).
    """
    flow, hidden = as_numpy(state.flow_low).astype(np.float32), as_numpy(state.hidden).astype(np.float32)
    if flow.ndim != 4 or flow.shape[1] != 2 or hidden.ndim != 4 or hidden.shape[2:] != flow.shape[2:]:
        raise InputError(f"warm-start state must be hidden (N,C,h,w) and flow (N,2,h,w), got {hidden.shape} / "
                         f"{flow.shape}")
    n, c, h, w = hidden.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    out_flow, out_hidden = np.empty_like(flow), np.empty_like(hidden)
    for i in range(n):
        x1, y1 = (xs + flow[i, 0]).ravel(), (ys + flow[i, 1]).ravel()
        tx, ty = np.rint(x1).astype(np.int64), np.rint(y1).astype(np.int64)
        inside = np.flatnonzero((tx >= 0) & (tx < w) & (ty >= 0) & (ty < h))
        if inside.size == 0:  # everything left the image: nothing to carry over
            out_flow[i], out_hidden[i] = flow[i], hidden[i]
            continue
        target = ty[inside] * w + tx[inside]
        magnitude = np.hypot(flow[i, 0].ravel(), flow[i, 1].ravel())[inside]
        order = np.lexsort((-magnitude, target))  # by landing cell, largest motion first
        cells, first = np.unique(target[order], return_index=True)
        src = np.full(h * w, -1, np.int64)
        src[cells] = inside[order[first]]
        holes = np.flatnonzero(src < 0)
        if holes.size:  # equally near landing points: the slowest wins (a disocclusion shows the background)
            slow = np.argsort(magnitude, kind="stable")
            nearest = nearest_points(np.stack([x1[inside], y1[inside]], axis=1)[slow],
                                     np.stack([xs.ravel()[holes], ys.ravel()[holes]], axis=1))
            src[holes] = inside[slow[nearest]]
        out_flow[i] = flow[i].reshape(2, -1)[:, src].reshape(2, h, w)
        out_hidden[i] = hidden[i].reshape(c, -1)[:, src].reshape(c, h, w)
    return WarmState(hidden=out_hidden, flow_low=out_flow)


def nearest_points(points: np.ndarray, queries: np.ndarray, block_elements: int = 1 << 20) -> np.ndarray:
    """Index into `points` (P,2) of the point nearest to each of `queries` (Q,2), by exact Euclidean distance
    (the lowest index on a tie). Brute force over blocks of queries, so memory stays near `block_elements`
    distances: the 1/8 grid of a frame has a few thousand cells, and only disoccluded cells are queried."""
    px, py = np.asarray(points, np.float64).T
    queries = np.asarray(queries, np.float64)
    out = np.empty(len(queries), np.int64)
    step = max(1, block_elements // max(1, px.size))
    for start in range(0, len(queries), step):
        block = queries[start:start + step]
        d2 = block[:, :1] - px
        d2 *= d2
        dy = block[:, 1:] - py
        dy *= dy
        d2 += dy
        out[start:start + step] = d2.argmin(axis=1)
    return out
