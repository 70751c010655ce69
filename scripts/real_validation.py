"""Accuracy on the held-out real-photograph validation set (training/data/heldout_real.py): held-out
photographs warped by known homographies with photometric changes, and the Middlebury motorcycle pair.

The model is scored after k plain fixed-point iterations from a cold start for every k of the sweep (one
solve per pair), so accuracy that drifts as the solve nears its fixed point shows up; OpenCV's DIS
(medium), Farneback and zero flow are scored on the same pairs by the same metric code. Writes JSON and a
Markdown table next to it.

    python scripts/real_validation.py --checkpoint checkpoints/deqflow-T-synthetic.pth \\
        --output docs/real_validation.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deqflow.metrics import FlowMetricAccumulator
from training.baselines import opencv_flow
from training.checkpoint import load_model
from training.data.heldout_real import HeldoutRealConfig, heldout_homography_pairs, motorcycle_pair
from training.data.photos import HELDOUT_PHOTOS
from training.inference import flow_trajectory

BASELINES = ("dis_medium", "farneback", "zero")
SWEEP = (8, 12, 16, 24, 36, 48, 60, 72)
KEYS = ("epe_per_pixel", "1px", "3px")


def _summary(acc: FlowMetricAccumulator) -> dict[str, float]:
    s = acc.summary()
    return {k: float(s[k]) for k in KEYS}


def score_set(model, pairs, steps: tuple[int, ...], desc: str) -> dict:
    """Sweep and baselines over a list of RealPair: pooled per-pixel metrics, and EPE per pair."""
    sweep = {k: FlowMetricAccumulator() for k in steps}
    base = {name: FlowMetricAccumulator() for name in BASELINES}
    residuals, per_pair, seconds = [], {}, []
    for p in tqdm(pairs, desc=desc):
        t0 = time.perf_counter()
        flows, rel = flow_trajectory(model, p.image1, p.image2, steps)
        seconds.append(time.perf_counter() - t0)
        residuals.append([rel[k - 1] for k in steps])
        row = {f"deqflow@{k}": sweep[k].add(flows[k], p.flow, p.valid)["epe"] for k in steps}
        for name in BASELINES:
            row[name] = base[name].add(opencv_flow(name, p.image1, p.image2), p.flow, p.valid)["epe"]
        per_pair[p.name] = {k: round(float(v), 4) for k, v in row.items()}
    return {"n_pairs": len(pairs), "steps": list(steps),
            "deqflow": {key: [_summary(sweep[k])[key] for k in steps] for key in KEYS},
            "rel_residual": [float(v) for v in np.mean(residuals, axis=0)],
            "seconds_per_pair": float(np.mean(seconds)),
            "baselines": {name: _summary(acc) for name, acc in base.items()}, "per_pair": per_pair}


def markdown(results: dict) -> str:
    steps = results["steps"]
    head = "| EPE per pixel (px) | " + " | ".join(f"k={k}" for k in steps) + " | " + " | ".join(BASELINES) + " |"
    lines = [head, "|---|" + "---:|" * (len(steps) + len(BASELINES))]
    for name, s in results["sets"].items():
        cells = [f"{v:.3f}" for v in s["deqflow"]["epe_per_pixel"]]
        cells += [f"{s['baselines'][b]['epe_per_pixel']:.3f}" for b in BASELINES]
        lines.append(f"| {name} ({s['n_pairs']} pairs) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="checkpoints/deqflow-T-synthetic.pth")
    ap.add_argument("--iterations", type=int, nargs="+", default=list(SWEEP),
                    help="cold-start fixed-point iteration counts to score")
    ap.add_argument("--output", default="docs/real_validation.json", help="JSON; the Markdown table goes next to it")
    args = ap.parse_args()
    steps = tuple(sorted(set(args.iterations)))
    model, meta = load_model(args.checkpoint)
    model.configure_deq(f_solver="fixed_point")
    cfg = HeldoutRealConfig()
    results = {"checkpoint": args.checkpoint, "sha256": meta.get("sha256"), "step": meta.get("step"),
               "heldout_photos": list(HELDOUT_PHOTOS), "pair_size": list(cfg.size),
               "motion_levels": list(cfg.motion_levels), "seed": cfg.seed, "steps": list(steps),
               "sets": {"homography": score_set(model, heldout_homography_pairs(cfg), steps, "homography"),
                        "motorcycle": score_set(model, [motorcycle_pair()], steps, "motorcycle")}}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
