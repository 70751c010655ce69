#!/usr/bin/env python
"""The shipped stop rule at high resolution: where it stops on 1080p pairs with known motion, and what that costs
against the best iteration count and 60 iterations.

bench_stop_rule.py chooses the rule on the motorcycle pair (741x500) and 256x320 synthetic scenes. Issue 22 saw
an earlier rule stop after 7-8 iterations on 1080p pairs that kept improving for longer, so this script replays
the checkpoint's own rule (and a few stricter ones) on one recorded 60-step trajectory per 1080p pair: the same
trace-and-replay code as bench_stop_rule.py (deqflow.solver_spec's stop test on the recorded residuals). The
pairs are held-out validation photographs (training/data/heldout_real.py) enlarged to fill the frame, warped by
homographies moving up to --motion px with the validation set's photometric changes; OpenCV DIS is the yardstick.
No timing: nothing here depends on the machine being quiet.

    python scripts/stop_rule_highres.py     # -> docs/stop_rule_highres.json, docs/stop_rule_highres.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from bench_highres import known_motion_pair  # the script's own folder is on sys.path
from bench_stop_rule import Problem, apply_rule, trace_pair

from deqflow.checkpoint import SHIPPED_CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("coffee", "rocket", "astronaut")
STRICTER_TOLS = (3e-3, 1e-3, 5e-4)  # relative tolerances compared with the shipped one (same stall exit)
COUNTS = (8, 16, 30, 60)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / SHIPPED_CHECKPOINT))
    p.add_argument("--size", type=int, nargs=2, default=(1080, 1920), metavar=("H", "W"))
    p.add_argument("--motion", type=float, nargs="+", default=[20.0, 40.0], help="largest displacement, px")
    p.add_argument("--photos", nargs="+", default=list(PHOTOS), choices=PHOTOS)
    p.add_argument("--cap", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--output", default=str(ROOT / "docs" / "stop_rule_highres.json"))
    return p.parse_args(argv)


def highres_pair(name: str, size: tuple[int, int], motion: float, seed: int) -> dict:
    img1, img2, flow, valid = known_motion_pair(size, None, seed, photo=name, max_disp=motion)
    return {"set": "highres", "name": f"{name}-{motion:g}px", "image1": img1, "image2": img2, "flow": flow,
            "valid": valid}


def dis_epe(pair: dict) -> float:
    from deqflow.baselines import opencv_flow
    from deqflow.metrics import flow_metrics

    flow = opencv_flow("dis_medium", pair["image1"], pair["image2"])
    return float(flow_metrics(flow, pair["flow"], pair["valid"] > 0)["epe"])


def measure(args) -> dict:
    import torch
    from tqdm import tqdm

    from deqflow.solver_spec import StopRule
    from training.checkpoint import load_model, stop_rule_of

    torch.set_num_threads(args.threads)
    model, meta = load_model(args.checkpoint)
    shipped = stop_rule_of(meta, args.checkpoint)
    if shipped is None:
        raise SystemExit(f"{args.checkpoint} carries no stop rule (bench_stop_rule.py stamps one)")
    rules = {"shipped: " + shipped.describe(): shipped}
    for tol in STRICTER_TOLS:
        if tol < shipped.tol:
            rule = StopRule(**{**shipped.as_dict(), "tol": tol})
            rules[rule.describe()] = rule
    cases = [(name, motion) for name in args.photos for motion in args.motion]
    print(f"{len(cases)} pair(s) of {args.size[0]}x{args.size[1]}, one {args.cap}-step solve each")
    rows = []
    for i, (name, motion) in enumerate(tqdm(cases, desc="1080p pairs")):
        pair = highres_pair(name, tuple(args.size), motion, seed=9000 + i)
        trace = trace_pair(Problem(model, pair), args.cap)
        epe = trace["epe"]
        row = {"pair": pair["name"], "epe_per_step": epe, "best_step": int(np.argmin(epe)) + 1,
               "best_epe": float(min(epe)), "dis_medium": dis_epe(pair),
               "fixed": {str(k): epe[k - 1] for k in COUNTS if k <= args.cap}, "rules": {}}
        for label, rule in rules.items():
            steps, index, reason = apply_rule(trace, rule, return_final=True)
            row["rules"][label] = {"steps": steps, "epe": epe[index], "reason": reason}
        rows.append(row)
        tqdm.write(json.dumps({k: v for k, v in row.items() if k != "epe_per_step"}))
    return {"checkpoint": str(args.checkpoint), "sha256": meta.get("sha256"), "size": list(args.size),
            "cap": args.cap, "rules": list(rules), "pairs": rows}


def markdown(result: dict) -> str:
    h, w = result["size"]
    rules = result["rules"]
    lines = [f"# The stop rule at {h}x{w}", "",
             f"`python scripts/stop_rule_highres.py` on {result['checkpoint']}: one {result['cap']}-step plain "
             "solve per pair, the rules replayed on its residuals (the last iterate returned). EPE in px.", "",
             "| pair | " + " | ".join(f"{r} (steps, EPE)" for r in rules) + " | best count (EPE) | "
             + " | ".join(f"{k} it." for k in result["pairs"][0]["fixed"]) + " | DIS medium |",
             "|---|" + "---:|" * (len(rules) + 2 + len(result["pairs"][0]["fixed"]))]
    for row in result["pairs"]:
        cells = [f"{row['rules'][r]['steps']}, {row['rules'][r]['epe']:.3f}" for r in rules]
        cells += [f"{row['best_step']} ({row['best_epe']:.3f})"]
        cells += [f"{v:.3f}" for v in row["fixed"].values()] + [f"{row['dis_medium']:.3f}"]
        lines.append(f"| {row['pair']} | " + " | ".join(cells) + " |")
    mean = {r: np.mean([row["rules"][r]["epe"] for row in result["pairs"]]) for r in rules}
    steps = {r: np.mean([row["rules"][r]["steps"] for row in result["pairs"]]) for r in rules}
    lines += ["", "Means: " + "; ".join(f"{r}: {steps[r]:.1f} steps, {mean[r]:.3f} px" for r in rules)
              + f"; 60 iterations: {np.mean([row['fixed'].get('60', np.nan) for row in result['pairs']]):.3f} px; "
              f"DIS: {np.mean([row['dis_medium'] for row in result['pairs']]):.3f} px.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    result = measure(args)
    out = Path(args.output)
    out.write_text(json.dumps(result, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
