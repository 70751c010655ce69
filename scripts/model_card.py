"""Numbers for the shipped checkpoint's model card: held-out synthetic scenes and the real Middlebury pair,
against zero flow and OpenCV's Farneback and DIS (medium preset), all with the same metric code.

    python scripts/model_card.py --checkpoint checkpoints/deqflow-T-synthetic.pth --output docs/model_card.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from deqflow.metrics import FlowMetricAccumulator
from training.baselines import opencv_flow
from training.checkpoint import load_model
from training.commands.demo import real_stereo_pair
from training.data import SyntheticFlowDataset
from training.evaluate import HELDOUT_SEED, SYNTHETIC_EVAL_SIZE
from training.inference import estimate_flow

BASELINES = ("zero", "farneback", "dis_medium")


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def evaluate_pairs(model, pairs, desc: str) -> dict[str, dict[str, float]]:
    accs = {name: FlowMetricAccumulator() for name in ("deqflow", *BASELINES)}
    iters, seconds = [], []
    for img1, img2, flow, valid in tqdm(pairs, desc=desc):
        t0 = time.perf_counter()
        res = estimate_flow(model, img1, img2)
        seconds.append(time.perf_counter() - t0)
        iters.append(res.stats.nstep)
        accs["deqflow"].add(res.flow, flow, valid)
        for name in BASELINES:
            accs[name].add(opencv_flow(name, img1, img2), flow, valid)
    out = {name: {k: float(v) for k, v in acc.summary().items()} for name, acc in accs.items()}
    out["deqflow"]["mean_iterations"] = float(np.mean(iters))
    out["deqflow"]["mean_seconds"] = float(np.mean(seconds))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--output", default="docs/model_card.json")
    args = ap.parse_args()
    model, meta = load_model(args.checkpoint)
    model.configure_deq(f_solver="fixed_point")
    ds = SyntheticFlowDataset(size=SYNTHETIC_EVAL_SIZE, length=args.samples, seed=HELDOUT_SEED)
    synthetic = []
    for i in range(args.samples):
        s = ds.sample(i)
        synthetic.append((s.image1, s.image2, s.flow, s.valid))
    left, right, flow, valid = real_stereo_pair()
    results = {
        "checkpoint": args.checkpoint, "sha256": meta["sha256"], "step": meta.get("step"),
        "solver": "fixed_point", "iterations_cap": model.cfg.deq.eval_max_iter,
        "synthetic_heldout": evaluate_pairs(model, synthetic, "synthetic held-out"),
        "middlebury_motorcycle": evaluate_pairs(model, [(left, right, flow, valid)], "motorcycle"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    for name in ("synthetic_heldout", "middlebury_motorcycle"):
        print(f"{name}: " + ", ".join(f"{k} EPE {v['epe_per_pixel']:.3f}" for k, v in results[name].items()))


if __name__ == "__main__":
    main()
