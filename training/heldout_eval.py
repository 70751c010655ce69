"""Scores on the held-out real-photograph validation set (training/data/heldout_real.py): the model after k
plain fixed-point iterations from a cold start, for every k of a sweep (one solve per pair), so accuracy that
drifts as the solve nears its fixed point shows up; optionally OpenCV's DIS (medium), Farneback and zero flow
on the same pairs with the same metric code."""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from deqflow.baselines import opencv_flow
from deqflow.metrics import FlowMetricAccumulator
from training.data.heldout_real import HeldoutRealConfig, heldout_homography_pairs, motorcycle_pair
from training.inference import flow_trajectory
from training.stages import VAL_REAL_STEPS

BASELINES = ("dis_medium", "farneback", "zero")
SWEEP = (8, 12, 16, 24, 36, 48, 60, 72)
QUICK_STEPS = VAL_REAL_STEPS
KEYS = ("epe_per_pixel", "1px", "3px")


def _summary(acc: FlowMetricAccumulator) -> dict[str, float]:
    s = acc.summary()
    return {k: float(s[k]) for k in KEYS}


def score_set(model, pairs, steps: tuple[int, ...], desc: str, baselines: tuple[str, ...] = BASELINES,
              progress: bool = True) -> dict:
    """Sweep and baselines over a list of RealPair: pooled per-pixel metrics, and EPE per pair."""
    sweep = {k: FlowMetricAccumulator() for k in steps}
    base = {name: FlowMetricAccumulator() for name in baselines}
    residuals, per_pair, seconds = [], {}, []
    for p in tqdm(pairs, desc=desc, disable=not progress):
        t0 = time.perf_counter()
        flows, rel = flow_trajectory(model, p.image1, p.image2, steps)
        seconds.append(time.perf_counter() - t0)
        residuals.append([rel[k - 1] for k in steps])
        row = {f"deqflow@{k}": sweep[k].add(flows[k], p.flow, p.valid)["epe"] for k in steps}
        for name in baselines:
            row[name] = base[name].add(opencv_flow(name, p.image1, p.image2), p.flow, p.valid)["epe"]
        per_pair[p.name] = {k: round(float(v), 4) for k, v in row.items()}
    return {"n_pairs": len(pairs), "steps": list(steps),
            "deqflow": {key: [_summary(sweep[k])[key] for k in steps] for key in KEYS},
            "rel_residual": [float(v) for v in np.mean(residuals, axis=0)],
            "seconds_per_pair": float(np.mean(seconds)),
            "baselines": {name: _summary(acc) for name, acc in base.items()}, "per_pair": per_pair}


def heldout_sets(cfg: HeldoutRealConfig | None = None) -> dict[str, list]:
    """The two parts of the held-out set: homography-warped photographs, and the motorcycle pair."""
    return {"homography": heldout_homography_pairs(cfg or HeldoutRealConfig()), "motorcycle": [motorcycle_pair()]}


def baseline_scores(sets: dict[str, list], baselines: tuple[str, ...] = BASELINES) -> dict[str, dict[str, float]]:
    """Per-pixel EPE of each classical baseline on each set (no model)."""
    out = {}
    for name, pairs in sets.items():
        accs = {b: FlowMetricAccumulator() for b in baselines}
        for p in pairs:
            for b in baselines:
                accs[b].add(opencv_flow(b, p.image1, p.image2), p.flow, p.valid)
        out[name] = {b: float(acc.summary()["epe_per_pixel"]) for b, acc in accs.items()}
    return out


def quick_scores(model, sets: dict[str, list]) -> dict[str, float]:
    """EPE per set after each of QUICK_STEPS iterations, flat (for training logs): real_<set>_epe_k<k>."""
    out = {}
    for name, pairs in sets.items():
        scored = score_set(model, pairs, QUICK_STEPS, name, baselines=(), progress=False)
        for k, epe in zip(QUICK_STEPS, scored["deqflow"]["epe_per_pixel"]):
            out[f"real_{name}_epe_k{k}"] = epe
    return out
