"""The real test set's report for one model (issue 24): photographs no training or validation used
(training/data/test_real.py), scored once per shipped model and never used for a choice. Reports the model with
its own stop rule and after fixed iteration counts, OpenCV's DIS (medium), Farneback and zero flow, and the
pair-by-pair wins against DIS. Writes JSON and a Markdown table next to it.

    python scripts/test_report.py --checkpoint checkpoints/deqflow-T-synthetic.pth --output docs/test_set_v3.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from deqflow.checkpoint import SHIPPED_CHECKPOINT
from deqflow.metrics import FlowMetricAccumulator
from training.checkpoint import load_model
from training.data.photos import TEST_PHOTOS
from training.data.test_real import RealTestConfig, real_test_pairs
from training.heldout_eval import BASELINES, score_set

STEPS = (16, 36, 60)


def stop_rule_scores(model, pairs) -> dict:
    """EPE with the model's own stop rule, through the runtime's torch backend (what `deqflow infer` runs)."""
    from runtime import FlowEstimator, SolveOverrides
    from runtime.backends.torch_backend import TorchBackend

    estimator = FlowEstimator(TorchBackend(model, settings=SolveOverrides(return_final=model.cfg.deq.return_final)))
    acc, per_pair, iters = FlowMetricAccumulator(), {}, []
    for p in tqdm(pairs, desc="stop rule"):
        res = estimator(p.image1, p.image2)
        per_pair[p.name] = round(float(acc.add(res.flow, p.flow, p.valid)["epe"]), 4)
        iters.append(res.iterations)
    return {"epe_per_pixel": float(acc.summary()["epe_per_pixel"]), "per_pair": per_pair,
            "mean_iterations": float(np.mean(iters))}


def markdown(r: dict) -> str:
    lines = ["| test set (EPE px, mean over pairs) | deqflow (stop rule) | " + " | ".join(f"k={k}" for k in r["steps"])
             + " | " + " | ".join(BASELINES) + " | pairs won vs DIS |", "|---|" + "---:|" * (len(r["steps"]) + 5)]
    for name, s in r["subsets"].items():
        cells = [f"{s['stop_rule']:.3f}"] + [f"{v:.3f}" for v in s["fixed"]] + [f"{s[b]:.3f}" for b in BASELINES]
        lines.append(f"| {name} ({s['n_pairs']} pairs) | " + " | ".join(cells) + f" | {s['wins_vs_dis']} |")
    return "\n".join(lines) + "\n"


def subset_summary(pairs, scored: dict, rule: dict) -> dict:
    """Means over the subset's pairs (all pairs have the same size, so close to per-pixel pooling)."""
    names = [p.name for p in pairs]

    def mean(key: str) -> float:
        return float(np.mean([scored["per_pair"][n][key] for n in names]))

    wins = sum(rule["per_pair"][n] < scored["per_pair"][n]["dis_medium"] for n in names)
    return {"n_pairs": len(names), "stop_rule": float(np.mean([rule["per_pair"][n] for n in names])),
            "fixed": [mean(f"deqflow@{k}") for k in scored["steps"]], **{b: mean(b) for b in BASELINES},
            "wins_vs_dis": f"{wins}/{len(names)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(SHIPPED_CHECKPOINT))
    ap.add_argument("--output", required=True, help="JSON; the Markdown table goes next to it")
    args = ap.parse_args()
    model, meta = load_model(args.checkpoint)
    cfg = RealTestConfig()
    pairs = real_test_pairs(cfg)
    rule = stop_rule_scores(model, pairs)
    model.configure_deq(f_solver="fixed_point")
    scored = score_set(model, pairs, STEPS, "fixed counts")
    subsets = {"all": pairs, "homography": [p for p in pairs if "-homography-" in p.name],
               "deformed": [p for p in pairs if "-deformed-" in p.name]}
    result = {"checkpoint": args.checkpoint, "sha256": meta.get("sha256"), "test_photos": list(TEST_PHOTOS),
              "pair_size": list(cfg.size), "motion_levels": list(cfg.motion_levels), "seed": cfg.seed,
              "steps": list(STEPS), "note": "per-pair means (all pairs have the same size); scored once per model",
              "stop_rule": rule, "fixed_counts": scored,
              "subsets": {k: subset_summary(v, scored, rule) for k, v in subsets.items()}}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
