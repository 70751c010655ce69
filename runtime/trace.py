"""Where a candidate's fixed-point solve leaves the reference's: per-iteration trajectories of split exports.

`deqflow compare` says whether the final flow matches; for a DEQ that is not enough to debug a deployment: a
reduced-precision step can be harmless at iteration 1 and lead the solve to another fixed point by iteration 20.
Here the reference and the candidate run the same fixed number of plain fixed-point steps (no early stop)
through the shared host solver (deqflow.host_solver.solve); `RecordingParts`, a StepParts proxy, keeps a host
copy of every state z_k = (hidden, coords1) and of the flow decoded from it, so no second solve loop exists.
Per iteration the candidate's deviation from the reference is measured with compare's statistics and judged
by compare's tolerance tier; the report names the first iteration outside the tier and whether both solves
end at the same fixed point. torch-free: any StepParts (ONNX Runtime, TensorRT, the torch reference) works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deqflow.errors import InputError
from deqflow.host_solver import StepParts, solve
from deqflow.solver_spec import SolveSpec
from runtime.compare import compare_outputs

RATE_WINDOW = 5
"""Last residual ratios averaged into a trajectory's contraction-rate estimate."""


class RecordingParts:
    """A StepParts that passes every call on to `parts` and keeps host copies of what the host solver saw:
    the context (when it is a dict of named arrays, as the exported encoders give), coords0, the states
    z_0..z_K and the flow decoded after each step."""

    def __init__(self, parts: StepParts) -> None:
        self.parts, self.hidden_dim = parts, parts.hidden_dim
        self.context: dict[str, np.ndarray] | None = None
        self.coords0: np.ndarray | None = None
        self.states: list[tuple[np.ndarray, np.ndarray]] = []
        self.flows: list[np.ndarray] = []

    def _host(self, x: Any) -> np.ndarray:
        return np.array(self.parts.to_host(x), np.float32, copy=True)

    def encode(self, image1, image2):
        ctx, coords0 = self.parts.encode(image1, image2)
        if isinstance(ctx, dict):
            self.context = {name: self._host(value) for name, value in ctx.items()}
        self.coords0 = np.array(coords0, np.float32, copy=True)
        return ctx, coords0

    def step(self, ctx, net, coords1):
        if not self.states:
            self.states.append((self._host(net), self._host(coords1)))
        out = self.parts.step(ctx, net, coords1)
        self.states.append((self._host(out[0]), self._host(out[1])))
        self.flows.append(np.array(self.parts.decode(ctx, out[0], out[1])[0], np.float32, copy=True))
        return out

    def decode(self, ctx, net, coords1):
        return self.parts.decode(ctx, net, coords1)

    def to_host(self, x):
        return self.parts.to_host(x)

    def from_host(self, x):
        return self.parts.from_host(x)


@dataclass
class Trajectory:
    """One backend's fixed-iteration solve: residuals (K,), states z_0..z_K on the host, decoded flows (K)."""

    label: str
    residual: np.ndarray
    residual_rel: np.ndarray
    states: list[tuple[np.ndarray, np.ndarray]]
    flows: list[np.ndarray]
    coords0: np.ndarray
    context: dict[str, np.ndarray] | None = None
    requested: int = 0  # iterations asked for (more than ran when a NaN/Inf residual stopped the solve)

    @property
    def iterations(self) -> int:
        return len(self.flows)

    def flow_low(self, k: int) -> np.ndarray:
        return self.states[k][1] - self.coords0

    def packed(self, k: int) -> np.ndarray:
        net, coords1 = self.states[k]
        return np.concatenate([net.reshape(-1), coords1.reshape(-1)]).astype(np.float64)


