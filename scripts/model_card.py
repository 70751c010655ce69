"""Numbers for the shipped checkpoint's model card: held-out synthetic scenes and the real Middlebury pair,
against zero flow and OpenCV's Farneback and DIS (medium preset), all with the same metric code; plus the
accuracy and relative residual after k plain fixed-point iterations (does the solve converge, and is the
fixed point at least as good as the early iterates?), as JSON, a Markdown table and a picture.

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

from deqflow.baselines import opencv_flow
from deqflow.metrics import FlowMetricAccumulator
from deqflow.middlebury import motorcycle as real_stereo_pair
from training.checkpoint import load_model
from training.data import SyntheticFlowDataset
from training.evaluate import HELDOUT_SEED, SYNTHETIC_EVAL_SIZE
from training.inference import flow_trajectory

BASELINES = ("zero", "farneback", "dis_medium")
SWEEP_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 36, 48, 60, 72)


def _to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def _per_pair(acc: FlowMetricAccumulator) -> list[float]:
    """Each pair's own EPE, kept because one failed scene can move a mean over scenes a lot."""
    return [float(r["epe"]) for r in acc.per_image]


def model_estimator(model):
    """The runtime's numpy-in/flow-out path (torch backend) on `model` with the model's own solver rule,
    returning the iterate its config selects (last or lowest-residual), as the model's own forward does."""
    from runtime import FlowEstimator, SolveOverrides
    from runtime.backends.torch_backend import TorchBackend

    return FlowEstimator(TorchBackend(model, settings=SolveOverrides(return_final=model.cfg.deq.return_final)))


def evaluate_pairs(model, pairs, desc: str) -> dict[str, dict[str, float]]:
    accs = {name: FlowMetricAccumulator() for name in ("deqflow", *BASELINES)}
    iters, seconds = [], []
    estimator = model_estimator(model)
    for img1, img2, flow, valid in tqdm(pairs, desc=desc):
        t0 = time.perf_counter()
        res = estimator(img1, img2)
        seconds.append(time.perf_counter() - t0)
        iters.append(res.iterations)
        accs["deqflow"].add(res.flow, flow, valid)
        for name in BASELINES:
            accs[name].add(opencv_flow(name, img1, img2), flow, valid)
    out = {name: {k: float(v) for k, v in acc.summary().items()} for name, acc in accs.items()}
    for name, acc in accs.items():
        per_pair = _per_pair(acc)
        out[name]["epe_per_pair"] = per_pair
        out[name]["epe_median_over_pairs"] = float(np.median(per_pair))
    out["deqflow"]["mean_iterations"] = float(np.mean(iters))
    out["deqflow"]["mean_seconds"] = float(np.mean(seconds))
    return out


def iteration_sweep(model, pairs, desc: str) -> dict[str, list[float]]:
    """Per-pixel EPE (over all pairs, and its median over pairs) after k cold-start fixed-point iterations
    (k in SWEEP_STEPS), and the mean relative residual at each k."""
    accs = {k: FlowMetricAccumulator() for k in SWEEP_STEPS}
    residuals = []
    for img1, img2, flow, valid in tqdm(pairs, desc=desc):
        flows, res = flow_trajectory(model, img1, img2, SWEEP_STEPS)
        residuals.append([res[k - 1] for k in SWEEP_STEPS])
        for k in SWEEP_STEPS:
            accs[k].add(flows[k], flow, valid)
    return {"steps": list(SWEEP_STEPS), "epe": [float(accs[k].summary()["epe_per_pixel"]) for k in SWEEP_STEPS],
            "epe_median_over_pairs": [float(np.median(_per_pair(accs[k]))) for k in SWEEP_STEPS],
            "rel_residual": [float(v) for v in np.mean(residuals, axis=0)]}


def sweep_plot(sweeps: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, sw in sweeps.items():
        ax1.plot(sw["steps"], sw["epe"], marker="o", label=name)
        ax2.semilogy(sw["steps"], sw["rel_residual"], marker="o", label=name)
    ax1.set(xscale="log", xlabel="fixed-point iterations (cold start)", ylabel="EPE (px)", title="accuracy")
    ax2.set(xscale="log", xlabel="fixed-point iterations (cold start)", ylabel="||f(z)-z|| / ||f(z)||",
            title="relative residual")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict) -> str:
    names = ("deqflow", "dis_medium", "farneback", "zero")
    lines = ["| EPE per pixel (px) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label in (("synthetic_heldout", "held-out synthetic"), ("middlebury_motorcycle", "Middlebury motorcycle")):
        lines.append(f"| {label} | " + " | ".join(f"{results[key][n]['epe_per_pixel']:.3f}" for n in names) + " |")
    synthetic = results["synthetic_heldout"]
    lines.append("| held-out synthetic, median over scenes | "
                 + " | ".join(f"{synthetic[n]['epe_median_over_pairs']:.3f}" for n in names) + " |")
    lines += ["", "| iterations k | " + " | ".join(str(k) for k in SWEEP_STEPS) + " |",
              "|---|" + "---:|" * len(SWEEP_STEPS)]
    for key, sw in results["iteration_sweep"].items():
        lines.append(f"| EPE, {key} | " + " | ".join(f"{v:.3f}" for v in sw["epe"]) + " |")
        if key == "synthetic":
            lines.append(f"| median EPE over scenes, {key} | "
                         + " | ".join(f"{v:.3f}" for v in sw["epe_median_over_pairs"]) + " |")
        lines.append(f"| rel. residual, {key} | " + " | ".join(f"{v:.1e}" for v in sw["rel_residual"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--output", default="docs/model_card.json",
                    help="JSON; the Markdown table and the sweep picture go next to it (.md, .png)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the EPE/residual-vs-iterations sweep")
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
    if not args.no_sweep:
        results["iteration_sweep"] = {
            "synthetic": iteration_sweep(model, synthetic, "sweep synthetic"),
            "motorcycle": iteration_sweep(model, [(left, right, flow, valid)], "sweep motorcycle")}
        sweep_plot(results["iteration_sweep"], Path(args.output).with_suffix(".png"))
        Path(args.output).with_suffix(".md").write_text(markdown(results))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    for name in ("synthetic_heldout", "middlebury_motorcycle"):
        print(f"{name}: " + ", ".join(f"{k} EPE {v['epe_per_pixel']:.3f}" for k, v in results[name].items()))


if __name__ == "__main__":
    main()