def record(parts: StepParts, image1: np.ndarray, image2: np.ndarray, iterations: int, label: str) -> Trajectory:
    """`iterations` plain fixed-point steps of `parts` from the cold start (tolerance 0: no early stop)."""
    if int(iterations) < 1:
        raise InputError(f"a trajectory needs at least one iteration, got {iterations}")
    recorder = RecordingParts(parts)
    spec = SolveSpec.of("fixed_point", max_iter=int(iterations), tol=0.0)
    result = solve(recorder, image1, image2, spec)
    stats = result.stats
    return Trajectory(label=label, residual=np.asarray(stats.abs_trace, np.float64)[0],
                      residual_rel=np.asarray(stats.rel_trace, np.float64)[0], states=recorder.states,
                      flows=recorder.flows, coords0=recorder.coords0, context=recorder.context,
                      requested=int(iterations))


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(float(x)) else None


def hidden_deviation(ref: np.ndarray, cand: np.ndarray) -> tuple[float | None, float | None]:
    """(||cand - ref|| / ||ref||, max |cand - ref|) of two hidden states; None where non-finite."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = cand.astype(np.float64) - ref.astype(np.float64)
        rel = np.linalg.norm(diff) / max(float(np.linalg.norm(ref)), 1e-12)
        return _finite_or_none(rel), _finite_or_none(np.abs(diff).max())


def iteration_row(ref: Trajectory, cand: Trajectory, k: int, tier: str) -> dict[str, Any]:
    """Iteration k (1-based: after k steps): the candidate's deviation and whether the tier still holds."""
    result = compare_outputs({"flow": ref.flows[k - 1], "flow_low": ref.flow_low(k)},
                             {"flow": cand.flows[k - 1], "flow_low": cand.flow_low(k)}, tier)
    flow, low = result["metrics"]["flow"], result["metrics"]["flow_low"]
    hidden_rel, hidden_max = hidden_deviation(ref.states[k][0], cand.states[k][0])
    nonfinite = result["nonfinite"] + (hidden_rel is None)
    return {"iteration": k, "flow_max_abs": flow["max_abs"], "flow_mean_abs": flow["mean_abs"],
            "epe_mean": flow["epe_mean"], "epe_p99": flow["epe_p99"], "fl_all_pct": flow["fl_all_pct"],
            "flow_low_max_abs": low["max_abs"], "hidden_rel": hidden_rel, "hidden_max_abs": hidden_max,
            "residual_reference": _finite_or_none(ref.residual[k - 1]),
            "residual_candidate": _finite_or_none(cand.residual[k - 1]),
            "nonfinite": int(nonfinite), "within_tier": bool(result["passed"] and not nonfinite),
            "criteria": {c["criterion"]: c["value"] for c in result["criteria"]}}


def contraction_rate(residual: np.ndarray, window: int = RATE_WINDOW) -> float | None:
    """Geometric mean of the last `window` residual ratios r_{k+1} / r_k (None when fewer than two finite
    positive residuals): how much closer each step gets to the fixed point at the end of the solve."""
    r = np.asarray(residual, np.float64)[-(window + 1):]
    if len(r) < 2 or not (np.isfinite(r).all() and (r > 0).all()):
        return None
    return float(np.exp(np.mean(np.log(r[1:] / r[:-1]))))


def fixed_point_verdict(ref: Trajectory, cand: Trajectory) -> dict[str, Any]:
    """Do both solves end at the same fixed point? The distance between the final states is compared with the
    step size (the last residual ||z_K - z_{K-1}||): closer than one step of either solve, they are the same
    point at the resolution the solves reach. Farther apart, and both contracting at rate q (the last residual
    ratios), each z_K lies within step_K / (1 - q) of its own fixed point, so one shared fixed point puts them at
    most the sum of those radii apart: beyond it they are different fixed points. Otherwise undetermined."""
    k = min(ref.iterations, cand.iterations)
    distance = _finite_or_none(np.linalg.norm(cand.packed(k) - ref.packed(k)))
    rates = {"reference": contraction_rate(ref.residual[:k]), "candidate": contraction_rate(cand.residual[:k])}
    steps = {"reference": _finite_or_none(ref.residual[k - 1]), "candidate": _finite_or_none(cand.residual[k - 1])}
    out = {"distance": distance, "rate": rates, "last_step": steps, "radius": None,
           "distance_in_steps": None if distance is None or not steps["reference"]
           else distance / steps["reference"]}
    if distance is None or None in steps.values():
        return {**out, "verdict": "undetermined", "why": "a solve is non-finite"}
    if distance <= max(steps.values()):
        return {**out, "verdict": "same", "why": f"final states {distance:.3g} apart, less than one step "
                                                 f"({max(steps.values()):.3g}) of the solves"}
    if None in rates.values() or max(rates.values()) >= 1.0:
        return {**out, "verdict": "undetermined", "why": f"final states {distance:.3g} apart, more than one step, "
                                                         "and a solve is not contracting (residual ratio >= 1)"}
    radius = sum(steps[n] / (1.0 - rates[n]) for n in steps)
    same = distance <= radius
    return {**out, "radius": radius, "verdict": "same" if same else "different",
            "why": f"final states {distance:.3g} apart, {'within' if same else 'beyond'} the estimated "
                   f"distance {radius:.3g} of each to its fixed point (last step / (1 - rate))"}


@dataclass
class TraceComparison:
    """The per-iteration comparison of one candidate's trajectory with the reference's."""

    tier: str
    rows: list[dict]
    fixed_point: dict
    iterations: int  # asked for; a solve that met NaN/Inf stopped before (rows: the iterations both ran)
    context: dict | None = None  # encoder outputs compared by name (both exported graphs), else None
    nodes: dict | None = None  # runtime.node_diff's localisation, when run
    notes: list[str] = field(default_factory=list)

    @property
    def first_outside(self) -> int | None:
        """The first iteration whose state is outside the tier's tolerance (None: never)."""
        return next((r["iteration"] for r in self.rows if not r["within_tier"]), None)

    @property
    def compared(self) -> int:
        """Iterations with a finite deviation (what a verdict can rest on)."""
        return sum(1 for r in self.rows if r["flow_max_abs"] is not None and r["hidden_rel"] is not None)

    def failure(self) -> str | None:
        """Why this comparison fails (one line), or None when it passes."""
        if not self.rows:
            return "nothing compared: no iterations"
        if self.compared == 0:
            return "nothing compared: every iteration is NaN/Inf"
        if len(self.rows) < self.iterations:
            return f"a solve met NaN/Inf and stopped after {len(self.rows)} of {self.iterations} iterations"
        if not self.rows[-1]["within_tier"]:
            return f"the last iterate is outside the {self.tier} tier (first outside at iteration {self.first_outside})"
        if self.fixed_point["verdict"] == "different":
            return "the solves end at different fixed points"
        return None


def compare_trajectories(ref: Trajectory, cand: Trajectory, tier: str) -> TraceComparison:
    """Iteration-by-iteration deviation, the encoder outputs (when both are named) and the fixed-point verdict,
    over the iterations both solves ran (the host solver stops a solve at a NaN/Inf residual)."""
    if ref.states[0][0].shape != cand.states[0][0].shape or ref.coords0.shape != cand.coords0.shape:
        raise InputError(f"the reference and the candidate solve different shapes: hidden {ref.states[0][0].shape} "
                         f"vs {cand.states[0][0].shape}, grid {ref.coords0.shape} vs {cand.coords0.shape}")
    rows = [iteration_row(ref, cand, k, tier) for k in range(1, min(ref.iterations, cand.iterations) + 1)]
    return TraceComparison(tier=tier, rows=rows, fixed_point=fixed_point_verdict(ref, cand),
                           iterations=max(ref.requested, cand.requested, ref.iterations),
                           context=context_deviation(ref.context, cand.context))


def context_deviation(ref: dict | None, cand: dict | None) -> dict | None:
    """Encoder outputs of the same names compared (iteration 0): max abs and relative deviation per output."""
    if not ref or not cand:
        return None
    out = {}
    for name in sorted(set(ref) & set(cand)):
        if ref[name].shape == cand[name].shape:
            rel, max_abs = hidden_deviation(ref[name], cand[name])
            out[name] = {"max_abs": max_abs, "rel": rel}
    return out or None
